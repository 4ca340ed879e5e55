//! A two-host lab for the kernel data plane's tests: namespaces X and Y joined by a veth
//! pair, traffic generators that digest every byte, and a mover that changes X's address
//! the way a host that changes networks does (old address kept as a host address on
//! `lo` for existing sockets, new one on the link).
//!
//! Namespaces come from `support` (the lab's); every wait is bounded. Test binaries
//! declare `mod support;` next to `mod common_nft;`.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use roam_core::translate::{FlowMapping, Protocol, TableChange, Tuple};
use roam_core::{DataPlane, DataPlaneCommand};
use roam_lab::capture::{PacketRecord, TcpFlags};
use roam_lab::traffic::Pattern;
use roam_linux::nft::{NftConfig, NftDataPlane};
use sha2::{Digest, Sha256};
use socket2::{Domain, Socket, Type};

pub use crate::support::{Netns, netns_available, wait_for};

impl Netns {
    /// A kernel data plane in this namespace.
    pub fn plane(&self) -> NftDataPlane {
        NftDataPlane::open_with(NftConfig {
            netns: Some(self.path()),
            ..NftConfig::default()
        })
        .expect("open the nftables data plane")
    }

    /// A counter of /proc/net/snmp or /proc/net/netstat (`Udp`, `InCsumErrors`), read
    /// inside the namespace.
    pub fn mib(&self, group: &str, name: &str) -> u64 {
        for file in ["/proc/net/snmp", "/proc/net/netstat"] {
            let text = self.exec("cat", &[file]).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [head, vals] = pair else { continue };
                let Some(h) = head.strip_prefix(&format!("{group}:")) else {
                    continue;
                };
                let v = vals.split_once(':').map(|x| x.1).unwrap_or("");
                for (k, v) in h.split_whitespace().zip(v.split_whitespace()) {
                    if k == name {
                        return v.parse().unwrap();
                    }
                }
            }
        }
        panic!("no counter {group}:{name}")
    }
}

/// Addresses of the lab: X starts at `x1`, moves to `x2`; Y stays at `y`.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub x1: IpAddr,
    pub x2: IpAddr,
    pub y: IpAddr,
    pub prefix: u8,
}

pub const V4: Addrs = Addrs {
    x1: IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 1)),
    x2: IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 3)),
    y: IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 2)),
    prefix: 24,
};

pub const V6: Addrs = Addrs {
    x1: IpAddr::V6(std::net::Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1)),
    x2: IpAddr::V6(std::net::Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3)),
    y: IpAddr::V6(std::net::Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2)),
    prefix: 64,
};

/// Two namespaces joined by a veth pair (`<x>v` in X, `<y>v` in Y).
pub struct Lab {
    pub x: Netns,
    pub y: Netns,
    pub x_if: String,
    pub y_if: String,
    pub a: Addrs,
}

impl Lab {
    pub fn new(a: Addrs) -> Lab {
        let x = Netns::new();
        let y = Netns::new();
        let x_if = format!("{}v", x.name);
        let y_if = format!("{}v", y.name);
        assert!(x_if.len() <= 15 && y_if.len() <= 15, "{x_if} {y_if}");
        x.ip(&format!(
            "link add {x_if} type veth peer name {y_if} netns {}",
            y.name
        ));
        x.ip(&format!("link set {x_if} up"));
        y.ip(&format!("link set {y_if} up"));
        let lab = Lab { x, y, x_if, y_if, a };
        let nodad = if a.y.is_ipv6() { " nodad" } else { "" };
        lab.x
            .ip(&format!("addr add {}/{} dev {}{nodad}", a.x1, a.prefix, lab.x_if));
        lab.y
            .ip(&format!("addr add {}/{} dev {}{nodad}", a.y, a.prefix, lab.y_if));
        lab
    }

    /// Turns checksum offloads off on both ends, so that checksums are computed and
    /// verified in software: a wrong one is dropped and counted (`InCsumErrors`).
    pub fn software_checksums(&self) {
        self.x
            .exec("ethtool", &["-K", &self.x_if, "tx", "off", "rx", "off"])
            .unwrap();
        self.y
            .exec("ethtool", &["-K", &self.y_if, "tx", "off", "rx", "off"])
            .unwrap();
    }

    /// X moves: `x1` leaves the link and stays on `lo` as a host address (deprecated for
    /// IPv6, so new sockets do not pick it), `x2` arrives on the link.
    pub fn move_x(&self) {
        let a = self.a;
        self.x
            .ip(&format!("addr del {}/{} dev {}", a.x1, a.prefix, self.x_if));
        if a.x1.is_ipv6() {
            self.x
                .ip(&format!("addr add {}/128 dev lo nodad preferred_lft 0", a.x1));
            self.x
                .ip(&format!("addr add {}/{} dev {} nodad", a.x2, a.prefix, self.x_if));
        } else {
            self.x.ip(&format!("addr add {}/32 dev lo", a.x1));
            self.x
                .ip(&format!("addr add {}/{} dev {}", a.x2, a.prefix, self.x_if));
        }
    }
}

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

