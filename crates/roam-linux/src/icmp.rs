//! ICMP errors about translated flows, for the nftables data plane ([`crate::nft`]).
//!
//! # Why userspace
//!
//! An ICMP or ICMPv6 error (RFC 792, RFC 4443) quotes the packet that caused it. For a
//! moved flow that quote carries the flow's *current* tuple (it is what was on the wire),
//! and the local stack matches an error to its socket by the quote alone: untranslated,
//! a "fragmentation needed"/"packet too big" (Path MTU Discovery, RFC 1191/RFC 8201) or a
//! "port unreachable" about a moved flow reaches no socket. The rewrite needs the quoted
//! addresses and ports *and* the checksums over them: ICMPv4's covers the whole message
//! (the quote included), ICMPv6's the pseudo-header as well. nftables can write the quoted
//! fields (`@th,160,32 set ...`) but has no arithmetic to fix a checksum over data it does
//! not know (its checksum updates cover the header being written, not the ICMP message
//! around a quote), and this kernel has no `queue` expression (`nft_queue` is not built:
//! `queue num N` fails with ENOENT) to hand the packet to userspace and take it back.
//!
//! # How
//!
//! 1. The table's chains match ICMP errors whose quoted source or destination address is
//!    one of a translated flow's (sets `icq4`/`icq6`, keyed by the raw quoted address),
//!    `log` them to this module's netlink group (nfnetlink_log, whole packet copied), and
//!    `drop` them. The prefix (`roam-in`/`roam-eg`) says which way the error was going.
//! 2. [`IcmpRelay`]'s thread reads them, translates each with roam-core's rewriter (the
//!    same code as the simulator's and the TUN plane's: quote, outer addresses,
//!    checksums, [`translate`]), and injects the result through a raw socket marked with
//!    [`NUDGE_MARK`], which both chains let through untouched:
//!    - an error that arrived (ingress) is addressed to a local address: the kernel routes
//!      it through loopback into its own ICMP input, which finds the socket;
//!    - an error the stack sent (egress, e.g. "port unreachable" about a datagram of a
//!      moved UDP flow) leaves by the route to its (now current) destination.
//!
//! An error whose quote matches no entry after all (the sets are by address, the table
//! by tuple) is injected unchanged. ICMP errors are rare (routers rate-limit them, RFC
//! 1812 §4.3.2.8, RFC 4443 §2.4(f)), so the round trip through userspace costs nothing
//! that matters, and only errors about translated addresses take it.
//!
//! # Retransmission kicks (the peer's side of a move)
//!
//! When the peer of a flow moves, this host's sender has usually lost its whole window at
//! the peer's old address. Its tail-loss probe fires into the void while the move is
//! confirmed, and then it waits for its retransmission timeout (200 ms at least): one
//! ACK from the peer does not help, because a duplicate ACK without SACK blocks starts
//! nothing on a SACK connection (RACK needs SACKed data; the three-duplicate rule is for
//! connections without SACK), and the peer's stack sends one elicited ACK per 500 ms.
//!
//! So once the peer's new address is proven ([`DataPlaneCommand::Resend`](roam_core::DataPlaneCommand::Resend)),
//! the data plane makes this host's own stack retransmit at once, through the one
//! documented reaction of Linux TCP that does that: Path MTU Discovery. A "fragmentation
//! needed" (RFC 1191) or "packet too big" (RFC 8201) for an established socket, quoting a
//! sequence number within `[SND.UNA, SND.NXT]` and an MTU below the socket's, makes the
//! kernel lower the socket's MSS and call `tcp_simple_retransmit()`
//! (net/ipv4/tcp_ipv4.c `tcp_v4_err`/`tcp_v4_mtu_reduced`, net/ipv6/tcp_ipv6.c): every
//! outstanding segment longer than the new MSS is marked lost and retransmitted at once,
//! as far as the congestion window allows (the window is not reduced: nothing more is in
//! flight than before).
//!
//! 1. [`crate::nft`] arms a one-shot trigger for the flow: an element in the set
//!    `kick4`/`kick6` under the original tuple, with a timeout. The flow's egress chain
//!    logs its next packet (prefix `roam-kick`, headers only) to this relay's group and
//!    deletes the element from the packet path. The data plane's nudge of the same
//!    batch makes the stack send that packet at once (a challenge ACK, whose sequence
//!    number is `SND.NXT`); any other segment of the flow would do as well.
//! 2. The relay asks the kernel for the socket's sender state (sock_diag `tcp_info`:
//!    [`TcpSenderInfo`]), and if it has unacknowledged segments, injects into its own
//!    stack an ICMP error quoting the logged packet (original tuple, the socket's own
//!    sequence number) with an MTU one byte under what the socket's MSS was computed
//!    from ([`kick_mtu`]), never under the family's minimum (552 for IPv4, the kernel's
//!    `route/min_pmtu`; 1280 for IPv6, RFC 8200 §5).
//!
//! The cost: the socket's MSS is one byte smaller, and so is the path MTU of every
//! socket to the peer's *original* address, until the kernel's exception expires
//! (`net.ipv4.route.mtu_expires`, `net.ipv6.route.mtu_expires`: 600 s) and the next
//! send picks the route's MTU up again. Each further kick within that time takes one
//! more byte. Linux offers no per-destination removal of an IPv4 exception (only `ip
//! route flush cache`, which forgets every host's learnt path MTUs). Segments not longer
//! than the new MSS (a short tail written by the application) are not marked lost by
//! the kick; RACK marks them once the retransmissions sent after them are acknowledged.
//! A socket with nothing unacknowledged is left alone (no cost). A sender whose segments
//! are not full-sized at all (application-limited) gains nothing.
//!
//! # Limits
//!
//! While no relay listens (roamd stopped with its table kept), matching errors are
//! dropped: for moved flows that is what would happen to them untranslated anyway (no
//! socket has their quoted tuple), but errors quoting a retained original address of a
//! flow that never moved are lost too until roamd is back.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::Socket as NetlinkSocket;
use netlink_sys::constants::NETLINK_NETFILTER;
use roam_core::translate::{Direction, Protocol, TranslationTable, Tuple, Verdict, translate};
use serde::Serialize;
use socket2::SockAddr;
use thiserror::Error;

