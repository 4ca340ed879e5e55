//! The TCP and UDP sockets of this network namespace, as flows (sock_diag).
//!
//! roam speaks `NETLINK_SOCK_DIAG` itself over a raw netlink socket: the request
//! (`inet_diag_req_v2`, 56 bytes) and the part of each reply it needs (`inet_diag_msg`,
//! 72 bytes, then attributes it does not ask for and skips) are small, fixed and
//! documented in `linux/inet_diag.h`. Owning the parser means every reply is
//! bounds-checked and anything malformed is a typed [`Error`], never a panic, and new
//! attributes in future kernels cannot break decoding.
//!
//! Calls block (a dump of a few thousand sockets takes milliseconds); from async code
//! use [`dump_flows_async`], which runs on tokio's blocking pool.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use roam_core::translate::{Protocol, Tuple};
use tracing::debug;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sock_diag socket: {0}")]
    Io(#[from] io::Error),
    #[error("sock_diag: the kernel answered with error {}", io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    #[error("sock_diag: no answer within {0:?}")]
    Timeout(Duration),
    #[error("sock_diag: malformed reply: {0}")]
    Malformed(&'static str),
    #[error("sock_diag: a reply datagram of {0} bytes did not fit the receive buffer")]
    Truncated(usize),
    #[error("sock_diag: the socket tables kept changing during the dump")]
    Interrupted,
    #[error("sock_diag: the kernel reports an overrun")]
    Overrun,
}

/// The TCP state of a flow's socket. A connected UDP socket is `Established` (the
/// kernel's own name for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    CloseWait,
    LastAck,
    Closing,
}

impl FlowState {
    /// From the kernel's TCP state number (`include/net/tcp_states.h`). LISTEN, CLOSE
    /// and the internal NEW_SYN_RECV are not flows.
    pub fn from_kernel(n: u8) -> Option<FlowState> {
        Some(match n {
            TCP_ESTABLISHED => FlowState::Established,
            TCP_SYN_SENT => FlowState::SynSent,
            TCP_SYN_RECV => FlowState::SynRecv,
            TCP_FIN_WAIT1 => FlowState::FinWait1,
            TCP_FIN_WAIT2 => FlowState::FinWait2,
            TCP_TIME_WAIT => FlowState::TimeWait,
            TCP_CLOSE_WAIT => FlowState::CloseWait,
            TCP_LAST_ACK => FlowState::LastAck,
            TCP_CLOSING => FlowState::Closing,
            _ => return None,
        })
    }
}

/// One socket of this host that is a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketFlow {
    /// From this host's point of view: `local` is the socket's source. An IPv6 socket
    /// talking to an IPv4-mapped address is reported as the IPv4 flow it is on the wire.
    pub tuple: Tuple,
    pub state: FlowState,
    /// The socket's inode (0 for TIME_WAIT and SYN_RECV entries, which have no file).
    pub inode: u32,
    pub uid: u32,
    /// The kernel's socket cookie: names this socket (not a later one with the same
    /// tuple) for [`destroy`].
    pub cookie: u64,
    /// The device the socket is bound to (`SO_BINDTODEVICE`), 0 if none.
    pub bound_ifindex: u32,
}

// Netlink and sock_diag constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;
/// Request sockets are in this internal state; asking for it along with SYN_RECV makes
/// older kernels list them too (they are reported as SYN_RECV).
const TCP_NEW_SYN_RECV: u8 = 12;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Every TCP state that is a flow.
const TCP_FLOW_STATES: u32 = (1 << TCP_ESTABLISHED)
    | (1 << TCP_SYN_SENT)
    | (1 << TCP_SYN_RECV)
    | (1 << TCP_FIN_WAIT1)
    | (1 << TCP_FIN_WAIT2)
    | (1 << TCP_TIME_WAIT)
    | (1 << TCP_CLOSE_WAIT)
    | (1 << TCP_LAST_ACK)
    | (1 << TCP_CLOSING)
    | (1 << TCP_NEW_SYN_RECV);
/// A connected UDP socket is ESTABLISHED; an unconnected one is CLOSE.
const UDP_FLOW_STATES: u32 = 1 << TCP_ESTABLISHED;

