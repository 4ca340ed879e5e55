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
use roam_core::translate::{Direction, TranslationTable, Verdict, translate};
use serde::Serialize;
use socket2::SockAddr;
use thiserror::Error;

use crate::nudge::{NUDGE_MARK, RawSockets, in_netns};

/// The nfnetlink_log group the table logs ICMP errors to unless configured otherwise
/// (ASCII "ro"). Groups are per network namespace.
pub const DEFAULT_ICMP_GROUP: u16 = 0x726f;

/// The log prefix of errors that arrived (ingress) and of errors the stack sent (egress).
pub(crate) const PREFIX_INGRESS: &str = "roam-in";
pub(crate) const PREFIX_EGRESS: &str = "roam-eg";

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
}

#[derive(Default)]
struct AtomicCounters {
    translated: AtomicU64,
    unchanged: AtomicU64,
    malformed: AtomicU64,
    inject_errors: AtomicU64,
    netlink_errors: AtomicU64,
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
        let open = || -> Result<(NetlinkSocket, RawSockets), IcmpError> {
            let nl = bind_group(group)?;
            let raw = RawSockets::open(Some(NUDGE_MARK), "relayed ICMP errors").map_err(IcmpError::Raw)?;
            Ok((nl, raw))
        };
        let (nl, raw) = match netns {
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
            .spawn(move || run(&nl, &raw, &s))
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

fn run(nl: &NetlinkSocket, raw: &RawSockets, shared: &Shared) {
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
            handle(&msg, raw, shared);
            if len == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned in a datagram.
            at += (len + 3) & !3;
        }
    }
}

fn handle(msg: &NetlinkMessage<NetfilterMessage>, raw: &RawSockets, shared: &Shared) {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
        ..
    }) = &msg.payload
    else {
        return;
    };
    let mut dir = None;
    let mut payload = None;
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => {
                dir = match p.to_bytes() {
                    b if b == PREFIX_INGRESS.as_bytes() => Some(Direction::Ingress),
                    b if b == PREFIX_EGRESS.as_bytes() => Some(Direction::Egress),
                    _ => None,
                }
            }
            PacketNla::Payload(p) => payload = Some(p),
            _ => {}
        }
    }
    let (Some(dir), Some(payload)) = (dir, payload) else {
        shared.counters.netlink_errors.fetch_add(1, Ordering::Relaxed);
        return;
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