use crate::nudge::{NUDGE_MARK, RawSockets, in_netns};
use crate::sockdiag::{self, TCPI_OPT_TIMESTAMPS, TcpInfoQuery, TcpSenderInfo};

/// The nfnetlink_log group the table logs ICMP errors to unless configured otherwise
/// (ASCII "ro"). Groups are per network namespace.
pub const DEFAULT_ICMP_GROUP: u16 = 0x726f;

/// The log prefix of errors that arrived (ingress) and of errors the stack sent (egress).
pub(crate) const PREFIX_INGRESS: &str = "roam-in";
pub(crate) const PREFIX_EGRESS: &str = "roam-eg";
/// The log prefix of a flow's first packet after its retransmission kick was armed.
pub(crate) const PREFIX_KICK: &str = "roam-kick";

/// The smallest path MTU a kick claims: Linux locks IPv4 path MTUs under
/// `net.ipv4.route.min_pmtu` (552 by default) to that value, and ignores an ICMPv6
/// "packet too big" under 1280 (RFC 8200 §5).
pub const KICK_MIN_MTU_V4: u32 = 552;
pub const KICK_MIN_MTU_V6: u32 = 1280;

/// How long the relay's thread waits for a packet before it looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IcmpError {
    #[error("opening the nfnetlink_log socket: {0}")]
    Socket(#[source] io::Error),
    #[error("binding nfnetlink_log group {group}: {reason}")]
    Bind { group: u16, reason: String },
    #[error("opening the raw sockets that inject translated ICMP errors (needs CAP_NET_RAW): {0}")]
    Raw(#[source] io::Error),
    #[error("entering network namespace {path}: {source}", path = .path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the ICMP relay thread: {0}")]
    Thread(#[source] io::Error),
    #[error("opening the sock_diag socket retransmission kicks read sockets with: {0}")]
    Diag(#[source] sockdiag::Error),
}

/// What the relay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IcmpCounters {
    /// Errors rewritten and injected.
    pub translated: u64,
    /// Errors that matched no entry after all, injected unchanged.
    pub unchanged: u64,
    /// Errors the rewriter refused (truncated or malformed quote): dropped.
    pub malformed: u64,
    /// Injections the kernel refused (no route, buffer full).
    pub inject_errors: u64,
    /// Log messages that were not packets of ours, and receive errors (ENOBUFS: the
    /// kernel dropped log messages because the socket buffer was full).
    pub netlink_errors: u64,
    /// Retransmission kicks injected: the socket of a flow whose peer moved was told its
    /// path MTU shrank, and retransmitted what it had outstanding (see the module docs).
    pub retransmit_kicks: u64,
    /// Kicks not sent because the socket had nothing unacknowledged (no cost then).
    pub kicks_idle: u64,
    /// Kicks that could not be sent: no such socket any more, its path MTU already at
    /// the family's minimum, a trigger packet that was not TCP, or sock_diag or the
    /// injection failed.
    pub kick_errors: u64,
}

#[derive(Default)]
struct AtomicCounters {
    translated: AtomicU64,
    unchanged: AtomicU64,
    malformed: AtomicU64,
    inject_errors: AtomicU64,
    netlink_errors: AtomicU64,
    retransmit_kicks: AtomicU64,
    kicks_idle: AtomicU64,
    kick_errors: AtomicU64,
}

impl AtomicCounters {
    fn snapshot(&self) -> IcmpCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IcmpCounters {
            translated: g(&self.translated),
            unchanged: g(&self.unchanged),
            malformed: g(&self.malformed),
            inject_errors: g(&self.inject_errors),
            netlink_errors: g(&self.netlink_errors),
            retransmit_kicks: g(&self.retransmit_kicks),
            kicks_idle: g(&self.kicks_idle),
            kick_errors: g(&self.kick_errors),
        }
    }
}

struct Shared {
    table: RwLock<Arc<TranslationTable>>,
    counters: AtomicCounters,
    stop: AtomicBool,
}

/// The thread that translates the ICMP errors the nftables table logs. See the module
/// documentation. Stopped (and joined) when dropped.
pub struct IcmpRelay {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    group: u16,
}

impl std::fmt::Debug for IcmpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcmpRelay")
            .field("group", &self.group)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

/// What to do with one logged error.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Inject these bytes (translated, or unchanged when no entry matched).
    Inject { packet: Vec<u8>, translated: bool },
    /// Drop it: the rewriter refused it.
    Malformed(&'static str),
}

/// Translates one logged ICMP error travelling `dir` with `table`. Pure: the relay's
/// thread and the tests use it.
pub fn relay_one(table: &TranslationTable, dir: Direction, packet: &[u8]) -> Relayed {
    let mut packet = packet.to_vec();
    match translate(table, dir, &mut packet) {
        Ok(Verdict::Translated) => Relayed::Inject {
            packet,
            translated: true,
        },
        Ok(_) => Relayed::Inject {
            packet,
            translated: false,
        },
        Err(e) => Relayed::Malformed(e.reason()),
    }
}

impl IcmpRelay {
    /// Binds nfnetlink_log group `group` and opens the injecting raw sockets in the
    /// namespace at `netns` (the caller's with `None`), then starts the thread.
    pub fn start(netns: Option<&Path>, group: u16, table: TranslationTable) -> Result<IcmpRelay, IcmpError> {
        let open = || -> Result<(NetlinkSocket, RawSockets, TcpInfoQuery), IcmpError> {
            let nl = bind_group(group)?;
            let raw = RawSockets::open(Some(NUDGE_MARK), "relayed ICMP errors").map_err(IcmpError::Raw)?;
            let diag = TcpInfoQuery::open().map_err(IcmpError::Diag)?;
            Ok((nl, raw, diag))
        };
        let (nl, raw, mut diag) = match netns {
            None => open()?,
            Some(path) => in_netns(path, open).map_err(|source| IcmpError::Netns {
                path: path.to_owned(),
                source,
            })??,
        };
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(table)),
            counters: AtomicCounters::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("roam-icmp".into())
            .spawn(move || run(&nl, &raw, &mut diag, &s))
            .map_err(IcmpError::Thread)?;
        tracing::debug!(group, netns = ?netns, "ICMP error relay started");
        Ok(IcmpRelay {
            shared,
            thread: Some(thread),
            group,
        })
    }

    /// The translation table errors are translated with from now on (the data plane's
    /// mirror, once the kernel accepted a change).
    pub fn set_table(&self, table: Arc<TranslationTable>) {
        *self.shared.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    pub fn counters(&self) -> IcmpCounters {
        self.shared.counters.snapshot()
    }

    pub fn group(&self) -> u16 {
        self.group
    }
}

impl Drop for IcmpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A netlink socket bound to nfnetlink_log group `group`, copying whole packets, with a
/// receive timeout of [`POLL`].
fn bind_group(group: u16) -> Result<NetlinkSocket, IcmpError> {
    let mut nl = NetlinkSocket::new(NETLINK_NETFILTER).map_err(IcmpError::Socket)?;
    nl.bind_auto().map_err(IcmpError::Socket)?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            nl.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(IcmpError::Socket(io::Error::last_os_error()));
    }
    let request = |nlas: Vec<ConfigNla>| -> Result<(), IcmpError> {
        let msg = config_request(NetfilterProtoFamily::Unspec, group, nlas);
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        nl.send(&buf, 0).map_err(IcmpError::Socket)?;
        let mut reply = vec![0u8; 4096];
        let n = nl.recv(&mut &mut reply[..], 0).map_err(IcmpError::Socket)?;
        match NetlinkMessage::<NetfilterMessage>::deserialize(&reply[..n]) {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::Error(e),
                ..
            }) if e.code.is_some() => Err(IcmpError::Bind {
                group,
                reason: e.to_io().to_string(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(IcmpError::Bind {
                group,
                reason: e.to_string(),
            }),
        }
    };
    // A group has one listener per namespace: EBUSY if another process holds it.
    request(vec![ConfigCmd::Bind.into()])?;
    // Every packet at once: by default the kernel batches up to 100 packets or 1 s
    // (NFULNL_QTHRESH_DEFAULT, NFULNL_TIMEOUT_DEFAULT), which would hold an error back.
    request(vec![ConfigMode::PACKET_MAX.into(), ConfigNla::QThresh(1)])?;
    Ok(nl)
}

fn run(nl: &NetlinkSocket, raw: &RawSockets, diag: &mut TcpInfoQuery, shared: &Shared) {
    let mut buf = vec![0u8; 256 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match nl.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared.counters.netlink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "ICMP relay: receiving from nfnetlink_log");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let mut at = 0;
        while at < n {
            let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(&buf[at..n]) {
                Ok(m) => m,
                Err(e) => {
                    shared.counters.netlink_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "ICMP relay: undecodable netlink message");
                    break;
                }
            };
            let len = msg.header.length as usize;
            handle(&msg, raw, diag, shared);
            if len == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned in a datagram.
            at += (len + 3) & !3;
        }
    }
}

