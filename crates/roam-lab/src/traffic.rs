//! Real kernel traffic between namespaces, with digests at both ends:
//! - a [`TcpSource`] writes a seeded pseudo-random stream, a [`TcpSink`] reads it and
//!   hashes what arrived;
//! - a [`TcpPair`] holds both ends of one connection, so a scenario can send either way,
//!   go idle and send again on the same sockets;
//! - a [`UdpPinger`] sends numbered datagrams at a steady rate to a [`UdpEcho`], which
//!   sends each back; both record what arrived, in order, with a digest;
//! - an [`RrClient`] asks an [`RrServer`] one request at a time on one connection and
//!   checks every answer (a closed-loop request/response workload).
//!
//! The TCP ones can open their sockets with another protocol number
//! ([`TcpSink::start_with`], [`TcpSource::start_with`], the `protocol` of the
//! request/response pair): `IPPROTO_MPTCP` makes them Multipath TCP sockets (RFC 8684)
//! with the same stream semantics.
//!
//! Everything runs on threads inside the namespaces and stops on its own at a deadline,
//! so a stalled connection (the point of some tests) ends the test anyway.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

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
        TcpSink::start_with(ns, listen, deadline, 0)
    }

    /// [`TcpSink::start`] with a listening socket of this protocol number (`socket(2)`'s
    /// third argument: 0 for TCP, `IPPROTO_MPTCP` for Multipath TCP).
    pub fn start_with(
        ns: &Ns,
        listen: SocketAddr,
        deadline: Duration,
        protocol: i32,
    ) -> Result<TcpSink, LabError> {
        let until = Instant::now() + deadline;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            ns.spawn_thread("tcp sink", move || {
                let listener = match listen_stream(listen, protocol).and_then(|l| {
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

/// A listening stream socket of `protocol` (0: TCP) bound to `listen`, with
/// `SO_REUSEADDR` as std's `TcpListener::bind` sets it. Multipath TCP sockets are
/// stream sockets with TCP's semantics, so std's types drive them as well.
fn listen_stream(listen: SocketAddr, protocol: i32) -> std::io::Result<TcpListener> {
    let socket = stream_socket(listen, protocol)?;
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A stream socket of `protocol` (0: TCP) connected to `to` within `timeout`.
fn connect_stream(to: SocketAddr, protocol: i32, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = stream_socket(to, protocol)?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

fn stream_socket(addr: SocketAddr, protocol: i32) -> std::io::Result<socket2::Socket> {
    let protocol = (protocol != 0).then(|| socket2::Protocol::from(protocol));
    socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        protocol,
    )
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

/// How a stream stopped by [`end_stream`] ended.
#[derive(Clone, Debug)]
pub struct StreamEnd {
    /// What the source reported; `Err`: its connection failed under it (a reset), so
    /// what it sent is not known byte for byte.
    pub sent: Result<SourceReport, String>,
    /// Bytes the source had handed to its kernel when it was stopped.
    pub handed: u64,
    pub got: SinkReport,
}

impl StreamEnd {
    /// Every byte sent arrived, the same bytes, and the sink saw the end.
    pub fn intact(&self) -> bool {
        self.sent.as_ref().is_ok_and(|s| {
            self.got.completed && s.bytes > 0 && self.got.bytes == s.bytes && self.got.sha256 == s.sha256
        })
    }

    /// Bytes handed to the kernel that never arrived.
    pub fn lost(&self) -> u64 {
        let sent = self.sent.as_ref().map_or(self.handed, |s| s.bytes);
        sent.saturating_sub(self.got.bytes)
    }
}

/// Stops an open-ended stream: the source stops writing and shuts down, and the sink is
/// given up to `drain` to receive the rest (a live stream delivers it within a few
/// round trips, then the FIN; a dead one never does, and is not waited for past this).
pub fn end_stream(sink: TcpSink, source: TcpSource, drain: Duration) -> Result<StreamEnd, LabError> {
    let handed = source.sent();
    let sent = match source.stop() {
        Ok(s) => s,
        Err(e) => {
            let got = sink.stop()?;
            return Ok(StreamEnd {
                sent: Err(e.to_string()),
                handed,
                got,
            });
        }
    };
    let until = Instant::now() + drain;
    while sink.received() < sent.bytes && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = if sink.received() >= sent.bytes {
        sink.join()?
    } else {
        sink.stop()?
    };
    Ok(StreamEnd {
        sent: Ok(sent),
        handed,
        got,
    })
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
        TcpSource::start_with(ns, to, bytes, seed, deadline, 0)
    }

    /// [`TcpSource::start`] with a socket of this protocol number (0 for TCP,
    /// `IPPROTO_MPTCP` for Multipath TCP).
    pub fn start_with(
        ns: &Ns,
        to: SocketAddr,
        bytes: u64,
        seed: u64,
        deadline: Duration,
        protocol: i32,
    ) -> Result<TcpSource, LabError> {
        let until = Instant::now() + deadline;
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, stop) = (sent.clone(), stop.clone());
            ns.spawn_thread("tcp source", move || {
                source(to, protocol, bytes, seed, until, &sent, &stop)
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
    protocol: i32,
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
    let stream = connect_stream(to, protocol, connect_for)?;
    stream.set_write_timeout(Some(TICK))?;
    let mut report = SourceReport {
        bytes: 0,
        sha256: String::new(),
        completed: false,
        local: stream.local_addr().ok(),
    };
    (report.bytes, report.sha256) = write_pattern(&stream, bytes, seed, &over, sent)?;
    if report.bytes == bytes {
        stream.shutdown(Shutdown::Write)?;
        report.completed = true;
    }
    Ok(report)
}

/// Writes the first `bytes` of the seed's pattern to `stream` (whose write timeout is
/// a [`TICK`]) until done or `over()`; returns the bytes the kernel took and their
/// SHA-256 (hex).
fn write_pattern(
    mut stream: &TcpStream,
    bytes: u64,
    seed: u64,
    over: &dyn Fn() -> bool,
    sent: &AtomicU64,
) -> std::io::Result<(u64, String)> {
    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    'outer: while written < bytes {
        let n = (bytes - written).min(CHUNK as u64) as usize;
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
                    written += w as u64;
                    sent.fetch_add(w as u64, Ordering::Relaxed);
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((written, hex::encode(hasher.finalize())))
}

// ---------------------------------------------------------------------------------------
// A TCP connection with both ends in hand

/// Which end of a [`TcpPair`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The end that connected.
    Client,
    /// The end that accepted.
    Server,
}

/// What one transfer on a [`TcpPair`] moved.
#[derive(Clone, Debug)]
pub struct TransferReport {
    /// Bytes the sender's kernel took, and their SHA-256 (hex).
    pub bytes_sent: u64,
    pub sent_sha256: String,
    /// Bytes the receiver read, and their SHA-256 (hex).
    pub bytes_received: u64,
    pub received_sha256: String,
    /// Everything asked for was sent and read before the deadline.
    pub completed: bool,
}

impl TransferReport {
    /// Completed, and both ends hashed the same bytes.
    pub fn intact(&self) -> bool {
        self.completed && self.sent_sha256 == self.received_sha256
    }
}

/// One TCP connection between two namespaces with both ends held here, so that a
/// scenario can send either way at any time, leave it idle, and send again on the same
/// sockets. The sockets belong to their namespaces from creation: using them from any
/// thread afterwards is the same as using them inside.
#[derive(Debug)]
pub struct TcpPair {
    client: TcpStream,
    server: TcpStream,
    /// The client's end as its own socket reports it (`getsockname`).
    pub client_local: SocketAddr,
    /// The server's end as its own socket reports it.
    pub server_local: SocketAddr,
    /// The client as the server's application sees it (what `accept` returned).
    pub server_peer: SocketAddr,
}

impl TcpPair {
    /// Listens on `listen` in `server_ns`, connects from `client_ns` and accepts, all
    /// within `deadline`.
    pub fn open(
        client_ns: &Ns,
        server_ns: &Ns,
        listen: SocketAddr,
        deadline: Duration,
    ) -> Result<TcpPair, LabError> {
        let until = Instant::now() + deadline;
        let io = |what: &str| {
            let what = format!("{what} ({listen})");
            move |e| LabError::io(what, e)
        };
        let listener = server_ns
            .run(|| TcpListener::bind(listen))?
            .map_err(io("listening"))?;
        listener.set_nonblocking(true).map_err(io("listening"))?;
        let client = client_ns
            .run(|| TcpStream::connect_timeout(&listen, deadline))?
            .map_err(io("connecting"))?;
        // The client's handshake is complete, so the connection is in the accept queue.
        let (server, server_peer) = loop {
            match listener.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= until {
                        return Err(LabError::Invalid(format!(
                            "no connection to accept on {listen} within {deadline:?}"
                        )));
                    }
                    let mut fds = [sys::pollfd(listener.as_raw_fd())];
                    sys::poll(&mut fds, TICK).map_err(io("accepting"))?;
                }
                Err(e) => return Err(io("accepting")(e)),
            }
        };
        server.set_nonblocking(false).map_err(io("accepting"))?;
        for s in [&client, &server] {
            s.set_read_timeout(Some(TICK)).map_err(io("socket options"))?;
            s.set_write_timeout(Some(TICK)).map_err(io("socket options"))?;
        }
        Ok(TcpPair {
            client_local: client.local_addr().map_err(io("getsockname"))?,
            server_local: server.local_addr().map_err(io("getsockname"))?,
            client,
            server,
            server_peer,
        })
    }

    fn ends(&self, from: End) -> (&TcpStream, &TcpStream) {
        match from {
            End::Client => (&self.client, &self.server),
            End::Server => (&self.server, &self.client),
        }
    }

    /// Sends the first `bytes` of the seed's pattern from `from` to the other end, which
    /// reads exactly that many, both at once; gives up at `deadline` from now.
    pub fn send(
        &self,
        from: End,
        bytes: u64,
        seed: u64,
        deadline: Duration,
    ) -> Result<TransferReport, LabError> {
        let until = Instant::now() + deadline;
        let (tx, rx) = self.ends(from);
        let over = || Instant::now() >= until;
        let (sent, received) = std::thread::scope(|s| {
            let writer = s.spawn(|| write_pattern(tx, bytes, seed, &over, &AtomicU64::new(0)));
            let received = read_exactly(rx, bytes, &over);
            (writer.join(), received)
        });
        let context = |e| LabError::io(format!("a transfer over {}", self.client_local), e);
        let (bytes_sent, sent_sha256) = sent
            .map_err(|_| LabError::Invalid("the writer panicked".into()))?
            .map_err(context)?;
        let (bytes_received, received_sha256) = received.map_err(context)?;
        Ok(TransferReport {
            completed: bytes_sent == bytes && bytes_received == bytes,
            bytes_sent,
            sent_sha256,
            bytes_received,
            received_sha256,
        })
    }

    /// Ends the connection the orderly way: the client shuts its write side, the server
    /// reads the end of the stream and shuts its own, the client reads that end. True if
    /// both ends saw the other's FIN, with no byte before it, within `deadline`.
    pub fn close(self, deadline: Duration) -> Result<bool, LabError> {
        let until = Instant::now() + deadline;
        let over = || Instant::now() >= until;
        let io = |e| LabError::io(format!("closing {}", self.client_local), e);
        self.client.shutdown(Shutdown::Write).map_err(io)?;
        if !read_eof(&self.server, &over).map_err(io)? {
            return Ok(false);
        }
        self.server.shutdown(Shutdown::Write).map_err(io)?;
        read_eof(&self.client, &over).map_err(io)
    }
}

/// Reads exactly `bytes` (never more: what follows belongs to the next transfer) until
/// done, the end of the stream, a reset or `over()`; returns what was read and its
/// SHA-256 (hex).
fn read_exactly(
    mut stream: &TcpStream,
    bytes: u64,
    over: &dyn Fn() -> bool,
) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    while read < bytes && !over() {
        let want = (bytes - read).min(CHUNK as u64) as usize;
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                read += n as u64;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    Ok((read, hex::encode(hasher.finalize())))
}

/// Waits for the end of the stream: true if it came (and nothing before it).
fn read_eof(mut stream: &TcpStream, over: &dyn Fn() -> bool) -> std::io::Result<bool> {
    let mut buf = [0u8; 1];
    while !over() {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => return Ok(false),
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------
// Request/response: one request at a time, every answer checked

/// Request number `seq` of the client with this seed: its number (8 bytes, big-endian),
/// then pattern bytes that depend on the seed and the number, `len` bytes in all (at
/// least 8).
pub fn rr_request(seed: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut r = vec![0u8; len.max(8)];
    r[..8].copy_from_slice(&seq.to_be_bytes());
    Pattern::new(seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)).fill(&mut r[8..]);
    r
}

/// The answer an [`RrServer`] gives to `request`: `len` bytes of the pattern seeded by
/// the first 8 bytes of the request's SHA-256. It depends on every byte of the request,
/// so a client that checks it knows its request arrived whole and the answer came back
/// whole, and the server needs no shared seed.
pub fn rr_response(request: &[u8], len: usize) -> Vec<u8> {
    let digest = Sha256::digest(request);
    let seed = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    let mut r = vec![0u8; len];
    Pattern::new(seed).fill(&mut r);
    r
}

/// Errors kept (with their count in full) by the request/response ends: enough to tell
/// what happened, bounded.
const RR_ERRORS_KEPT: usize = 16;
/// Completion times kept by an [`RrClient`] (more than any bench run completes).
const RR_COMPLETIONS_KEPT: usize = 1_000_000;

/// What an [`RrServer`] saw, over all its connections.
#[derive(Clone, Debug, Default)]
pub struct RrServerReport {
    pub connections: u64,
    /// Requests answered in full.
    pub transactions: u64,
    /// Requests whose number was not the one after the previous request's on their
    /// connection (a lost or repeated request; the first must be number 0).
    pub out_of_sequence: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Connections that ended with an error (a reset, an end of stream inside a
    /// request), and the first few of those errors.
    pub failed_connections: u64,
    pub errors: Vec<String>,
}

impl RrServerReport {
    fn add(&mut self, other: RrServerReport) {
        self.connections += other.connections;
        self.transactions += other.transactions;
        self.out_of_sequence += other.out_of_sequence;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.failed_connections += other.failed_connections;
        for e in other.errors {
            if self.errors.len() < RR_ERRORS_KEPT {
                self.errors.push(e);
            }
        }
    }
}

/// Answers requests of `request_len` bytes with [`rr_response`]s of `response_len`
/// bytes, on every connection it accepts (each on its own thread), until stopped or its
/// deadline.
#[derive(Debug)]
pub struct RrServer(RrWorker<RrServerReport>);

impl RrServer {
    /// Listens on `listen` inside `ns` with a socket of `protocol` (0: TCP,
    /// `IPPROTO_MPTCP`: Multipath TCP); returns once listening.
    pub fn start(
        ns: &Ns,
        listen: SocketAddr,
        request_len: usize,
        response_len: usize,
        deadline: Duration,
        protocol: i32,
    ) -> Result<RrServer, LabError> {
        if request_len < 8 {
            return Err(LabError::Invalid(format!(
                "requests carry an 8-byte number: {request_len} bytes is too short"
            )));
        }
        let until = Instant::now() + deadline;
        let listener = ns
            .run(|| {
                let l = listen_stream(listen, protocol)?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })?
            .map_err(|e| LabError::io(format!("listening on {listen}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| LabError::io("getsockname", e))?;
        let shape = (request_len, response_len);
        RrWorker::spawn(ns, "rr server", local, move |transactions, stop| {
            rr_serve(&listener, shape, until, &transactions, &stop)
                .map_err(|e| LabError::io(format!("rr server on {local}"), e))
        })
        .map(RrServer)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.0.local
    }

    /// Requests answered so far, over all connections.
    pub fn transactions(&self) -> u64 {
        self.0.transactions()
    }

    /// Stops accepting and answering, and reports (within a few ticks).
    pub fn stop(self) -> Result<RrServerReport, LabError> {
        self.0.stop()
    }
}

fn rr_serve(
    listener: &TcpListener,
    (request_len, response_len): (usize, usize),
    until: Instant,
    transactions: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<RrServerReport> {
    let over = || stop.load(Ordering::Relaxed) || Instant::now() >= until;
    let mut handlers = Vec::new();
    while !over() {
        match listener.accept() {
            Ok((stream, _)) => {
                let (transactions, stop) = (transactions.clone(), stop.clone());
                // The accepted socket is in the namespace already: the handler thread
                // needs not enter it.
                handlers.push(std::thread::spawn(move || {
                    let over = || stop.load(Ordering::Relaxed) || Instant::now() >= until;
                    rr_answer(stream, request_len, response_len, &over, &transactions)
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [sys::pollfd(listener.as_raw_fd())];
                sys::poll(&mut fds, TICK)?;
            }
            Err(e) if is_timeout(&e) => {}
            // A connection that died in the accept queue; the next may be fine.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(e),
        }
    }
    // Handlers look at the same deadline and stop flag every tick.
    let mut report = RrServerReport::default();
    for handler in handlers {
        match handler.join() {
            Ok(r) => report.add(r),
            Err(payload) => report.add(RrServerReport {
                failed_connections: 1,
                errors: vec![format!(
                    "handler panicked: {}",
                    crate::netns::panic_message(&*payload)
                )],
                ..RrServerReport::default()
            }),
        }
    }
    Ok(report)
}

/// Serves one connection until its end, an error or `over()`.
fn rr_answer(
    stream: TcpStream,
    request_len: usize,
    response_len: usize,
    over: &dyn Fn() -> bool,
    transactions: &AtomicU64,
) -> RrServerReport {
    let mut report = RrServerReport {
        connections: 1,
        ..RrServerReport::default()
    };
    let fail = |report: &mut RrServerReport, e: String| {
        report.failed_connections = 1;
        report.errors.push(e);
    };
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(TICK)))
        .and_then(|()| stream.set_write_timeout(Some(TICK)))
    {
        fail(&mut report, format!("socket options: {e}"));
        return report;
    }
    let mut request = vec![0u8; request_len];
    let mut expected_seq = 0u64;
    loop {
        match read_full(&stream, &mut request, over) {
            Ok(Filled::Full) => {}
            // The client closed between requests: the normal end.
            Ok(Filled::Eof(0)) | Ok(Filled::Over) => break,
            Ok(Filled::Eof(n)) => {
                fail(&mut report, format!("end of stream {n} bytes into a request"));
                break;
            }
            Err(e) => {
                fail(&mut report, format!("reading a request: {e}"));
                break;
            }
        }
        report.bytes_received += request_len as u64;
        let seq = u64::from_be_bytes(request[..8].try_into().expect("8 bytes"));
        if seq != expected_seq {
            report.out_of_sequence += 1;
        }
        expected_seq = seq.wrapping_add(1);
        let response = rr_response(&request, response_len);
        match write_full(&stream, &response, over) {
            Ok(true) => {
                report.bytes_sent += response_len as u64;
                report.transactions += 1;
                transactions.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => break,
            Err(e) => {
                fail(&mut report, format!("writing a response: {e}"));
                break;
            }
        }
    }
    report
}

/// How a [`read_full`] ended.
enum Filled {
    Full,
    /// The end of the stream after this many bytes of the buffer.
    Eof(usize),
    /// `over()` came first.
    Over,
}

/// Reads until `buf` is full, the end of the stream or `over()`; a reset is an error.
fn read_full(mut stream: &TcpStream, buf: &mut [u8], over: &dyn Fn() -> bool) -> std::io::Result<Filled> {
    let mut filled = 0;
    while filled < buf.len() {
        if over() {
            return Ok(Filled::Over);
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(Filled::Eof(filled)),
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Filled::Full)
}

/// Writes all of `data` unless `over()` comes first (then `false`).
fn write_full(mut stream: &TcpStream, data: &[u8], over: &dyn Fn() -> bool) -> std::io::Result<bool> {
    let mut off = 0;
    while off < data.len() {
        if over() {
            return Ok(false);
        }
        match stream.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// What an [`RrClient`] did.
#[derive(Clone, Debug)]
pub struct RrReport {
    /// The client's address when it connected.
    pub local: SocketAddr,
    /// Requests answered in full with the right answer.
    pub transactions: u64,
    /// Answers that arrived in full but were not the right one.
    pub mismatches: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// What ended the connection (a reset, the server's end of stream, a write or read
    /// error), if anything did; the first few.
    pub errors: Vec<String>,
    /// No error and no end of stream ended the connection before the stop: it may still
    /// be stalled ([`RrReport::idle_at_stop`] tells).
    pub alive: bool,
    /// When each transaction completed (wall clock, comparable with captures).
    pub completed_at: Vec<SystemTime>,
    /// The longest request-to-answer time of a completed transaction.
    pub max_latency: Duration,
    /// From the last completed transaction (or the connection) to the stop.
    pub idle_at_stop: Duration,
}

/// One connection, one request at a time: sends [`rr_request`] number 0, 1, 2, ...,
/// reads the whole answer and checks it against [`rr_response`], and goes on at once,
/// until stopped or its deadline.
#[derive(Debug)]
pub struct RrClient(RrWorker<RrReport>);

/// Either end of the request/response workload: a thread in a namespace that counts
/// transactions and stops when asked.
#[derive(Debug)]
struct RrWorker<R> {
    local: SocketAddr,
    transactions: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: NsThread<Result<R, LabError>>,
}

impl<R: Send + 'static> RrWorker<R> {
    /// Runs `work(transactions, stop)` on a thread named `name` inside `ns`.
    fn spawn(
        ns: &Ns,
        name: &str,
        local: SocketAddr,
        work: impl FnOnce(Arc<AtomicU64>, Arc<AtomicBool>) -> Result<R, LabError> + Send + 'static,
    ) -> Result<RrWorker<R>, LabError> {
        let transactions = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (transactions, stop) = (transactions.clone(), stop.clone());
            ns.spawn_thread(name, move || work(transactions, stop))?
        };
        Ok(RrWorker {
            local,
            transactions,
            stop,
            thread,
        })
    }

    fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    fn stop(self) -> Result<R, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join()?
    }
}

impl RrClient {
    /// Connects to `to` from inside `ns` with a socket of `protocol` (0: TCP,
    /// `IPPROTO_MPTCP`: Multipath TCP), returns once connected, and asks until stopped
    /// or `deadline` from now.
    pub fn start(
        ns: &Ns,
        to: SocketAddr,
        request_len: usize,
        response_len: usize,
        seed: u64,
        deadline: Duration,
        protocol: i32,
    ) -> Result<RrClient, LabError> {
        if request_len < 8 {
            return Err(LabError::Invalid(format!(
                "requests carry an 8-byte number: {request_len} bytes is too short"
            )));
        }
        let until = Instant::now() + deadline;
        let connect_for = deadline.max(Duration::from_millis(1));
        let stream = ns
            .run(|| connect_stream(to, protocol, connect_for))?
            .map_err(|e| LabError::io(format!("connecting to {to}"), e))?;
        let local = stream.local_addr().map_err(|e| LabError::io("getsockname", e))?;
        RrWorker::spawn(ns, "rr client", local, move |transactions, stop| {
            let over = || stop.load(Ordering::Relaxed) || Instant::now() >= until;
            rr_ask(
                stream,
                local,
                (request_len, response_len),
                seed,
                &over,
                &transactions,
            )
            .map_err(|e| LabError::io(format!("rr client to {to}"), e))
        })
        .map(RrClient)
    }

    /// The socket's address when it connected.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local
    }

    /// Transactions completed so far (right answers only).
    pub fn transactions(&self) -> u64 {
        self.0.transactions()
    }

    /// Whether the client has ended on its own (an error, or its deadline).
    pub fn is_finished(&self) -> bool {
        self.0.thread.is_finished()
    }

    /// Stops (within a tick; a transaction in progress is dropped) and reports.
    pub fn stop(self) -> Result<RrReport, LabError> {
        self.0.stop()
    }
}

fn rr_ask(
    stream: TcpStream,
    local: SocketAddr,
    (request_len, response_len): (usize, usize),
    seed: u64,
    over: &dyn Fn() -> bool,
    transactions: &AtomicU64,
) -> std::io::Result<RrReport> {
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(TICK))?;
    let mut report = RrReport {
        local,
        transactions: 0,
        mismatches: 0,
        bytes_sent: 0,
        bytes_received: 0,
        errors: Vec::new(),
        alive: true,
        completed_at: Vec::new(),
        max_latency: Duration::ZERO,
        idle_at_stop: Duration::ZERO,
    };
    let mut last_progress = Instant::now();
    let mut response = vec![0u8; response_len];
    let mut seq = 0u64;
    let end = |report: &mut RrReport, e: String| {
        report.alive = false;
        if report.errors.len() < RR_ERRORS_KEPT {
            report.errors.push(e);
        }
    };
    while !over() {
        let request = rr_request(seed, seq, request_len);
        let asked = Instant::now();
        match write_full(&stream, &request, over) {
            Ok(true) => report.bytes_sent += request_len as u64,
            Ok(false) => break,
            Err(e) => {
                end(&mut report, format!("writing request {seq}: {e}"));
                break;
            }
        }
        match read_full(&stream, &mut response, over) {
            Ok(Filled::Full) => {}
            Ok(Filled::Over) => break,
            Ok(Filled::Eof(n)) => {
                end(
                    &mut report,
                    format!("end of stream {n} bytes into the answer to request {seq}"),
                );
                break;
            }
            Err(e) => {
                end(&mut report, format!("reading the answer to request {seq}: {e}"));
                break;
            }
        }
        report.bytes_received += response_len as u64;
        if response == rr_response(&request, response_len) {
            report.transactions += 1;
            transactions.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            report.max_latency = report.max_latency.max(now - asked);
            last_progress = now;
            if report.completed_at.len() < RR_COMPLETIONS_KEPT {
                report.completed_at.push(SystemTime::now());
            }
        } else {
            report.mismatches += 1;
        }
        seq += 1;
    }
    report.idle_at_stop = last_progress.elapsed();
    if report.alive {
        close_between_requests(&stream);
    }
    Ok(report)
}

/// How long a stopping [`RrClient`] waits for the server to see its end of stream.
const RR_CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Ends the client's side after its last whole request and reads (discarding) until
/// the server closes too: closing with an unread answer in the receive queue would make
/// the kernel reset the connection (RFC 2525 §2.17), and the server would count an
/// error that is none.
fn close_between_requests(mut stream: &TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + RR_CLOSE_LINGER;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// UDP: numbered datagrams and their echo

/// Bytes in every datagram of a [`UdpPinger`]: its number (8 bytes, big-endian), then
/// pattern bytes that depend on the seed and the number.
pub const DATAGRAM_LEN: usize = 256;

/// Datagram number `seq` of the flow with this seed.
pub fn datagram(seed: u64, seq: u64) -> [u8; DATAGRAM_LEN] {
    let mut d = [0u8; DATAGRAM_LEN];
    d[..8].copy_from_slice(&seq.to_be_bytes());
    // Multiplying by an odd constant is a bijection on u64: every number of one flow
    // gets its own pattern.
    Pattern::new(seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)).fill(&mut d[8..]);
    d
}

/// SHA-256 (hex) of datagrams `seqs` of the flow with this seed, in the order given:
/// what a receiver's digest must be if exactly those arrived, intact, in that order.
pub fn datagrams_sha256(seed: u64, seqs: impl IntoIterator<Item = u64>) -> String {
    let mut hasher = Sha256::new();
    for seq in seqs {
        hasher.update(datagram(seed, seq));
    }
    hex::encode(hasher.finalize())
}

/// The datagrams one end received.
#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    pub datagrams: u64,
    pub bytes: u64,
    /// The number of every datagram, in arrival order.
    pub seqs: Vec<u64>,
    /// SHA-256 (hex) of every datagram, in arrival order.
    pub sha256: String,
    /// Datagrams whose number was not above every number before it (reordered or
    /// duplicated).
    pub out_of_order: u64,
    /// Datagrams too short to carry a number.
    pub malformed: u64,
}

impl Arrivals {
    /// Records one datagram; returns its number (`None`: malformed).
    fn add(&mut self, hasher: &mut Sha256, d: &[u8]) -> Option<u64> {
        self.datagrams += 1;
        self.bytes += d.len() as u64;
        hasher.update(d);
        let Some(seq) = d
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        else {
            self.malformed += 1;
            return None;
        };
        if self.seqs.last().is_some_and(|&last| seq <= last) {
            self.out_of_order += 1;
        }
        self.seqs.push(seq);
        Some(seq)
    }

    /// SHA-256 (hex) of the datagrams these numbers name, once each and in increasing
    /// order: equal to [`Arrivals::sha256`] exactly when every datagram arrived intact,
    /// once, and in the order it was sent.
    pub fn expected_sha256(&self, seed: u64) -> String {
        let mut seqs = self.seqs.clone();
        seqs.sort_unstable();
        seqs.dedup();
        datagrams_sha256(seed, seqs)
    }

    /// Every datagram arrived whole and once, in whatever order (UDP promises none,
    /// and a path change can reorder: a datagram still crossing the old path may land
    /// after one sent on the new path). The arrival-order digest equals the digest of
    /// the datagrams sent under the numbers that arrived, in that order, exactly when
    /// each arrived whole.
    pub fn whole_once(&self, seed: u64) -> bool {
        let mut distinct = self.seqs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        self.malformed == 0
            && distinct.len() == self.seqs.len()
            && self.sha256 == datagrams_sha256(seed, self.seqs.iter().copied())
    }

    /// Every datagram arrived whole, once and in order.
    pub fn intact(&self, seed: u64) -> bool {
        self.malformed == 0 && self.out_of_order == 0 && self.sha256 == self.expected_sha256(seed)
    }
}

/// Why the kernel refused sends, counted by error (for example `EPERM` while roam holds
/// the flow, `ENETUNREACH` while the host has no route).
pub type Refusals = BTreeMap<String, u64>;

fn refuse(refusals: &mut Refusals, e: &std::io::Error) {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_owned(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".to_owned(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".to_owned(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".to_owned(),
        Some(libc::EAGAIN) => "EAGAIN".to_owned(),
        Some(libc::ENOBUFS) => "ENOBUFS".to_owned(),
        Some(libc::EINVAL) => "EINVAL".to_owned(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    };
    *refusals.entry(name).or_default() += 1;
}

/// What a [`UdpEcho`] saw and did.
#[derive(Clone, Debug)]
pub struct EchoReport {
    /// Its own address.
    pub local: SocketAddr,
    /// The source of the datagrams it received as `recvfrom` reported it: every
    /// distinct address once, in order of first appearance.
    pub peers: Vec<SocketAddr>,
    pub arrivals: Arrivals,
    /// Datagrams sent back, and the numbers of those the kernel refused.
    pub echoed: u64,
    pub refused: Refusals,
    pub refused_seqs: Vec<u64>,
}

/// Receives datagrams on a UDP socket and sends each back. The socket is connected to
/// the source of the first datagram, as a UDP server serving one client does: from then
/// on the kernel delivers only that peer's datagrams, and it lists the socket as a flow
/// (sock_diag shows connected UDP sockets as ESTABLISHED; roamd moves only those).
#[derive(Debug)]
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: NsThread<Result<EchoReport, LabError>>,
}

impl UdpEcho {
    /// Binds `listen` inside `ns` (returns once bound) and gives up `deadline` from now.
    pub fn start(ns: &Ns, listen: SocketAddr, deadline: Duration) -> Result<UdpEcho, LabError> {
        let until = Instant::now() + deadline;
        let stop = Arc::new(AtomicBool::new(false));
        let socket = ns
            .run(|| UdpSocket::bind(listen))?
            .map_err(|e| LabError::io(format!("binding {listen}"), e))?;
        let local = socket.local_addr().map_err(|e| LabError::io("getsockname", e))?;
        let thread = {
            let stop = stop.clone();
            ns.spawn_thread("udp echo", move || {
                echo(socket, until, &stop).map_err(|e| LabError::io(format!("udp echo on {local}"), e))
            })?
        };
        Ok(UdpEcho { stop, thread })
    }

    /// Stops now and reports.
    pub fn stop(self) -> Result<EchoReport, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join()?
    }
}

fn echo(socket: UdpSocket, until: Instant, stop: &AtomicBool) -> std::io::Result<EchoReport> {
    socket.set_read_timeout(Some(TICK))?;
    let mut report = EchoReport {
        local: socket.local_addr()?,
        peers: Vec::new(),
        arrivals: Arrivals::default(),
        echoed: 0,
        refused: Refusals::new(),
        refused_seqs: Vec::new(),
    };
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 2048];
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if is_timeout(&e) => continue,
            // An ICMP error for an earlier echo: nothing to do but go on.
            Err(_) => continue,
        };
        if !connected {
            socket.connect(from)?;
            connected = true;
        }
        if !report.peers.contains(&from) {
            report.peers.push(from);
        }
        let d = &buf[..n];
        let seq = report.arrivals.add(&mut hasher, d);
        match socket.send(d) {
            Ok(_) => report.echoed += 1,
            Err(e) => {
                refuse(&mut report.refused, &e);
                report.refused_seqs.extend(seq);
            }
        }
    }
    report.arrivals.sha256 = hex::encode(hasher.finalize());
    Ok(report)
}

/// What a [`UdpPinger`] sent and got back.
#[derive(Clone, Debug)]
pub struct PingerReport {
    /// Its own address at the end (`getsockname`; [`UdpPinger::local_addr`] is the one
    /// it had when it connected).
    pub local_at_end: SocketAddr,
    /// When each datagram was handed to the kernel (wall clock), by number.
    pub sent_at: Vec<SystemTime>,
    /// Of those, the ones the kernel took, and the numbers of those it refused.
    pub sent: u64,
    pub refused: Refusals,
    pub refused_seqs: Vec<u64>,
    /// The echoes that came back.
    pub echoes: Arrivals,
}

impl PingerReport {
    /// Datagrams numbered (0 to `numbered - 1`).
    pub fn numbered(&self) -> u64 {
        self.sent_at.len() as u64
    }
}

/// Sends numbered datagrams ([`datagram`]) at a steady rate on a connected UDP socket
/// and receives their echoes on the same socket, as an unmodified application would:
/// the socket is never rebound, whatever happens to its address.
#[derive(Debug)]
pub struct UdpPinger {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: NsThread<Result<PingerReport, LabError>>,
}

/// After a stop, how long a pinger still waits for the echoes in flight.
const ECHO_LINGER: Duration = Duration::from_millis(300);

impl UdpPinger {
    /// Connects to `to` from inside `ns` (returns once connected: the kernel chose the
    /// source address) and sends `rate` datagrams a second until stopped or `deadline`.
    pub fn start(
        ns: &Ns,
        to: SocketAddr,
        rate: u32,
        seed: u64,
        deadline: Duration,
    ) -> Result<UdpPinger, LabError> {
        if rate == 0 {
            return Err(LabError::Invalid("a pinger needs a rate above zero".into()));
        }
        let until = Instant::now() + deadline;
        let unspecified: IpAddr = match to {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = ns
            .run(|| {
                let s = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
                s.connect(to)?;
                Ok::<_, std::io::Error>(s)
            })?
            .map_err(|e| LabError::io(format!("connecting a UDP socket to {to}"), e))?;
        let local = socket.local_addr().map_err(|e| LabError::io("getsockname", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let interval = Duration::from_secs(1) / rate;
            ns.spawn_thread("udp pinger", move || {
                ping(socket, interval, seed, until, &stop)
                    .map_err(|e| LabError::io(format!("udp pinger to {to}"), e))
            })?
        };
        Ok(UdpPinger { local, stop, thread })
    }

    /// The socket's own address (the kernel chose it at connect).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops sending, waits briefly for the echoes in flight, and reports.
    pub fn stop(self) -> Result<PingerReport, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join()?
    }
}

fn ping(
    socket: UdpSocket,
    interval: Duration,
    seed: u64,
    until: Instant,
    stop: &AtomicBool,
) -> std::io::Result<PingerReport> {
    socket.set_nonblocking(true)?;
    let mut report = PingerReport {
        local_at_end: socket.local_addr()?,
        sent_at: Vec::new(),
        sent: 0,
        refused: Refusals::new(),
        refused_seqs: Vec::new(),
        echoes: Arrivals::default(),
    };
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut linger_until = None;
    loop {
        let now = Instant::now();
        if linger_until.is_none() && (stop.load(Ordering::Relaxed) || now >= until) {
            linger_until = Some(now + ECHO_LINGER);
        }
        if linger_until.is_some_and(|l| now >= l) {
            break;
        }
        // Send every datagram that is due (the schedule is fixed: a late one goes out
        // at once, not shifted).
        let mut next = start + interval * report.numbered() as u32;
        while linger_until.is_none() && next <= now {
            let seq = report.numbered();
            report.sent_at.push(SystemTime::now());
            match socket.send(&datagram(seed, seq)) {
                Ok(_) => report.sent += 1,
                Err(e) => {
                    refuse(&mut report.refused, &e);
                    report.refused_seqs.push(seq);
                }
            }
            next = start + interval * report.numbered() as u32;
        }
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    report.echoes.add(&mut hasher, &buf[..n]);
                }
                Err(e) if is_timeout(&e) => break,
                // An ICMP error for an earlier datagram: reported once, then cleared.
                Err(_) => break,
            }
        }
        let wake = match linger_until {
            Some(l) => l,
            None => next.min(until),
        };
        let mut fds = [sys::pollfd(socket.as_raw_fd())];
        sys::poll(&mut fds, wake.saturating_duration_since(Instant::now()))?;
    }
    report.local_at_end = socket.local_addr()?;
    report.echoes.sha256 = hex::encode(hasher.finalize());
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

    fn arrivals(datagrams: &[Vec<u8>]) -> Arrivals {
        let mut a = Arrivals::default();
        let mut hasher = Sha256::new();
        for d in datagrams {
            a.add(&mut hasher, d);
        }
        a.sha256 = hex::encode(hasher.finalize());
        a
    }

    #[test]
    fn requests_are_numbered_and_answers_depend_on_every_request_byte() {
        let r0 = rr_request(5, 0, 200);
        let r1 = rr_request(5, 1, 200);
        assert_eq!(r0.len(), 200);
        assert_eq!(u64::from_be_bytes(r1[..8].try_into().unwrap()), 1);
        assert_ne!(r0[8..], r1[8..]);
        assert_eq!(rr_request(5, 1, 200), r1, "deterministic");
        assert_ne!(rr_request(6, 1, 200), r1, "seeded");
        assert_eq!(rr_request(5, 3, 2).len(), 8, "never shorter than its number");
        let answer = rr_response(&r1, 2000);
        assert_eq!(answer.len(), 2000);
        assert_eq!(rr_response(&r1, 2000), answer);
        assert_ne!(rr_response(&r0, 2000), answer);
        let mut flipped = r1.clone();
        flipped[150] ^= 1;
        assert_ne!(rr_response(&flipped, 2000), answer);
        assert_eq!(rr_response(&r1, 0), Vec::<u8>::new());
    }

    #[test]
    fn datagrams_are_numbered_and_distinct() {
        let (d0, d1) = (datagram(3, 0), datagram(3, 1));
        assert_eq!(u64::from_be_bytes(d1[..8].try_into().unwrap()), 1);
        assert_ne!(d0[8..], d1[8..]);
        assert_ne!(datagram(4, 1)[8..], d1[8..]);
    }

    #[test]
    fn arrivals_are_intact_only_whole_once_and_in_order_and_whole_once_in_any_order() {
        let d = |seq| datagram(7, seq).to_vec();
        // Losses are allowed: what arrived is checked.
        assert!(arrivals(&[d(0), d(2), d(5)]).intact(7));
        let reordered = arrivals(&[d(0), d(5), d(2)]);
        assert_eq!(reordered.out_of_order, 1);
        assert!(!reordered.intact(7));
        assert!(reordered.whole_once(7));
        assert!(!arrivals(&[d(0), d(2), d(2)]).whole_once(7));
        assert!(!arrivals(&[d(0), d(2), d(2)]).intact(7));
        let mut bad = d(3);
        bad[100] ^= 1;
        assert!(!arrivals(&[d(0), bad.clone()]).intact(7));
        assert!(!arrivals(&[d(0), bad]).whole_once(7));
        assert!(!arrivals(&[d(0), vec![1, 2, 3]]).intact(7));
        assert!(!arrivals(&[d(0)]).intact(8));
        assert!(!arrivals(&[d(0)]).whole_once(8));
    }
}