pub fn tuple(p: Protocol, local: SocketAddr, remote: SocketAddr) -> Tuple {
    Tuple::new(p, local, remote)
}

pub fn install(original: Tuple, current: Tuple, hold: bool) -> DataPlaneCommand {
    DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
        original,
        current,
        hold,
    }))
}

/// Installs on both hosts the entries of a move of X's flow `x_orig` (X's view) to
/// `x_cur`: Y's first (its tuple is the reverse: local y, remote X's), then X's, as an
/// oracle would (the peer must have its entry before the mover's packets arrive).
pub fn install_move(px: &mut NftDataPlane, py: &mut NftDataPlane, x_orig: Tuple, x_cur: Tuple, hold_x: bool) {
    py.apply(&install(x_orig.reversed(), x_cur.reversed(), false))
        .expect("Y's entry");
    px.apply(&install(x_orig, x_cur, hold_x)).expect("X's entry");
}

/// Outcome of one end of a TCP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest256 {
    pub bytes: u64,
    pub sha256: String,
    pub error: Option<String>,
}

/// A TCP stream from X (`from`, bound) to Y (`to`), `total` bytes in `chunk`s paced by
/// `pause`, each end digesting what it wrote or read. `received` shows progress.
pub struct Stream {
    pub received: Arc<AtomicU64>,
    pub peer_seen: mpsc::Receiver<SocketAddr>,
    sender: mpsc::Receiver<Digest256>,
    receiver: mpsc::Receiver<Digest256>,
    pub stop: Arc<AtomicBool>,
}

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl Stream {
    pub fn start(
        lab: &Lab,
        from: SocketAddr,
        to: SocketAddr,
        total: u64,
        chunk: usize,
        pause: Duration,
    ) -> Stream {
        let listener = lab.y.run(|| TcpListener::bind(to).expect("listen"));
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (rtx, rrx) = mpsc::channel();
        let (ptx, prx) = mpsc::channel();
        let got = received.clone();
        std::thread::spawn(move || {
            let result = (|| -> Result<Digest256, String> {
                listener.set_nonblocking(false).map_err(|e| e.to_string())?;
                let (mut s, peer) = accept_within(&listener, IO_TIMEOUT)?;
                let _ = ptx.send(peer);
                s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
                let mut h = Sha256::new();
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => {
                            h.update(&buf[..k]);
                            n += k as u64;
                            got.store(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            return Ok(Digest256 {
                                bytes: n,
                                sha256: format!("{:x}", h.finalize()),
                                error: Some(e.to_string()),
                            });
                        }
                    }
                }
                let _ = s.write_all(b"k");
                Ok(Digest256 {
                    bytes: n,
                    sha256: format!("{:x}", h.finalize()),
                    error: None,
                })
            })();
            let _ = rtx.send(result.unwrap_or_else(|e| Digest256 {
                bytes: 0,
                sha256: String::new(),
                error: Some(e),
            }));
        });
        let sock = lab.x.run(|| {
            let s = Socket::new(Domain::for_address(from), Type::STREAM, None).unwrap();
            s.bind(&from.into()).expect("bind the client");
            s.connect_timeout(&to.into(), IO_TIMEOUT).expect("connect");
            TcpStream::from(s)
        });
        let (stx, srx) = mpsc::channel();
        let halt = stop.clone();
        std::thread::spawn(move || {
            let mut s = sock;
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let mut h = Sha256::new();
            let mut data = Pattern::new(total);
            let mut buf = vec![0u8; chunk];
            let mut sent = 0u64;
            let mut error = None;
            while sent < total && !halt.load(Ordering::Relaxed) {
                let k = chunk.min((total - sent) as usize);
                data.fill(&mut buf[..k]);
                if let Err(e) = s.write_all(&buf[..k]) {
                    error = Some(e.to_string());
                    break;
                }
                h.update(&buf[..k]);
                sent += k as u64;
                std::thread::sleep(pause);
            }
            if error.is_none() {
                let _ = s.shutdown(std::net::Shutdown::Write);
                // Wait for the receiver's "k": everything arrived.
                let mut b = [0u8; 1];
                if let Err(e) = s.read_exact(&mut b) {
                    error = Some(format!("no final ack: {e}"));
                }
            }
            let _ = stx.send(Digest256 {
                bytes: sent,
                sha256: format!("{:x}", h.finalize()),
                error,
            });
        });
        Stream {
            received,
            peer_seen: prx,
            sender: srx,
            receiver: rrx,
            stop,
        }
    }

    /// Waits (bounded) until Y has read at least `n` bytes.
    pub fn wait_received(&self, n: u64, limit: Duration) {
        wait_for(limit, &format!("{n} bytes at Y"), || {
            (self.received.load(Ordering::Relaxed) >= n).then_some(())
        });
    }

    /// Both ends' digests, once both are done (bounded).
    pub fn finish(self, limit: Duration) -> (Digest256, Digest256) {
        let s = self
            .sender
            .recv_timeout(limit)
            .expect("the sender finished in time");
        let r = self
            .receiver
            .recv_timeout(limit)
            .expect("the receiver finished in time");
        (s, r)
    }
}