/// What a logged packet is, by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logged {
    Error(Direction),
    Kick,
}

fn handle(
    msg: &NetlinkMessage<NetfilterMessage>,
    raw: &RawSockets,
    diag: &mut TcpInfoQuery,
    shared: &Shared,
) {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
        ..
    }) = &msg.payload
    else {
        return;
    };
    let mut what = None;
    let mut payload = None;
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => {
                what = match p.to_bytes() {
                    b if b == PREFIX_INGRESS.as_bytes() => Some(Logged::Error(Direction::Ingress)),
                    b if b == PREFIX_EGRESS.as_bytes() => Some(Logged::Error(Direction::Egress)),
                    b if b == PREFIX_KICK.as_bytes() => Some(Logged::Kick),
                    _ => None,
                }
            }
            PacketNla::Payload(p) => payload = Some(p),
            _ => {}
        }
    }
    let (Some(what), Some(payload)) = (what, payload) else {
        shared.counters.netlink_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let dir = match what {
        Logged::Error(dir) => dir,
        Logged::Kick => {
            kick(payload, raw, diag, &shared.counters);
            return;
        }
    };
    let table = shared.table.read().unwrap_or_else(|p| p.into_inner()).clone();
    let c = &shared.counters;
    match relay_one(&table, dir, payload) {
        Relayed::Malformed(reason) => {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason, ?dir, "ICMP relay: dropped");
        }
        Relayed::Inject { packet, translated } => {
            if translated {
                c.translated.fetch_add(1, Ordering::Relaxed);
            } else {
                c.unchanged.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = inject(raw, &packet) {
                c.inject_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, ?dir, "ICMP relay: injection refused");
            } else {
                tracing::trace!(?dir, translated, "ICMP error relayed");
            }
        }
    }
}