/// Big enough for any dump datagram the kernel builds (it sizes them to the reader's
/// buffer, up to 32 KiB, plus headroom).
const RECV_BUF: usize = 64 * 1024;
/// No answer from the kernel in this long means something is badly wrong; never block
/// forever.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// A dump the kernel marks inconsistent is retried this many times.
const DUMP_ATTEMPTS: usize = 3;

static SEQ: AtomicU32 = AtomicU32::new(1);

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A `NETLINK_SOCK_DIAG` socket.
struct DiagSocket {
    fd: OwnedFd,
}

impl DiagSocket {
    fn open() -> Result<DiagSocket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(DiagSocket { fd })
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (family set below).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: msg and addr are valid for the stated lengths during the call.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if n as usize != msg.len() {
                return Err(Error::Io(io::Error::other("short netlink send")));
            }
            return Ok(());
        }
    }

    /// One datagram from the kernel into `buf`; returns its length.
    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        loop {
            // SAFETY: as in send.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut fromlen = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // MSG_TRUNC: return the datagram's real length, so a datagram larger than
            // the buffer is detected instead of silently cut.
            // SAFETY: buf, from and fromlen are valid for writes of the stated sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut fromlen,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(Error::Timeout(RECV_TIMEOUT));
                    }
                    _ => return Err(e.into()),
                }
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(Error::Truncated(n));
            }
            // Only the kernel (port 0) speaks for the kernel.
            if from.nl_pid != 0 {
                debug!(pid = from.nl_pid, "ignoring a datagram not from the kernel");
                continue;
            }
            return Ok(n);
        }
    }
}

/// The 48-byte `inet_diag_sockid`.
fn emit_sockid(
    out: &mut Vec<u8>,
    sport: u16,
    dport: u16,
    src: IpAddr,
    dst: IpAddr,
    ifindex: u32,
    cookie: u64,
) {
    fn addr16(a: IpAddr) -> [u8; 16] {
        let mut b = [0u8; 16];
        match a {
            IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => b = a.octets(),
        }
        b
    }
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.extend_from_slice(&addr16(src));
    out.extend_from_slice(&addr16(dst));
    out.extend_from_slice(&ifindex.to_ne_bytes());
    // Kernel order: cookie[0] is the low half, cookie[1] the high half.
    out.extend_from_slice(&(cookie as u32).to_ne_bytes());
    out.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
}

/// An `nlmsghdr` followed by an `inet_diag_req_v2`.
#[allow(clippy::too_many_arguments)]
fn build_request(
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    protocol: u8,
    states: u32,
    ext: u8,
    id: Option<(&Tuple, u32, u64)>,
) -> Vec<u8> {
    let total = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(protocol);
    m.push(ext); // idiag_ext: none for dumps, so replies stay small
    m.push(0);
    m.extend_from_slice(&states.to_ne_bytes());
    match id {
        Some((t, ifindex, cookie)) => emit_sockid(
            &mut m,
            t.local.port(),
            t.remote.port(),
            t.local.ip(),
            t.remote.ip(),
            ifindex,
            cookie,
        ),
        None => m.extend_from_slice(&[0u8; 48]),
    }
    debug_assert_eq!(m.len(), total);
    m
}

fn u16_ne(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or(Error::Malformed("field out of bounds"))
}

fn u16_be(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or(Error::Malformed("field out of bounds"))
}

fn u32_ne(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(Error::Malformed("field out of bounds"))
}

fn bytes16(b: &[u8], at: usize) -> Result<[u8; 16]> {
    b.get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::Malformed("field out of bounds"))
}

