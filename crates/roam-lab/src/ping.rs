//! ICMP echo from inside a namespace, in Rust: the machines do not ship `ping`, and a
//! pinger of our own reports every RTT and sends at any interval (a flood for loss
//! measurements) within a bounded time.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::{LabError, Ns};
use crate::sys;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

#[derive(Clone, Copy, Debug)]
pub struct PingOptions {
    /// Echo requests to send (at most 65535: the sequence number is 16 bits).
    pub count: u16,
    /// Time between requests.
    pub interval: Duration,
    /// How long to wait for replies after the last request.
    pub wait: Duration,
    /// Bytes after the ICMP header.
    pub payload: usize,
    /// Send from this address (it must be local) instead of the one routing picks.
    pub source: Option<IpAddr>,
}

impl Default for PingOptions {
    fn default() -> PingOptions {
        PingOptions {
            count: 5,
            interval: Duration::from_millis(100),
            wait: Duration::from_secs(1),
            payload: 56,
            source: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PingReport {
    pub destination: IpAddr,
    pub sent: u16,
    /// One entry per request: its RTT, or `None` if no reply came in time.
    pub rtts: Vec<Option<Duration>>,
}

impl PingReport {
    pub fn received(&self) -> usize {
        self.rtts.iter().flatten().count()
    }

    /// Fraction of requests without a reply.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.received() as f64 / f64::from(self.sent)
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.rtts.iter().flatten().copied().collect();
        v.sort();
        v
    }

    pub fn min(&self) -> Option<Duration> {
        self.sorted().first().copied()
    }

    pub fn median(&self) -> Option<Duration> {
        let v = self.sorted();
        v.get(v.len() / 2).copied()
    }

    pub fn max(&self) -> Option<Duration> {
        self.sorted().last().copied()
    }
}

/// Pings `destination` from inside `ns`; takes about `count × interval + wait`.
pub fn ping(ns: &Ns, destination: IpAddr, options: &PingOptions) -> Result<PingReport, LabError> {
    ns.run(|| ping_here(destination, options))?
        .map_err(|e| LabError::io(format!("ping {destination} in {}", ns.name()), e))
}

static NEXT_ID: AtomicU16 = AtomicU16::new(1);

fn ping_here(destination: IpAddr, options: &PingOptions) -> std::io::Result<PingReport> {
    let v4 = destination.is_ipv4();
    let socket = if v4 {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
    } else {
        // The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets (RFC 3542 §3.1).
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?
    };
    socket.set_nonblocking(true)?;
    if let Some(source) = options.source {
        socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    }
    // Raw sockets see every echo reply reaching the namespace: ours carry this id.
    let id = (std::process::id() as u16) ^ NEXT_ID.fetch_add(0x3b1, Ordering::Relaxed);
    let to = SockAddr::from(SocketAddr::new(destination, 0));
    let count = usize::from(options.count);
    let mut sent_at: Vec<Option<Instant>> = vec![None; count];
    let mut rtts: Vec<Option<Duration>> = vec![None; count];
    let mut received = 0;
    let mut request = vec![0u8; 8 + options.payload];
    for (i, b) in request[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut buf = [0u8; 2048];
    let mut next_send = Instant::now();
    let mut sent = 0usize;
    let mut end: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if sent < count && now >= next_send {
            request[0] = if v4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
            request[1] = 0;
            request[2..4].fill(0);
            request[4..6].copy_from_slice(&id.to_be_bytes());
            request[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
            if v4 {
                let sum = checksum(&request);
                request[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            sent_at[sent] = Some(now);
            // A send that fails (no route during a move) is a lost request.
            let _ = socket.send_to(&request, &to);
            sent += 1;
            next_send += options.interval;
            if sent == count {
                end = Some(now + options.wait);
            }
            continue;
        }
        if received == count || end.is_some_and(|e| now >= e) {
            break;
        }
        let until = end.unwrap_or(next_send);
        let mut fds = [sys::pollfd(socket.as_raw_fd())];
        sys::poll(&mut fds, until.saturating_duration_since(now))?;
        loop {
            let n = match (&socket).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let arrived = Instant::now();
            // IPv4 raw sockets hand us the IP header too; IPv6 ones do not.
            let icmp = if v4 {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                buf.get(ihl..n).unwrap_or(&[])
            } else {
                &buf[..n]
            };
            if icmp.len() < 8 || icmp[0] != if v4 { ECHO_REPLY_V4 } else { ECHO_REPLY_V6 } {
                continue;
            }
            if u16::from_be_bytes([icmp[4], icmp[5]]) != id {
                continue;
            }
            let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            if let (Some(Some(at)), Some(slot @ None)) = (sent_at.get(seq), rtts.get_mut(seq)) {
                *slot = Some(arrived - *at);
                received += 1;
            }
        }
    }
    Ok(PingReport {
        destination,
        sent: options.count,
        rtts,
    })
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (before complement).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn report_statistics() {
        let ms = Duration::from_millis;
        let r = PingReport {
            destination: "10.0.0.1".parse().unwrap(),
            sent: 4,
            rtts: vec![Some(ms(30)), None, Some(ms(10)), Some(ms(20))],
        };
        assert_eq!(r.received(), 3);
        assert!((r.loss() - 0.25).abs() < 1e-9);
        assert_eq!(
            (r.min(), r.median(), r.max()),
            (Some(ms(10)), Some(ms(20)), Some(ms(30)))
        );
    }
}