/// A TCP packet as this host sent it (the trigger of a kick): the flow's original tuple
/// from this host's point of view, the segment's sequence number, and how many leading
/// bytes of it (IP header and TCP header) an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub flow: Tuple,
    pub seq: u32,
    pub quote_len: usize,
}

impl Trigger {
    /// Reads the headers of a logged packet (possibly cut short by the log's snap
    /// length: only the headers matter). IPv6 extension headers are refused: TCP
    /// segments carry none in practice, and the kernel would skip them anyway.
    pub fn parse(packet: &[u8]) -> Result<Trigger, &'static str> {
        let version = packet.first().ok_or("empty packet")? >> 4;
        let (src, dst, ip_len): (IpAddr, IpAddr, usize) = match version {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                if ihl < 20 || packet.len() < ihl {
                    return Err("truncated IPv4 header");
                }
                if packet[9] != 6 {
                    return Err("not TCP");
                }
                let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&packet[at..at + 4]).expect("4 bytes"));
                (a(12), a(16), ihl)
            }
            6 => {
                if packet.len() < 40 {
                    return Err("truncated IPv6 header");
                }
                if packet[6] != 6 {
                    return Err("not TCP (or behind IPv6 extension headers)");
                }
                let a =
                    |at: usize| IpAddr::from(<[u8; 16]>::try_from(&packet[at..at + 16]).expect("16 bytes"));
                (a(8), a(24), 40)
            }
            _ => return Err("not IP"),
        };
        // Ports and sequence number: what the kernel reads of a quote (RFC 792 and RFC
        // 4443 guarantee the first 8 bytes of the transport header).
        let tcp = packet.get(ip_len..ip_len + 8).ok_or("truncated TCP header")?;
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let tcp_len = packet
            .get(ip_len + 12)
            .map_or(8, |off| usize::from(off >> 4) * 4)
            .max(8);
        Ok(Trigger {
            flow: Tuple::new(
                Protocol::Tcp,
                SocketAddr::new(src, sport),
                SocketAddr::new(dst, dport),
            ),
            seq,
            quote_len: (ip_len + tcp_len).min(packet.len()),
        })
    }
}

