//! A two-host lab for the data planes' tests: namespaces X and Y joined by a veth pair,
//! traffic generators that digest every byte, and a mover that changes X's address the
//! way a host that changes networks does (old address kept as a host address on `lo`
//! for existing sockets, new one on the link).
//!
//! Every data plane (nftables, TUN, tc-BPF) is tested on it with the same arrange
//! steps: [`TwoPlanes`] opens a plane on each host, [`Lab::stream`] starts a TCP
//! stream X -> Y, [`TwoPlanes::move_x`] moves X and installs the move's entries,
//! [`MovingStream::finish_intact`] checks both ends' digests; [`UdpFlow`] is the same
//! for a UDP flow. A test adds only what its plane counts and lists.
//!
//! Namespaces come from `support` (the lab's); every wait is bounded.

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
use sha2::{Digest, Sha256};
use socket2::{Domain, Socket, Type};

use super::{Netns, veth, wait_for};

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
        veth(&x, &x_if, &y, &y_if);
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
pub fn install_move<P: DataPlane>(px: &mut P, py: &mut P, x_orig: Tuple, x_cur: Tuple, hold_x: bool) {
    py.apply(&install(x_orig.reversed(), x_cur.reversed(), false))
        .expect("Y's entry");
    px.apply(&install(x_orig, x_cur, hold_x)).expect("X's entry");
}

/// The two hosts of a [`Lab`], each with a data plane of the kind under test.
pub struct TwoPlanes<P> {
    pub lab: Lab,
    pub px: P,
    pub py: P,
}

impl<P: DataPlane> TwoPlanes<P> {
    /// A fresh lab with a plane on each host; `open` makes one from the host's
    /// namespace and its link's name.
    pub fn open(a: Addrs, open: impl Fn(&Netns, &str) -> P) -> TwoPlanes<P> {
        TwoPlanes::on(Lab::new(a), open)
    }

    /// A plane on each host of `lab` (set up first what must precede the planes).
    pub fn on(lab: Lab, open: impl Fn(&Netns, &str) -> P) -> TwoPlanes<P> {
        let px = open(&lab.x, &lab.x_if);
        let py = open(&lab.y, &lab.y_if);
        TwoPlanes { lab, px, py }
    }

    /// Both entries of a move (see [`install_move`]).
    pub fn install_move(&mut self, x_orig: Tuple, x_cur: Tuple, hold_x: bool) {
        install_move(&mut self.px, &mut self.py, x_orig, x_cur, hold_x);
    }

    /// X moves ([`Lab::move_x`]), the old path cut at Y ([`Lab::cut_old_path`]) with
    /// `OldPath::Cut`, and both planes get the entries of X's flow `x_orig` moved to
    /// `x_cur`, Y's first. How long the two installs took is reported, not asserted.
    pub fn move_x(&mut self, x_orig: Tuple, x_cur: Tuple, old_path: OldPath) {
        self.lab.move_x();
        if old_path == OldPath::Cut {
            self.lab.cut_old_path();
        }
        let started = Instant::now();
        self.install_move(x_orig, x_cur, false);
        eprintln!("both entries installed in {:?}", started.elapsed());
    }
}

impl Lab {
    /// X streams to Y as `spec` says: returns once Y's socket has accepted X's original
    /// end and `spec.before_move` bytes have arrived.
    pub fn stream(&self, spec: StreamSpec) -> MovingStream {
        let a = self.a;
        let from = sa(a.x1, spec.port);
        let to = sa(a.y, spec.server_port);
        let stream = Stream::start(self, from, to, spec.total, spec.chunk, spec.pause);
        let peer = stream
            .peer_seen
            .recv_timeout(Duration::from_secs(5))
            .expect("Y accepted the connection in time");
        assert_eq!(peer, from, "Y's socket sees X's original address");
        stream.wait_received(spec.before_move, Duration::from_secs(5));
        MovingStream {
            stream,
            original: tuple(Protocol::Tcp, from, to),
            current: tuple(Protocol::Tcp, sa(a.x2, spec.new_port.unwrap_or(spec.port)), to),
            total: spec.total,
        }
    }
}

/// What happens to the old path when X moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldPath {
    /// Y's link no longer carries x1 ([`Lab::cut_old_path`]): only translated packets
    /// get through.
    Cut,
    /// Left alone: for planes that translate outside netfilter's hooks (tc), where the
    /// cut's table would see the translated packets; a capture checks instead.
    Kept,
}