fn accept_within(l: &TcpListener, limit: Duration) -> Result<(TcpStream, SocketAddr), String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > limit {
                    return Err("no connection".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A UDP socket bound to `at`, made inside `ns`, with a receive timeout.
pub fn udp_socket(ns: &Netns, at: SocketAddr) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind(at).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    })
}

/// Sends UDP-over-IPv4 datagrams without a checksum (`SO_NO_CHECK`, RFC 768's zero).
pub fn no_udp_checksum(s: &UdpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
}

/// Receives datagrams until none comes for the socket's timeout; returns them with
/// their sources.
pub fn drain_udp(s: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        out.push((buf[..n].to_vec(), from));
        if out.len() > 10_000 {
            break;
        }
    }
    out
}

impl Lab {
    /// The old network is gone: Y neither receives from nor sends to `x1` on the wire
    /// (a router's BCP 38 filter and a route that no longer leads to X). Its own table,
    /// on the link only, at priorities outside roam's: ingress before roam's rewrite
    /// (-400), egress after it (postrouting), so only what is really on the wire is
    /// filtered.
    pub fn cut_old_path(&self) {
        let l3 = if self.a.x1.is_ipv6() { "ip6" } else { "ip" };
        let (x1, dev) = (self.a.x1, &self.y_if);
        let script = format!(
            "table inet lab {{
  chain pre {{ type filter hook prerouting priority -400; iifname {dev} {l3} saddr {x1} drop; }}
  chain out {{ type filter hook postrouting priority 100; oifname {dev} {l3} daddr {x1} drop; }}
}}
"
        );
        let path = std::env::temp_dir().join(format!("{}-cut.nft", self.y.name));
        std::fs::write(&path, script).unwrap();
        self.y.exec("nft", &["-f", path.to_str().unwrap()]).unwrap();
        let _ = std::fs::remove_file(path);
    }
}

impl Netns {
    /// A counter of /proc/net/snmp6 (`Udp6InCsumErrors`), read inside the namespace.
    pub fn mib6(&self, name: &str) -> u64 {
        let text = self.exec("cat", &["/proc/net/snmp6"]).unwrap();
        text.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(name)).then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// The packets crossing one interface (both directions), from the lab's capture, read
/// in order.
pub struct Capture {
    inner: roam_lab::capture::Capture,
    /// Records already looked at by [`Capture::find`] or skipped by [`Capture::clear`].
    seen: std::cell::Cell<usize>,
}

impl Capture {
    pub fn open(ns: &Netns, ifname: &str) -> Capture {
        let inner =
            roam_lab::capture::Capture::start(ns.ns(), ifname, Default::default()).expect("a capture");
        Capture {
            inner,
            seen: std::cell::Cell::new(0),
        }
    }

    /// The first packet not looked at yet, within `limit`, that `pred` accepts.
    pub fn find(&self, limit: Duration, mut pred: impl FnMut(&PacketRecord) -> bool) -> Option<PacketRecord> {
        let start = Instant::now();
        loop {
            let records = self.inner.records();
            for r in &records[self.seen.get().min(records.len())..] {
                self.seen.set(self.seen.get() + 1);
                if pred(r) {
                    return Some(*r);
                }
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Skips what was captured so far.
    pub fn clear(&self) {
        self.seen.set(self.inner.records().len());
    }
}

/// A TCP segment: (src, dst, flags "SAFRP", payload length).
pub fn tcp_segment(r: &PacketRecord) -> Option<(SocketAddr, SocketAddr, String, usize)> {
    let tcp = r.tcp?;
    let flags = [
        (TcpFlags::SYN, 'S'),
        (TcpFlags::ACK, 'A'),
        (TcpFlags::FIN, 'F'),
        (TcpFlags::RST, 'R'),
        (TcpFlags::PSH, 'P'),
    ]
    .into_iter()
    .filter(|(f, _)| tcp.flags.has(*f))
    .map(|(_, c)| c)
    .collect();
    Some((r.src, r.dst, flags, r.payload_len as usize))
}

/// An established, idle TCP connection from `from` (in X) to `to` (in Y), a few bytes
/// exchanged: (X's end, Y's end).
pub fn idle_connection(lab: &Lab, from: SocketAddr, to: SocketAddr) -> (TcpStream, TcpStream) {
    let listener = lab.y.run(|| TcpListener::bind(to).expect("listen"));
    let x = lab.x.run(|| {
        let s = Socket::new(Domain::for_address(from), Type::STREAM, None).unwrap();
        s.bind(&from.into()).expect("bind");
        s.connect_timeout(&to.into(), IO_TIMEOUT).expect("connect");
        TcpStream::from(s)
    });
    let (y, _) = accept_within(&listener, IO_TIMEOUT).expect("accept");
    for s in [&x, &y] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    (&x).write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    (&y).read_exact(&mut b).unwrap();
    (&y).write_all(b"world").unwrap();
    (&x).read_exact(&mut b).unwrap();
    (x, y)
}