/// Why no kick was sent for a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKick {
    /// Nothing unacknowledged: nothing to retransmit.
    Idle,
    /// The MTU a kick would claim is under the family's minimum ([`KICK_MIN_MTU_V4`],
    /// [`KICK_MIN_MTU_V6`]).
    AtMinimum { mtu: u32 },
}

/// The path MTU a kick claims for a socket in state `info`: one byte under the MTU its
/// current MSS corresponds to, so that every full-sized segment it has outstanding is
/// longer than the new MSS. That is `pmtu - 1` unless the MSS was clamped lower (by the
/// peer's MSS option), where a `pmtu - 1` would not change the MSS and retransmit
/// nothing. IP options and IPv6 extension headers the socket adds would only lower the
/// resulting MSS further.
pub fn kick_mtu(info: &TcpSenderInfo, v6: bool) -> Result<u32, NoKick> {
    if info.unacked == 0 {
        return Err(NoKick::Idle);
    }
    let ip = if v6 { 40 } else { 20 };
    let options = if info.options & TCPI_OPT_TIMESTAMPS != 0 {
        12
    } else {
        0
    };
    let from_mss = info.snd_mss + ip + 20 + options;
    let current = if info.pmtu == 0 {
        from_mss
    } else {
        info.pmtu.min(from_mss)
    };
    let mtu = current.saturating_sub(1);
    let min = if v6 { KICK_MIN_MTU_V6 } else { KICK_MIN_MTU_V4 };
    if mtu < min {
        return Err(NoKick::AtMinimum { mtu });
    }
    Ok(mtu)
}