/// An address as the wire sees it: IPv4-mapped IPv6 is IPv4.
fn normalise(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Decode one `inet_diag_msg` payload into a flow, or `None` for a socket that is not
/// one (wrong state, unconnected, loopback).
fn parse_inet_diag_msg(p: &[u8], protocol: Protocol) -> Result<Option<SocketFlow>> {
    if p.len() < INET_DIAG_MSG_LEN {
        return Err(Error::Malformed("inet_diag_msg shorter than 72 bytes"));
    }
    let family = p[0];
    let state = p[1];
    // inet_diag_sockid starts at 4.
    let sport = u16_be(p, 4)?;
    let dport = u16_be(p, 6)?;
    let src = bytes16(p, 8)?;
    let dst = bytes16(p, 24)?;
    let ifindex = u32_ne(p, 40)?;
    let cookie = u64::from(u32_ne(p, 44)?) | (u64::from(u32_ne(p, 48)?) << 32);
    // expires 52, rqueue 56, wqueue 60, uid 64, inode 68.
    let uid = u32_ne(p, 64)?;
    let inode = u32_ne(p, 68)?;
    let (local, remote) = match family {
        AF_INET => {
            let s: [u8; 4] = src[..4].try_into().map_err(|_| Error::Malformed("address"))?;
            let d: [u8; 4] = dst[..4].try_into().map_err(|_| Error::Malformed("address"))?;
            (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))
        }
        AF_INET6 => (
            normalise(IpAddr::V6(Ipv6Addr::from(src))),
            normalise(IpAddr::V6(Ipv6Addr::from(dst))),
        ),
        _ => return Err(Error::Malformed("address family is neither AF_INET nor AF_INET6")),
    };
    let Some(state) = FlowState::from_kernel(state) else {
        debug!(state, "skipping a socket in a state that is not a flow");
        return Ok(None);
    };
    if dport == 0 || remote.is_unspecified() || local.is_unspecified() {
        // Unconnected (UDP), or not yet bound to a source.
        return Ok(None);
    }
    if local.is_loopback() || remote.is_loopback() {
        return Ok(None);
    }
    if local.is_ipv4() != remote.is_ipv4() {
        // One end mapped and the other not: no packet can carry that.
        return Err(Error::Malformed("socket ends of different families"));
    }
    Ok(Some(SocketFlow {
        tuple: Tuple::new(
            protocol,
            SocketAddr::new(local, sport),
            SocketAddr::new(remote, dport),
        ),
        state,
        inode,
        uid,
        cookie,
        bound_ifindex: ifindex,
    }))
}

/// What one reply datagram said.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams follow.
    More,
    /// NLMSG_DONE (or, for a request with NLM_F_ACK, its acknowledgement) was seen.
    Done,
}

/// Parse one reply datagram of a dump with sequence number `seq`, appending the flows it
/// lists. Public (hidden) only so tests can feed it arbitrary bytes: every malformed
/// input must be an error, never a panic.
#[doc(hidden)]
pub fn parse_datagram(
    buf: &[u8],
    seq: u32,
    protocol: Protocol,
    out: &mut Vec<SocketFlow>,
) -> Result<Progress> {
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(Error::Malformed("trailing bytes shorter than a netlink header"));
        }
        let len = u32_ne(rest, 0)? as usize;
        let msg_type = u16_ne(rest, 4)?;
        let flags = u16_ne(rest, 6)?;
        let msg_seq = u32_ne(rest, 8)?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Error::Malformed("netlink message length out of bounds"));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        // Messages are padded to 4 bytes; the last one may not be.
        let advance = len.saturating_add(3) & !3;
        rest = rest.get(advance..).unwrap_or(&[]);
        if msg_seq != seq {
            debug!(msg_seq, seq, "skipping a reply to another request");
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(Error::Interrupted);
        }
        match msg_type {
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // A dump's DONE carries its final status (negative errno or 0).
                if payload.len() >= 4 {
                    let status = u32_ne(payload, 0)? as i32;
                    if status < 0 {
                        return Err(Error::Kernel(status.saturating_neg()));
                    }
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                let code = u32_ne(payload, 0)? as i32;
                if code == 0 {
                    return Ok(Progress::Done); // an acknowledgement
                }
                return Err(Error::Kernel(code.saturating_neg()));
            }
            NLMSG_OVERRUN => return Err(Error::Overrun),
            SOCK_DIAG_BY_FAMILY => {
                if let Some(f) = parse_inet_diag_msg(payload, protocol)? {
                    out.push(f);
                }
            }
            _ => return Err(Error::Malformed("unexpected netlink message type")),
        }
    }
    Ok(Progress::More)
}

