//! Real kernel TCP transfers between namespaces, with digests at both ends: a
//! [`TcpSource`] writes a seeded pseudo-random stream, a [`TcpSink`] reads it and hashes
//! what arrived. Both run on threads inside their namespaces and stop on their own at a
//! deadline, so a stalled connection (the point of some tests) ends the test anyway.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::netns::{LabError, Ns, NsThread};
use crate::sys;

/// How often blocked reads and writes look at the deadline and the stop flag.
const TICK: Duration = Duration::from_millis(20);
const CHUNK: usize = 64 << 10;

/// The bytes a source with this seed sends: the ChaCha8 keystream. The generator hands
/// out 32-bit words, so the stream is the same however it is cut only if every fill but
/// the last is a multiple of 4 bytes long (the source and [`pattern_sha256`] use 64 KiB).
#[derive(Debug)]
pub struct Pattern {
    rng: ChaCha8Rng,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.rng.fill_bytes(buf);
    }
}

/// SHA-256 (hex) of the first `len` bytes of the seed's pattern: what a sink must report
/// after a complete transfer.
pub fn pattern_sha256(seed: u64, len: u64) -> String {
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hex::encode(hasher.finalize())
}

/// What a sink got.
#[derive(Clone, Debug)]
pub struct SinkReport {
    pub bytes: u64,
    /// SHA-256 (hex) of everything received.
    pub sha256: String,
    /// The sender closed the connection (EOF) before the deadline.
    pub completed: bool,
    pub peer: Option<SocketAddr>,
    pub first_byte: Option<Instant>,
    pub last_byte: Option<Instant>,
}

impl SinkReport {
    /// Application goodput between the first and the last byte, in bits per second.
    pub fn goodput_bps(&self) -> Option<f64> {
        let span = self.last_byte?.duration_since(self.first_byte?).as_secs_f64();
        (span > 0.0).then(|| self.bytes as f64 * 8.0 / span)
    }
}

/// Accepts one TCP connection and reads it to the end.
#[derive(Debug)]
pub struct TcpSink {
    local: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: NsThread<Result<SinkReport, LabError>>,
}

impl TcpSink {
    /// Listens on `listen` inside `ns` (returns once listening) and gives up `deadline`
    /// from now.
    pub fn start(ns: &Ns, listen: SocketAddr, deadline: Duration) -> Result<TcpSink, LabError> {
        let until = Instant::now() + deadline;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            ns.spawn_thread("tcp sink", move || {
                let listener = match TcpListener::bind(listen).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok((l.local_addr()?, l))
                }) {
                    Ok((addr, l)) => {
                        let _ = tx.send(Ok(addr));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Err(LabError::Invalid("not listening".into()));
                    }
                };
                sink(&listener, until, &received, &stop)
                    .map_err(|e| LabError::io(format!("tcp sink on {listen}"), e))
            })?
        };
        match rx.recv() {
            Ok(Ok(local)) => Ok(TcpSink {
                local,
                received,
                stop,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(LabError::io(format!("listening on {listen}"), e))
            }
            Err(_) => Err(thread
                .join()
                .err()
                .unwrap_or(LabError::Invalid("sink thread ended".into()))),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits for the transfer to end (EOF) or the deadline.
    pub fn join(self) -> Result<SinkReport, LabError> {
        self.thread.join()?
    }

    /// Stops now and reports what arrived.
    pub fn stop(self) -> Result<SinkReport, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

fn sink(
    listener: &TcpListener,
    until: Instant,
    received: &AtomicU64,
    stop: &AtomicBool,
) -> std::io::Result<SinkReport> {
    let mut report = SinkReport {
        bytes: 0,
        sha256: hex::encode(Sha256::digest([])),
        completed: false,
        peer: None,
        first_byte: None,
        last_byte: None,
    };
    let over = || stop.load(Ordering::Relaxed) || Instant::now() >= until;
    let (mut stream, peer) = loop {
        match listener.accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if over() {
                    return Ok(report);
                }
                let mut fds = [sys::pollfd(listener.as_raw_fd())];
                sys::poll(&mut fds, TICK)?;
            }
            Err(e) => return Err(e),
        }
    };
    report.peer = Some(peer);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TICK))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if over() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                report.completed = true;
                break;
            }
            Ok(n) => {
                let now = Instant::now();
                report.first_byte.get_or_insert(now);
                report.last_byte = Some(now);
                report.bytes += n as u64;
                received.fetch_add(n as u64, Ordering::Relaxed);
                hasher.update(&buf[..n]);
            }
            Err(e) if is_timeout(&e) => {}
            // A reset ends the transfer incomplete; the report says so.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    report.sha256 = hex::encode(hasher.finalize());
    Ok(report)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
    )
}

/// What a source sent.
#[derive(Clone, Debug)]
pub struct SourceReport {
    /// Bytes the kernel accepted from us.
    pub bytes: u64,
    /// SHA-256 (hex) of those bytes.
    pub sha256: String,
    /// Everything was handed to the kernel and the write side shut down.
    pub completed: bool,
    pub local: Option<SocketAddr>,
}

/// Connects and writes `bytes` of a seeded pattern, then shuts down its write side.
#[derive(Debug)]
pub struct TcpSource {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: NsThread<Result<SourceReport, LabError>>,
}

impl TcpSource {
    /// Starts sending from inside `ns` to `to`; gives up `deadline` from now.
    pub fn start(
        ns: &Ns,
        to: SocketAddr,
        bytes: u64,
        seed: u64,
        deadline: Duration,
    ) -> Result<TcpSource, LabError> {
        let until = Instant::now() + deadline;
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, stop) = (sent.clone(), stop.clone());
            ns.spawn_thread("tcp source", move || {
                source(to, bytes, seed, until, &sent, &stop)
                    .map_err(|e| LabError::io(format!("tcp source to {to}"), e))
            })?
        };
        Ok(TcpSource { sent, stop, thread })
    }

    /// Bytes handed to the kernel so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn join(self) -> Result<SourceReport, LabError> {
        self.thread.join()?
    }

    pub fn stop(self) -> Result<SourceReport, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

fn source(
    to: SocketAddr,
    bytes: u64,
    seed: u64,
    until: Instant,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> std::io::Result<SourceReport> {
    let over = || stop.load(Ordering::Relaxed) || Instant::now() >= until;
    let connect_for = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&to, connect_for)?;
    stream.set_write_timeout(Some(TICK))?;
    let mut report = SourceReport {
        bytes: 0,
        sha256: String::new(),
        completed: false,
        local: stream.local_addr().ok(),
    };
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    'outer: while report.bytes < bytes {
        let n = (bytes - report.bytes).min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        let mut off = 0;
        while off < n {
            if over() {
                break 'outer;
            }
            match stream.write(&buf[off..n]) {
                Ok(w) => {
                    hasher.update(&buf[off..off + w]);
                    off += w;
                    report.bytes += w as u64;
                    sent.fetch_add(w as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if report.bytes == bytes {
        stream.shutdown(Shutdown::Write)?;
        report.completed = true;
    }
    report.sha256 = hex::encode(hasher.finalize());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_digest_is_that_of_the_stream() {
        let mut p = Pattern::new(9);
        let mut buf = vec![0u8; 100_000];
        p.fill(&mut buf);
        assert_eq!(pattern_sha256(9, 100_000), hex::encode(Sha256::digest(&buf)));
        assert_ne!(pattern_sha256(9, 100_000), pattern_sha256(10, 100_000));
    }
}