/// The ICMP error a kick injects: "fragmentation needed" (RFC 1191) or "packet too big"
/// (RFC 8201) with `mtu`, from the flow's remote end to its local end (as a router on
/// the path to it would send), quoting the trigger's headers. Checksums by etherparse.
pub fn kick_error(trigger: &Trigger, packet: &[u8], mtu: u32) -> Result<Vec<u8>, &'static str> {
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4};
    let quote = packet
        .get(..trigger.quote_len)
        .ok_or("quote longer than the packet")?;
    let mut out = Vec::with_capacity(48 + quote.len());
    match (trigger.flow.remote.ip(), trigger.flow.local.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let next_hop_mtu = u16::try_from(mtu).map_err(|_| "MTU over 65535")?;
            PacketBuilder::ipv4(from.octets(), to.octets(), 64)
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
                ))
                .write(&mut out, quote)
                .map_err(|_| "building the ICMP error")?;
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            PacketBuilder::ipv6(from.octets(), to.octets(), 64)
                .icmpv6(Icmpv6Type::PacketTooBig { mtu })
                .write(&mut out, quote)
                .map_err(|_| "building the ICMPv6 error")?;
        }
        _ => return Err("mixed families"),
    }
    Ok(out)
}

/// The relay's part of a kick: the logged `packet` is the flow's first segment since
/// the kick was armed.
fn kick(packet: &[u8], raw: &RawSockets, diag: &mut TcpInfoQuery, c: &AtomicCounters) {
    let trigger = match Trigger::parse(packet) {
        Ok(t) => t,
        Err(reason) => {
            c.kick_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason, "retransmission kick: unreadable trigger");
            return;
        }
    };
    let flow = trigger.flow;
    let info = match diag.get(&flow) {
        Ok(Some(info)) => info,
        Ok(None) => {
            c.kick_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%flow, "retransmission kick: no such socket");
            return;
        }
        Err(e) => {
            c.kick_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%flow, error = %e, "retransmission kick: sock_diag");
            return;
        }
    };
    let mtu = match kick_mtu(&info, !flow.is_ipv4()) {
        Ok(mtu) => mtu,
        Err(NoKick::Idle) => {
            c.kicks_idle.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%flow, "retransmission kick: nothing outstanding");
            return;
        }
        Err(NoKick::AtMinimum { mtu }) => {
            c.kick_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%flow, mtu, pmtu = info.pmtu, "retransmission kick: path MTU at the minimum");
            return;
        }
    };
    let sent = kick_error(&trigger, packet, mtu)
        .map_err(io::Error::other)
        .and_then(|err| inject(raw, &err));
    match sent {
        Ok(()) => {
            c.retransmit_kicks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                %flow,
                seq = trigger.seq,
                mtu,
                pmtu = info.pmtu,
                snd_mss = info.snd_mss,
                unacked = info.unacked,
                backoff = info.backoff,
                "retransmission kick injected"
            );
        }
        Err(e) => {
            c.kick_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%flow, error = %e, "retransmission kick: injection refused");
        }
    }
}

/// Sends a whole IP packet to its destination address through the marked raw socket.
fn inject(raw: &RawSockets, packet: &[u8]) -> io::Result<()> {
    let (_, dst) = roam_core::plane::ip_addrs(packet).ok_or_else(|| io::Error::other("not an IP packet"))?;
    let sock = raw
        .to(dst)
        .ok_or_else(|| io::Error::other("no raw socket for the family"))?;
    // Raw sockets ignore the port, except that IPv6 wants 0 (raw(7), ipv6(7)).
    sock.send_to(packet, &SockAddr::from(SocketAddr::new(dst, 0)))?;
    Ok(())
}