fn dump_one(
    sock: &DiagSocket,
    buf: &mut [u8],
    family: u8,
    protocol: Protocol,
    out: &mut Vec<SocketFlow>,
) -> Result<()> {
    let states = match protocol {
        Protocol::Tcp => TCP_FLOW_STATES,
        Protocol::Udp => UDP_FLOW_STATES,
    };
    for attempt in 1..=DUMP_ATTEMPTS {
        let seq = next_seq();
        let req = build_request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            protocol.ip_number(),
            states,
            0,
            None,
        );
        sock.send(&req)?;
        let mut got = Vec::new();
        let result = loop {
            let n = sock.recv(buf)?;
            match parse_datagram(&buf[..n], seq, protocol, &mut got) {
                Ok(Progress::More) => {}
                Ok(Progress::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                out.extend(got);
                return Ok(());
            }
            Err(Error::Interrupted) if attempt < DUMP_ATTEMPTS => {
                // The rest of the interrupted dump is still queued on the socket; read
                // it away so the next attempt starts clean (seq numbers would also
                // tell the two apart).
                debug!(attempt, "sock_diag dump interrupted, retrying");
                drain_until_done(sock, buf, seq);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Interrupted)
}

/// Read and discard the remainder of a dump (best effort).
fn drain_until_done(sock: &DiagSocket, buf: &mut [u8], seq: u32) {
    while let Ok(n) = sock.recv(buf) {
        let mut rest = &buf[..n];
        let mut done = false;
        while rest.len() >= NLMSG_HDRLEN {
            let (Ok(len), Ok(t), Ok(s)) = (u32_ne(rest, 0), u16_ne(rest, 4), u32_ne(rest, 8)) else {
                break;
            };
            let len = len as usize;
            if s == seq && (t == NLMSG_DONE || t == NLMSG_ERROR) {
                done = true;
            }
            if len < NLMSG_HDRLEN || len > rest.len() {
                break;
            }
            rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        }
        if done {
            return;
        }
    }
}

/// Every flow of this network namespace: TCP sockets in any state but LISTEN and CLOSE,
/// and connected UDP sockets, IPv4 and IPv6; sockets with a loopback end are left out.
/// Blocks (milliseconds); see [`dump_flows_async`].
pub fn dump_flows() -> Result<Vec<SocketFlow>> {
    let sock = DiagSocket::open()?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for family in [AF_INET, AF_INET6] {
            dump_one(&sock, &mut buf, family, protocol, &mut out)?;
        }
    }
    Ok(out)
}

/// [`dump_flows`] on tokio's blocking pool.
pub async fn dump_flows_async() -> Result<Vec<SocketFlow>> {
    match tokio::task::spawn_blocking(dump_flows).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Io(io::Error::other("blocking task cancelled"))),
    }
}

/// Abort the socket behind `flow` (SOCK_DESTROY, like `ss -K`): its owner sees
/// ECONNABORTED, and a TCP socket sends a RST. The cookie makes sure a later socket
/// that reuses the tuple is not hit. Needs CAP_NET_ADMIN.
pub fn destroy(flow: &SocketFlow) -> Result<()> {
    let t = &flow.tuple;
    // The tuple is normalised; an IPv6 socket carrying IPv4 is found by its IPv4 tuple
    // (the kernel's lookup tables key mapped sockets by their IPv4 addresses).
    let family = if t.is_ipv4() { AF_INET } else { AF_INET6 };
    let seq = next_seq();
    let req = build_request(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family,
        t.protocol.ip_number(),
        u32::MAX,
        0,
        Some((t, flow.bound_ifindex, flow.cookie)),
    );
    let sock = DiagSocket::open()?;
    sock.send(&req)?;
    let mut buf = vec![0u8; 8192];
    let mut sink = Vec::new();
    loop {
        let n = sock.recv(&mut buf)?;
        if parse_datagram(&buf[..n], seq, t.protocol, &mut sink)? == Progress::Done {
            debug!(tuple = %t, "socket destroyed");
            return Ok(());
        }
    }
}

