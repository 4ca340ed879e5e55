//! A two-host lab for the kernel data plane's tests: namespaces X and Y joined by a veth
//! pair, traffic generators that digest every byte, and a mover that changes X's address
//! the way a host that changes networks does (old address kept as a host address on
//! `lo` for existing sockets, new one on the link).
//!
//! Namespaces are named `rn<pid>x<n>` (unique per process and test), deleted on drop,
//! also when a test panics. Rust code runs in a namespace on a thread that has entered
//! it (`setns(2)`); sockets keep the namespace they were made in. Every wait is bounded.

#![allow(dead_code)] // each test binary uses a different part

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use roam_core::translate::{FlowMapping, Protocol, TableChange, Tuple};
use roam_core::{DataPlane, DataPlaneCommand};
use roam_linux::nft::{NftConfig, NftDataPlane};
use sha2::{Digest, Sha256};
use socket2::{Domain, Socket, Type};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether namespace tests can run: as root, yes; otherwise the test fails with a clear
/// message, unless `ROAM_SKIP_NETNS=1` (then the test returns early).
pub fn netns_available() -> bool {
    if std::env::var("ROAM_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("ROAM_SKIP_NETNS=1: skipping a network namespace test");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test builds network namespaces and nftables tables and needs root \
         (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW); run it as root, or set \
         ROAM_SKIP_NETNS=1 to skip it"
    );
    true
}

fn unique() -> String {
    format!(
        "rn{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; its stderr on failure.
pub fn cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique();
        cmd("ip", &["netns", "add", &name]).unwrap();
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n <ns> <args>`, panicking with ip's message.
    pub fn ip(&self, args: &str) {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend(args.split_whitespace());
        if let Err(e) = cmd("ip", &v) {
            panic!("{e}");
        }
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["netns", "exec", self.name.as_str(), program];
        v.extend_from_slice(args);
        cmd("ip", &v)
    }

    /// Runs `f` on a thread inside the namespace; a panic in `f` is raised here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                enter(&path);
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Spawns a thread that lives in the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

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

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = cmd("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn enter(path: &PathBuf) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns only reads the descriptor and changes this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
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

/// Deterministic bytes (xorshift), so both ends can be compared by digest.
pub struct Bytes(u64);

impl Bytes {
    pub fn new(seed: u64) -> Bytes {
        Bytes(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
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
                                sha256: hex(&h.finalize()),
                                error: Some(e.to_string()),
                            });
                        }
                    }
                }
                let _ = s.write_all(b"k");
                Ok(Digest256 {
                    bytes: n,
                    sha256: hex(&h.finalize()),
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
            let mut data = Bytes::new(total);
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
                sha256: hex(&h.finalize()),
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

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Polls `f` until it gives `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
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

/// An AF_PACKET capture of every frame crossing one interface (both directions).
pub struct Capture {
    fd: std::os::fd::OwnedFd,
}

impl Capture {
    pub fn open(ns: &Netns, ifname: &str) -> Capture {
        use std::os::fd::FromRawFd;
        let ifname = std::ffi::CString::new(ifname).unwrap();
        ns.run(|| {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket creation; the result is checked.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as i32) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd was just created and is owned from here on.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert!(index > 0, "no interface {ifname:?}");
            // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
            let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            ll.sll_family = libc::AF_PACKET as u16;
            ll.sll_protocol = proto;
            ll.sll_ifindex = index as i32;
            // SAFETY: a valid socket and a sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&ll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: a valid socket and a timeval of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            Capture { fd }
        })
    }

    /// The first frame within `limit` that `pred` accepts.
    pub fn find(&self, limit: Duration, mut pred: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
        let start = Instant::now();
        let mut buf = vec![0u8; 65536];
        while start.elapsed() < limit {
            // SAFETY: a valid socket and a buffer of the length given.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && pred(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }

    /// Discards what was captured so far.
    pub fn clear(&self) {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: as in `find`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
        }
    }
}

/// A TCP segment in an Ethernet frame: (src, dst, flags "SAFRP", payload length).
pub fn tcp_segment(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, String, usize)> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let s = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match s.net? {
        NetSlice::Ipv4(v4) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(v6) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        _ => return None,
    };
    let Some(TransportSlice::Tcp(t)) = s.transport else {
        return None;
    };
    let mut flags = String::new();
    for (on, c) in [
        (t.syn(), 'S'),
        (t.ack(), 'A'),
        (t.fin(), 'F'),
        (t.rst(), 'R'),
        (t.psh(), 'P'),
    ] {
        if on {
            flags.push(c);
        }
    }
    Some((
        SocketAddr::new(src, t.source_port()),
        SocketAddr::new(dst, t.destination_port()),
        flags,
        t.payload().len(),
    ))
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