/// The raw-payload key of an address in the sets `icq4`/`icq6`: the quoted address as
/// one big-endian integer (`@th,160,32` loads 4 bytes of the packet).
pub(crate) fn set_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("{:#x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:#x}", u128::from(v6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_core::translate::{FlowMapping, Protocol, TableChange, Tuple};

    fn udp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Udp, l.parse().unwrap(), r.parse().unwrap())
    }

    /// A port unreachable from `from` about a UDP datagram `src -> dst`, built with
    /// etherparse.
    fn port_unreachable(from: IpAddr, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        use etherparse::{Icmpv4Type, PacketBuilder, icmpv4};
        let IpAddr::V4(from) = from else { panic!() };
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            panic!()
        };
        let mut quote = Vec::new();
        PacketBuilder::ipv4(s.octets(), d.octets(), 64)
            .udp(src.port(), dst.port())
            .write(&mut quote, b"hello")
            .unwrap();
        let b = PacketBuilder::ipv4(from.octets(), s.octets(), 64).icmpv4(
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        );
        let mut out = Vec::new();
        b.write(&mut out, &quote).unwrap();
        out
    }

    #[test]
    fn an_error_about_a_moved_flow_is_translated_and_others_pass_unchanged() {
        let o = udp("10.9.0.1:4000", "10.9.1.2:53");
        let c = udp("10.9.2.1:4000", "10.9.1.2:53");
        let mut t = TranslationTable::new(1);
        t.apply(&TableChange::InstallFlow(FlowMapping {
            original: o,
            current: c,
            hold: false,
        }))
        .unwrap();
        // The peer says port unreachable about what it received: our current tuple.
        let err = port_unreachable(c.remote.ip(), c.local, c.remote);
        let Relayed::Inject { packet, translated } = relay_one(&t, Direction::Ingress, &err) else {
            panic!()
        };
        assert!(translated);
        // Outer destination and the quoted source are the original address again.
        assert_eq!(&packet[16..20], &[10, 9, 0, 1]);
        assert_eq!(&packet[28 + 12..28 + 16], &[10, 9, 0, 1]);
        assert!(etherparse::SlicedPacket::from_ip(&packet).is_ok());
        // The ICMP checksum still verifies (RFC 1071: the sum over the message is 0xffff).
        let icmp = &packet[20..];
        let mut sum: u32 = icmp
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);

        // Not ours: injected as it came.
        let other = port_unreachable(
            "10.9.1.2".parse().unwrap(),
            "10.9.2.1:5000".parse().unwrap(),
            "10.9.1.2:53".parse().unwrap(),
        );
        assert_eq!(
            relay_one(&t, Direction::Ingress, &other),
            Relayed::Inject {
                packet: other.clone(),
                translated: false
            }
        );
        // Truncated: dropped with the rewriter's reason.
        assert!(matches!(
            relay_one(&t, Direction::Ingress, &err[..22]),
            Relayed::Malformed(_)
        ));
    }

    fn tcp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }

    /// A bare ACK of `flow` as its local end sends it, with timestamps (12 option bytes).
    fn ack(flow: &Tuple, seq: u32) -> Vec<u8> {
        use etherparse::{PacketBuilder, TcpOptionElement};
        let b = match (flow.local.ip(), flow.remote.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => panic!(),
        };
        let b = b
            .tcp(flow.local.port(), flow.remote.port(), seq, 1000)
            .ack(77)
            .options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(1, 2),
            ])
            .unwrap();
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    }

    fn info(unacked: u32, snd_mss: u32, pmtu: u32) -> TcpSenderInfo {
        TcpSenderInfo {
            state: 1,
            options: TCPI_OPT_TIMESTAMPS,
            snd_mss,
            unacked,
            pmtu,
            ..TcpSenderInfo::default()
        }
    }

    #[test]
    fn a_trigger_gives_the_flow_its_sequence_number_and_its_headers() {
        for flow in [
            tcp("10.9.0.2:5001", "10.9.0.1:40000"),
            tcp("[fd00::2]:5001", "[fd00::1]:40000"),
        ] {
            let pkt = ack(&flow, 0xdead_beef);
            let t = Trigger::parse(&pkt).unwrap();
            assert_eq!((t.flow, t.seq), (flow, 0xdead_beef));
            // IP header and the TCP header with its options: the whole of a bare ACK.
            assert_eq!(t.quote_len, pkt.len());
            // Cut short by the log's snap length: the headers are still there.
            let mut long = pkt.clone();
            long.extend_from_slice(&[0u8; 64]);
            assert_eq!(Trigger::parse(&long).unwrap().quote_len, pkt.len());
            let hdr = if flow.is_ipv4() { 20 } else { 40 };
            assert!(Trigger::parse(&pkt[..hdr + 7]).is_err());
            assert_eq!(Trigger::parse(&pkt[..hdr + 8]).unwrap().quote_len, hdr + 8);
        }
        let udp = port_unreachable(
            "10.9.1.2".parse().unwrap(),
            "10.9.2.1:5000".parse().unwrap(),
            "10.9.1.2:53".parse().unwrap(),
        );
        assert_eq!(Trigger::parse(&udp), Err("not TCP"));
        assert_eq!(Trigger::parse(&[]), Err("empty packet"));
        assert_eq!(Trigger::parse(&[0x50; 40]), Err("not IP"));
    }

    #[test]
    fn the_kick_mtu_is_one_byte_under_what_the_mss_was_computed_from() {
        // 1500 on the path, MSS 1448 with timestamps: 1499, both families' arithmetic.
        assert_eq!(kick_mtu(&info(10, 1448, 1500), false), Ok(1499));
        assert_eq!(kick_mtu(&info(10, 1428, 1500), true), Ok(1499));
        // The peer's MSS option clamped the MSS: under what the MSS comes from, or the
        // MSS would not change and nothing would be retransmitted.
        assert_eq!(kick_mtu(&info(10, 1348, 1500), false), Ok(1399));
        // A second kick goes one byte further.
        assert_eq!(kick_mtu(&info(10, 1447, 1499), false), Ok(1498));
        // Nothing outstanding: no kick, no cost.
        assert_eq!(kick_mtu(&info(0, 1448, 1500), false), Err(NoKick::Idle));
        // Never under the family's minimum.
        assert_eq!(
            kick_mtu(&info(3, 1228, 1280), true),
            Err(NoKick::AtMinimum { mtu: 1279 })
        );
        assert_eq!(
            kick_mtu(&info(3, 500, 552), false),
            Err(NoKick::AtMinimum { mtu: 551 })
        );
        assert_eq!(kick_mtu(&info(3, 501, 553), false), Ok(552));
    }

    #[test]
    fn the_kick_error_quotes_the_trigger_to_the_local_end_with_valid_checksums() {
        use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice, icmpv4};
        let v4 = tcp("10.9.0.2:5001", "10.9.0.1:40000");
        let pkt = ack(&v4, 42);
        let t = Trigger::parse(&pkt).unwrap();
        let err = kick_error(&t, &pkt, 1499).unwrap();
        let s = SlicedPacket::from_ip(&err).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(ip.header().source_addr(), std::net::Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(
            ip.header().destination_addr(),
            std::net::Ipv4Addr::new(10, 9, 0, 2)
        );
        let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1499
            })
        );
        assert_eq!(icmp.payload(), &pkt[..]);
        assert_eq!(
            icmp.checksum(),
            icmp.header().icmp_type.calc_checksum(icmp.payload())
        );

        let v6 = tcp("[fd00::2]:5001", "[fd00::1]:40000");
        let pkt = ack(&v6, 42);
        let t = Trigger::parse(&pkt).unwrap();
        let err = kick_error(&t, &pkt, 1499).unwrap();
        let s = SlicedPacket::from_ip(&err).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &s.net else {
            panic!()
        };
        let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
        assert_eq!(
            (IpAddr::from(src), IpAddr::from(dst)),
            (v6.remote.ip(), v6.local.ip())
        );
        let Some(TransportSlice::Icmpv6(icmp)) = &s.transport else {
            panic!()
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1499 });
        assert_eq!(icmp.payload(), &pkt[..]);
        let sum = icmp
            .header()
            .icmp_type
            .calc_checksum(src.octets(), dst.octets(), icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), sum);
    }

    #[test]
    fn set_keys_are_the_addresses_as_big_endian_integers() {
        assert_eq!(set_key("10.0.0.1".parse().unwrap()), "0xa000001");
        assert_eq!(set_key("::ffff:10.0.0.1".parse().unwrap()), "0xa000001");
        assert_eq!(
            set_key("2001:db8::1".parse().unwrap()),
            "0x20010db8000000000000000000000001"
        );
    }
}