/// `INET_DIAG_INFO` (linux/inet_diag.h): the attribute carrying `struct tcp_info`, and
/// its bit in `idiag_ext`.
const INET_DIAG_INFO: u16 = 2;
/// `inet_diag_sockid`'s "no cookie" (`INET_DIAG_NOCOOKIE`, both halves all ones): look
/// the socket up by its tuple alone.
const NO_COOKIE: u64 = u64::MAX;
/// The part of `struct tcp_info` read here ends with `tcpi_total_retrans` (offset 100).
const TCP_INFO_MIN: usize = 104;
/// `TCPI_OPT_TIMESTAMPS` in `tcpi_options`.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;

/// What the kernel says of one TCP socket's sender: the fields of `struct tcp_info`
/// (linux/tcp.h) roam reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSenderInfo {
    /// `tcpi_state` (`TCP_ESTABLISHED` is 1).
    pub state: u8,
    /// `tcpi_ca_state`: 0 open, 1 disorder, 2 CWR, 3 recovery, 4 loss.
    pub ca_state: u8,
    /// Retransmission timeouts in a row (`icsk_backoff`).
    pub backoff: u8,
    /// `TCPI_OPT_*` bits.
    pub options: u8,
    /// The sender's current maximum segment size (`mss_cache`).
    pub snd_mss: u32,
    /// Segments sent and not acknowledged (`packets_out`).
    pub unacked: u32,
    /// The path MTU the socket last synchronised its MSS to (`icsk_pmtu_cookie`).
    pub pmtu: u32,
    pub total_retrans: u32,
}

/// Decodes one reply to a single-socket request: `Ok(None)` when the kernel has no such
/// socket (ENOENT).
fn parse_tcp_info_reply(buf: &[u8], seq: u32) -> Result<Option<TcpSenderInfo>> {
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(Error::Malformed("trailing bytes shorter than a netlink header"));
        }
        let len = u32_ne(rest, 0)? as usize;
        let msg_type = u16_ne(rest, 4)?;
        let msg_seq = u32_ne(rest, 8)?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Error::Malformed("netlink message length out of bounds"));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = rest.get(len.saturating_add(3) & !3..).unwrap_or(&[]);
        if msg_seq != seq {
            continue;
        }
        match msg_type {
            NLMSG_ERROR => {
                let code = u32_ne(payload, 0)? as i32;
                return match code.saturating_neg() {
                    libc::ENOENT => Ok(None),
                    e => Err(Error::Kernel(e)),
                };
            }
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < INET_DIAG_MSG_LEN {
                    return Err(Error::Malformed("inet_diag_msg shorter than 72 bytes"));
                }
                let mut attrs = &payload[INET_DIAG_MSG_LEN..];
                while attrs.len() >= 4 {
                    let alen = usize::from(u16_ne(attrs, 0)?);
                    let atype = u16_ne(attrs, 2)?;
                    if alen < 4 || alen > attrs.len() {
                        return Err(Error::Malformed("attribute length out of bounds"));
                    }
                    if atype == INET_DIAG_INFO {
                        let i = &attrs[4..alen];
                        if i.len() < TCP_INFO_MIN {
                            return Err(Error::Malformed("tcp_info shorter than 104 bytes"));
                        }
                        return Ok(Some(TcpSenderInfo {
                            state: i[0],
                            ca_state: i[1],
                            backoff: i[4],
                            options: i[5],
                            snd_mss: u32_ne(i, 16)?,
                            unacked: u32_ne(i, 24)?,
                            pmtu: u32_ne(i, 60)?,
                            total_retrans: u32_ne(i, 100)?,
                        }));
                    }
                    attrs = attrs.get(alen.saturating_add(3) & !3..).unwrap_or(&[]);
                }
                return Err(Error::Malformed("no tcp_info in the reply"));
            }
            NLMSG_NOOP => {}
            NLMSG_DONE => return Ok(None),
            _ => return Err(Error::Malformed("unexpected netlink message type")),
        }
    }
    Err(Error::Malformed("no reply to the request"))
}