/// A TCP stream from X's x1:`port` to Y's y:`server_port`: `total` bytes in `chunk`s
/// paced by `pause`; X moves once `before_move` bytes have arrived, to x2:`new_port`
/// (the same port without one).
#[derive(Clone, Copy, Debug)]
pub struct StreamSpec {
    pub port: u16,
    pub new_port: Option<u16>,
    pub server_port: u16,
    pub total: u64,
    pub chunk: usize,
    pub pause: Duration,
    pub before_move: u64,
}

impl Default for StreamSpec {
    fn default() -> StreamSpec {
        StreamSpec {
            port: 40000,
            new_port: None,
            server_port: 5001,
            total: 6 << 20,
            chunk: 32 << 10,
            pause: Duration::from_millis(5),
            before_move: 1 << 20,
        }
    }
}

/// A stream started by [`Lab::stream`], with the flow's tuples (X's view) before
/// and after the move.
pub struct MovingStream {
    pub stream: Stream,
    pub original: Tuple,
    pub current: Tuple,
    pub total: u64,
}

impl MovingStream {
    /// Waits (bounded) for both ends and checks that the stream came through whole:
    /// no error at either end, every byte sent, and the same bytes (SHA-256) received.
    pub fn finish_intact(self, limit: Duration) -> (Digest256, Digest256) {
        let (sent, got) = self.stream.finish(limit);
        assert_eq!(sent.error, None, "sender: {sent:?}");
        assert_eq!(got.error, None, "receiver: {got:?}");
        assert_eq!(sent.bytes, self.total);
        assert_eq!((got.bytes, &got.sha256), (sent.bytes, &sent.sha256));
        (sent, got)
    }
}

/// A UDP flow from X's x1:41000 to Y's y:5353, a socket at each end made before X
/// moves; after the move X's end is x2:`new_port`.
pub struct UdpFlow {
    pub ux: UdpSocket,
    pub uy: UdpSocket,
    pub original: Tuple,
    pub current: Tuple,
}

impl UdpFlow {
    pub fn open(lab: &Lab, new_port: u16) -> UdpFlow {
        let a = lab.a;
        let (x, y) = (sa(a.x1, 41000), sa(a.y, 5353));
        UdpFlow {
            ux: udp_socket(&lab.x, x),
            uy: udp_socket(&lab.y, y),
            original: tuple(Protocol::Udp, x, y),
            current: tuple(Protocol::Udp, sa(a.x2, new_port), y),
        }
    }

    /// Both sockets send without a checksum ([`no_udp_checksum`]).
    pub fn no_checksums(&self) {
        no_udp_checksum(&self.ux);
        no_udp_checksum(&self.uy);
    }

    /// 20 datagrams X -> Y, each arriving intact and in order from `y_sees` (the
    /// source Y's socket sees), then 20 back to `y_sees`, all arriving at X from Y.
    /// `context` adds to the first check's message (the planes' counters).
    pub fn exchange(&self, y_sees: SocketAddr, context: impl Fn() -> String) {
        let y = self.original.remote;
        for i in 0..20u8 {
            self.ux.send_to(&[i; 300], y).unwrap();
        }
        let at_y = drain_udp(&self.uy);
        assert_eq!(at_y.len(), 20, "datagrams at Y; {}", context());
        for (i, (d, from)) in at_y.iter().enumerate() {
            assert_eq!(*from, y_sees, "the source Y's socket sees");
            assert_eq!(d, &vec![i as u8; 300]);
        }
        for i in 0..20u8 {
            self.uy.send_to(&[i; 200], y_sees).unwrap();
        }
        let at_x = drain_udp(&self.ux);
        assert_eq!(at_x.len(), 20, "datagrams at X");
        assert!(at_x.iter().all(|(_, from)| *from == y));
    }
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

impl Lab {
    /// UDP datagrams dropped for a bad checksum at X and at Y, in the lab's family's MIB
    /// (`Udp: InCsumErrors`, `Udp6InCsumErrors`).
    pub fn udp_checksum_errors(&self) -> (u64, u64) {
        let errors = |ns: &Netns| {
            if self.a.y.is_ipv6() {
                ns.mib6("Udp6InCsumErrors")
            } else {
                ns.mib("Udp", "InCsumErrors")
            }
        };
        (errors(&self.x), errors(&self.y))
    }
}

impl Netns {
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