/// A sock_diag socket kept open to ask about one TCP socket at a time. It belongs to
/// the network namespace it was opened in, whichever thread uses it later.
pub struct TcpInfoQuery {
    sock: DiagSocket,
    buf: Vec<u8>,
}

impl std::fmt::Debug for TcpInfoQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpInfoQuery").finish_non_exhaustive()
    }
}

impl TcpInfoQuery {
    /// Opens it in the calling thread's network namespace.
    pub fn open() -> Result<TcpInfoQuery> {
        Ok(TcpInfoQuery {
            sock: DiagSocket::open()?,
            buf: vec![0u8; 8192],
        })
    }

    /// The sender state of the TCP socket whose tuple (this host's view) is `tuple`, or
    /// `None` if there is none. An IPv6 socket carrying IPv4 is found by its IPv4 tuple.
    pub fn get(&mut self, tuple: &Tuple) -> Result<Option<TcpSenderInfo>> {
        if tuple.protocol != Protocol::Tcp {
            return Ok(None);
        }
        let t = Tuple::new(
            Protocol::Tcp,
            SocketAddr::new(normalise(tuple.local.ip()), tuple.local.port()),
            SocketAddr::new(normalise(tuple.remote.ip()), tuple.remote.port()),
        );
        let family = if t.is_ipv4() { AF_INET } else { AF_INET6 };
        let seq = next_seq();
        let req = build_request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST,
            seq,
            family,
            libc::IPPROTO_TCP as u8,
            u32::MAX,
            1 << (INET_DIAG_INFO - 1),
            Some((&t, 0, NO_COOKIE)),
        );
        self.sock.send(&req)?;
        // Bounded: every datagram takes at most RECV_TIMEOUT, and a reply to another
        // request (none is outstanding on this socket) is skipped a few times at most.
        for _ in 0..4 {
            let n = self.sock.recv(&mut self.buf)?;
            match parse_tcp_info_reply(&self.buf[..n], seq) {
                Err(Error::Malformed("no reply to the request")) => continue,
                r => return r,
            }
        }
        Err(Error::Malformed("no reply to the request"))
    }
}

#[cfg(test)]
mod tcp_info_tests {
    use super::*;

    fn nlmsg(msg_type: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&msg_type.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn reply(info_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        let mut info = vec![0u8; info_len];
        if info_len >= TCP_INFO_MIN {
            info[0] = 1;
            info[4] = 2;
            info[5] = TCPI_OPT_TIMESTAMPS;
            info[16..20].copy_from_slice(&1448u32.to_ne_bytes());
            info[24..28].copy_from_slice(&91u32.to_ne_bytes());
            info[60..64].copy_from_slice(&1500u32.to_ne_bytes());
            info[100..104].copy_from_slice(&7u32.to_ne_bytes());
        }
        // Another attribute first, which is skipped.
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&[0u8; 4]);
        p.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        p.extend_from_slice(&info);
        nlmsg(SOCK_DIAG_BY_FAMILY, 9, &p)
    }

    #[test]
    fn a_reply_gives_the_sender_fields_and_enoent_gives_none() {
        assert_eq!(
            parse_tcp_info_reply(&reply(232), 9).unwrap(),
            Some(TcpSenderInfo {
                state: 1,
                ca_state: 0,
                backoff: 2,
                options: TCPI_OPT_TIMESTAMPS,
                snd_mss: 1448,
                unacked: 91,
                pmtu: 1500,
                total_retrans: 7,
            })
        );
        let enoent = nlmsg(NLMSG_ERROR, 9, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_tcp_info_reply(&enoent, 9).unwrap(), None);
        let eperm = nlmsg(NLMSG_ERROR, 9, &(-libc::EPERM).to_ne_bytes());
        assert!(matches!(
            parse_tcp_info_reply(&eperm, 9),
            Err(Error::Kernel(libc::EPERM))
        ));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse_tcp_info_reply(&reply(40), 9).is_err());
        let full = reply(232);
        for cut in 0..full.len() {
            let _ = parse_tcp_info_reply(&full[..cut], 9);
        }
        // A reply to another request is not this one's.
        assert!(parse_tcp_info_reply(&full, 10).is_err());
    }
}
