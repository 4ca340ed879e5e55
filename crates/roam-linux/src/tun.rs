//! The userspace data plane: roam's translation done by roamd itself, on packets the
//! kernel hands it through TUN devices. The packet logic is the simulator's
//! ([`roam_core::plane::PacketPlane`]: rewriter, hold queue, return-routability budgets,
//! drain, resend); this module is the I/O around it.
//!
//! It is the fallback where the kernel plane ([`crate::nft`]) cannot be used, and the
//! place for what a stateless in-kernel rewrite cannot do: queue a held flow's packets
//! instead of dropping them, raise a budget from what arrives, send again what the old
//! path lost. It also runs tunnel mode (below, `TunConfig::tunnel_port`).
//!
//! # The path of a packet (verified on Linux 6.18, see `tests/tun_translate.rs`)
//!
//! ```text
//!   socket (original tuple)                             socket (original tuple)
//!     | output routing: an `ip rule` matches the          ^ input: local delivery,
//!     | flow's original 5-tuple -> table "roam":          | arriving on roam0
//!     | default dev roam0                                 |
//!     v                                                   |
//!   [roam0] --read--> roamd: original -> current      [roam0] <--write-- roamd: current -> original
//!                       | raw socket (header included)                    ^
//!                       v routed again by its new addresses               | read
//!                     wire                                            [roam0d]
//!                                                                         ^ tc clsact ingress: u32
//!                                                                         | match on the current
//!   wire --------------------------------------------------------------------  tuple, mirred redirect
//! ```
//!
//! - **Egress: policy routing.** One `ip rule` per translated flow, matching its
//!   original tuple (`from`, `to`, `ipproto`, `sport`, `dport`; Linux >= 4.17), looks up
//!   a table of roam's ([`DEFAULT_ROUTE_TABLE`]) whose default route is `roam0`. The
//!   stack routes the flow's packets into the TUN device, roamd reads them, rewrites them
//!   and sends them through a raw socket (`IPPROTO_RAW`: the header is roamd's). The
//!   kernel routes that packet by its *new* addresses (the source is passed as
//!   `IP_PKTINFO`/`IPV6_PKTINFO`, so source-based rules apply too): it leaves from the
//!   new address, by the new interface, with ARP/ND for the new next hop, as the nft
//!   plane's `route` chain achieves in the kernel. The route lookup of a raw socket
//!   that includes headers carries its own protocol (255, `IPPROTO_RAW`), never TCP or
//!   UDP, so the rules never catch roamd's own packets.
//!   Rules carry `protocol` [`crate::netlink::ROAM_ADDRESS_PROTO`] so a restart finds
//!   and removes those a crash left behind.
//! - **Ingress: tc.** A packet arriving under a current tuple must not reach the stack
//!   as it is: no socket has that tuple, and the stack would answer with a RST that the
//!   peer accepts (MISSION.md, "Hard parts"). Policy routing cannot divert it (its
//!   destination is local: the local table decides first), and this kernel has no tc
//!   actions but `mirred` and no `flower` classifier. So on every interface but `lo`, a
//!   `clsact` qdisc's ingress hook runs a `u32` filter per current tuple whose action
//!   is `mirred egress redirect dev roam0d`: the packet is taken before IP sees it and
//!   queued to a second TUN device, which roamd reads. Written back into `roam0`, the
//!   translated packet arrives as if from the wire on that device, under its original
//!   tuple, and is delivered (the original local address is still the host's, on `lo`).
//!   Two devices tell the directions apart with no guessing: what is read from `roam0`
//!   left the stack, what is read from `roam0d` came from the wire.
//! - **The u32 tree** (one per interface, at [`DEFAULT_TC_PRIORITY`], protocol `all`):
//!   two nodes in the root table test the IP version and link to a table per family.
//!   The IPv4 link computes the transport header's offset from the IHL field (`offset
//!   at 0 mask 0x0f00 shift 6`), so IPv4 options are handled; the IPv6 one assumes the
//!   transport header follows the fixed header (offset 40). Each flow node matches the
//!   addresses, the protocol and both ports (`at nexthdr+0`).
//!
//! # Kernel settings, and why
//!
//! - `roam0`: IPv6 address generation off (`addr_gen_mode none`, before it is up): no
//!   link-local address, so no router solicitations or MLD reports go into the device
//!   and roamd's address watcher sees no address on it. Its MTU is the smallest of the
//!   host's other interfaces, so a packet the stack sends into it also fits the
//!   interface the raw socket sends it by.
//! - Reverse-path filtering needs nothing: a translated packet written into `roam0`
//!   comes from the flow's original remote address, and the reverse lookup
//!   (`fib_validate_source`, which uses the packet's protocol and swapped ports) finds
//!   the flow's own rule, whose route is `roam0`, the device it arrived on. Verified
//!   with `rp_filter` 0, 1 (strict) and 2 (loose). By the same rule, under strict
//!   filtering what still arrives from the wire under the *original* tuple (the old path
//!   draining) should fail the check, the reverse route now leading into `roam0` (not
//!   measured); TCP sends it again.
//! - `accept_local` is not needed: no packet written into `roam0` has a local source.
//! - No forwarding: roamd's packets are the host's own output (raw socket), never
//!   forwarded from one device to another.
//! - The TUN devices have no offloads (no `TUNSETOFFLOAD`), so the kernel completes
//!   checksums and segments GSO packets before handing them over: every packet read is
//!   at most the MTU, with a valid checksum that the rewriter updates incrementally.
//!
//! # Nudges
//!
//! Through [`crate::nudge::Nudger`], as the kernel plane does: a SYN injected into the
//! local stack through loopback, answered with a challenge ACK, which leaves through
//! `roam0` and is translated. The simulator's nudge (forged out-of-window data) needs
//! the peer's sequence numbers; this plane sees a flow's packets only from the moment
//! its entry exists, usually nothing yet when the nudge is due. The SYN needs nothing,
//! and one ACK restarts a Linux sender's recovery (see `nudge.rs`).
//!
//! # Tunnel mode (seed 002's tunnel mode, seed 003's transition tunnel)
//!
//! With [`TunConfig::tunnel_port`] set, the plane wraps instead of rewriting
//! ([`roam_core::tunnel`], docs/PROTOCOL.md "Tunnel mode"):
//!
//! ```text
//!   socket (original tuple)                             socket (original tuple)
//!     | the flow's `ip rule` -> table "roam":             ^ input: local delivery,
//!     | default dev roam0 mtu (device MTU - 28 or 48)     | arriving on roam0
//!     v                                                   |
//!   [roam0] --read--> roamd: wrap in UDP            [roam0] <--write-- roamd: unwrap, check
//!                       | current local:port ->                           ^ outer addresses
//!                       | current remote:port                             | = the entry's current
//!                       v raw socket                                      | UDP socket, port
//!                     wire --------------------------------------------------
//! ```
//!
//! - **Egress** is translate mode's: the flow's rule routes its packets into `roam0`.
//!   roamd wraps each whole, original addresses and ports untouched, in a UDP datagram
//!   from the entry's current local address to its current remote address, both at the
//!   tunnel port, and sends it through the same raw socket (the core builds the outer
//!   headers: the kernel routes the datagram by its outer addresses, as it routes a
//!   translated packet). UDP rather than IP-in-IP or GRE: it crosses NATs (seed 002
//!   FIG. 6's home and visited NATs), and this kernel has no such devices anyway.
//! - **Ingress** needs no diversion, hence no tc, no `roam0d` and no clsact qdisc: the
//!   datagrams arrive on roamd's UDP sockets at the tunnel port (one per family,
//!   `IP_PKTINFO`/`IPV6_RECVPKTINFO` for the outer destination). The packet logic
//!   accepts one only if its outer source and destination are the current addresses of
//!   the entry whose original tuple the inner packet has (or of its drain alias), and
//!   roamd writes the inner packet into `roam0` unchanged: the stack finds its socket
//!   by its original tuple, and the reverse-path check finds the flow's own rule.
//! - **MTU**: roam's table's default routes carry `mtu` = the device's MTU less the
//!   outer headers (28 bytes for IPv4, 48 for IPv6), so TCP's MSS for a tunnelled
//!   flow shrinks as soon as its rule routes it there (segments sized before are
//!   refused by the stack itself, see below). A packet that still does not fit is refused by the raw socket and counted
//!   (`oversize`); TCP sends it again, smaller. The raw sockets size what they send by
//!   the interface, not by the path MTU cached for the destination (see
//!   `ignore_path_mtu`).
//! - The first segments a flow's stack sends after its rule appears were sized for the
//!   old route: the stack refuses them itself ("fragmentation needed") and sends its
//!   flight again at the smaller MSS, a cost at the first move that translate mode does
//!   not have (measured in docs/ARCHITECTURE.md, "Tunnel mode").
//! - Both ends of a flow must run the same mode: a translating peer neither listens on
//!   the tunnel port nor expects the original tuple inside a datagram.
//!
//! # Limits
//!
//! - Per-packet cost: a `read` and a `sendmsg` (or `write`) per packet, on one thread.
//!   Measured in the lab (`roam lab --scenario iperf3 --data-plane tun`, 100 Mbit/s,
//!   20 ms RTT, a loaded 2-core machine): goodput 0.996 and 1.011 of plain TCP on the
//!   same path, each roamd using about 10 CPU-seconds per GB translated.
//! - `ip rule`s and u32 nodes are lists: each packet of the host is tested against
//!   each rule until one matches, and each packet arriving on an interface against each
//!   node of its family. At most 4095 diverted tuples per family (u32 node ids have 12
//!   bits); a u32 hash table keyed by the local port would lift both, if ever needed.
//! - Not diverted on ingress, hence not translated: IPv6 packets with extension headers
//!   before the transport header, IP fragments after the first, ICMP errors about a
//!   translated flow (not translated by the kernel plane either). TCP uses none of them.
//! - When roamd stops, translation stops: the devices go with the process, the rules are
//!   removed. Nothing survives a restart (use the kernel plane for that).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use roam_core::plane::{PacketPlane, PlaneCounters, Verdicts, ip_addrs};
use roam_core::translate::{
    AddressMapping, Direction, FlowMapping, Protocol, Side, TableChange, TableError, Tuple,
};
use roam_core::tunnel;
use roam_core::{ConflictDirection, DataPlane, DataPlaneCommand, Instant};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption, TcActionType,
    TcAttribute, TcFilterU32Option, TcHandle, TcHeader, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use serde::Serialize;
use socket2::{SockAddr, Socket};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::netlink::ROAM_ADDRESS_PROTO;
use crate::nft::canon_change;
use crate::nudge::{NudgeError, Nudger, RawSockets, in_netns};

/// The device the stack sees: translated flows are routed into it, and translated
/// packets from the wire come out of it.
pub const DEFAULT_IFNAME: &str = "roam0";
/// The device tc diverts packets arriving under current tuples to. roamd only reads it.
pub const DEFAULT_DIVERT_IFNAME: &str = "roam0d";
/// The routing table whose default route is the TUN device: ASCII "roam".
pub const DEFAULT_ROUTE_TABLE: u32 = 0x726f_616d;
/// Preference of roam's `ip rule`s: after the local table's (0), before the main
/// table's (32766) and after most rules people add by hand (which are usually in the
/// hundreds or thousands), since each of roam's names one flow exactly.
pub const DEFAULT_RULE_PRIORITY: u32 = 0x7200;
/// Priority of roam's u32 filters on the interfaces' clsact ingress hook. Lower runs
/// first, and the first filter with a verdict ends the classification: roam's must run
/// before anything that lets every packet pass.
pub const DEFAULT_TC_PRIORITY: u16 = 0x72;

/// Packets the devices queue towards roamd (the kernel's default is 500): room for a
/// few milliseconds of a busy link while the packet thread is not scheduled.
const QUEUE_LEN: u32 = 2000;
/// How often the packet thread looks at its stop flag when nothing arrives.
const POLL_MS: i32 = 100;
/// Packets read from one device before the other gets its turn.
const BURST: usize = 64;
/// Packet buffers the packet thread keeps for reuse: a burst's worth each way.
const SPARE: usize = 2 * BURST;
/// How long one netlink request may take before it is given up.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// `ETH_P_ALL`: the filters see every packet and test the IP version themselves.
const ETH_P_ALL: u16 = 0x0003;
/// u32 hash table ids (the top 12 bits of a u32 handle): the root, IPv4, IPv6.
const HT_ROOT: u32 = 0x800 << 20;
const HT_V4: u32 = 0x4 << 20;
const HT_V6: u32 = 0x6 << 20;
/// The largest u32 node id (12 bits).
const MAX_NODE: u32 = 0xfff;

/// Why the TUN plane could not do something. A refused command changes nothing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TunError {
    #[error("translation entry refused: {0}")]
    Table(#[from] TableError),
    #[error("creating TUN device {name}: {source}")]
    Device {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("device name {0:?}: use 1 to 15 ASCII letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error("entering network namespace {path}: {source}", path = .path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening a raw {family} socket (needs CAP_NET_RAW): {source}")]
    Raw {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("more than {max} diverted {family} tuples (u32 node ids have 12 bits)")]
    TooMany { family: &'static str, max: u32 },
    #[error("opening the nudge sockets: {0}")]
    Nudge(#[from] NudgeError),
    #[error("starting the packet thread: {0}")]
    Thread(#[source] io::Error),
    #[error("the tunnel port must be 1 to 65535")]
    TunnelPort,
    #[error("opening the tunnel's {family} socket on UDP port {port}: {source}")]
    TunnelSocket {
        family: &'static str,
        port: u16,
        #[source]
        source: io::Error,
    },
}

impl TunError {
    /// Whether the kernel refused with `errno`.
    fn is_errno(&self, errno: i32) -> bool {
        matches!(self, TunError::Netlink { source, .. } if source.raw_os_error() == Some(errno))
    }
}

/// How to open the TUN data plane.
#[derive(Clone, Debug)]
pub struct TunConfig {
    /// See [`DEFAULT_IFNAME`].
    pub ifname: String,
    /// See [`DEFAULT_DIVERT_IFNAME`].
    pub divert_ifname: String,
    /// The network namespace to work in (a path such as `/var/run/netns/NAME`), `None`
    /// for the caller's. Devices, sockets and netlink all live there.
    pub netns: Option<PathBuf>,
    pub route_table: u32,
    pub rule_priority: u32,
    pub tc_priority: u16,
    /// Open raw sockets for [`DataPlaneCommand::Nudge`]. Without them nudges are counted
    /// as errors and otherwise ignored.
    pub nudge: bool,
    /// Seed of the translation table's hash (anything; varied per host in tests).
    pub hash_seed: u64,
    /// Tunnel mode on this UDP port (here and at peers): moved flows' packets travel
    /// wrapped (module docs). `None`: translate mode.
    pub tunnel_port: Option<u16>,
}

impl Default for TunConfig {
    fn default() -> TunConfig {
        TunConfig {
            ifname: DEFAULT_IFNAME.to_owned(),
            divert_ifname: DEFAULT_DIVERT_IFNAME.to_owned(),
            netns: None,
            route_table: DEFAULT_ROUTE_TABLE,
            rule_priority: DEFAULT_RULE_PRIORITY,
            tc_priority: DEFAULT_TC_PRIORITY,
            nudge: true,
            // The table's hash is keyed by tuples that remote hosts choose in part: a
            // per-process key keeps them from aiming at one bucket.
            hash_seed: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u64),
            tunnel_port: None,
        }
    }
}

/// What the TUN plane did: the shared packet logic's counters, and the I/O's.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TunCounters {
    /// Translation, hold, budgets, drain, resend, malformed packets, by reason.
    pub plane: PlaneCounters,
    /// Packets read from `roam0` (the stack's, of translated flows) and from `roam0d`
    /// (the wire's, diverted by tc), and datagrams read from the tunnel sockets.
    pub from_stack: u64,
    pub from_wire: u64,
    pub from_tunnel: u64,
    /// Packets sent to the wire (raw socket) and written to the stack (`roam0`).
    pub to_wire: u64,
    pub to_stack: u64,
    /// Sends the kernel refused: larger than the route's MTU, and anything else.
    pub oversize: u64,
    pub send_errors: u64,
    pub write_errors: u64,
    pub read_errors: u64,
    /// Conflicts (seed 000 ¶0067-¶0069) handed to the endpoint, the packet dropped.
    pub conflicts_reported: u64,
    /// Commands refused (translation table invariants) and kernel changes that failed.
    pub refused_commands: u64,
    pub kernel_errors: u64,
    /// `ip rule`s and u32 flow nodes in place, and the interfaces carrying them.
    pub rules: u64,
    pub filters: u64,
    pub interfaces: u64,
    pub nudges: u64,
    pub nudge_errors: u64,
    /// Nudges that asked for a fast retransmit and got one segment (see `nudge.rs`).
    pub fast_retransmit_as_single: u64,
}

/// What is installed, for `roam status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunEntries {
    pub flows: Vec<FlowMapping>,
    pub addresses: Vec<AddressMapping>,
    /// Drain aliases: a former current tuple still translated on ingress.
    pub draining: Vec<FlowMapping>,
}

/// Counters the packet thread updates.
#[derive(Default)]
struct Stats {
    from_stack: AtomicU64,
    from_wire: AtomicU64,
    from_tunnel: AtomicU64,
    to_wire: AtomicU64,
    to_stack: AtomicU64,
    oversize: AtomicU64,
    send_errors: AtomicU64,
    write_errors: AtomicU64,
    read_errors: AtomicU64,
    conflicts: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the packet thread and the command side share.
struct Shared {
    plane: Mutex<PacketPlane>,
    started: std::time::Instant,
    stop: AtomicBool,
    /// `roam0`: read what the stack routed into it, write what the stack must receive.
    stack: File,
    /// `roam0d`: read what tc diverted into it (translate mode only).
    divert: Option<File>,
    /// Tunnel mode: the UDP sockets tunnelled datagrams arrive on (one per family).
    tunnel: Vec<Socket>,
    /// Translated packets (and tunnel mode's datagrams) leave by these, routed by their
    /// new addresses.
    raw: RawSockets,
    stats: Stats,
    /// Conflicts found since the driver last asked.
    conflicts: Mutex<Vec<(ConflictDirection, Tuple)>>,
}

impl Shared {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.started.elapsed().as_nanos() as u64)
    }

    /// The packet logic, with the clock set. A panic elsewhere while holding the lock
    /// leaves the logic as it was between two packets: keep going.
    fn plane(&self) -> MutexGuard<'_, PacketPlane> {
        let mut p = self.plane.lock().unwrap_or_else(|e| e.into_inner());
        p.set_now(self.now());
        p
    }

    /// Seed 000 ¶0069: the endpoint decides (a remap); the packet is dropped meanwhile
    /// (only a SYN or a UDP datagram gets here, and its sender sends it again).
    fn conflict(&self, direction: ConflictDirection, tuple: Tuple) {
        bump(&self.stats.conflicts);
        debug!(?direction, %tuple, "conflict: handed to the endpoint");
        let mut c = self.conflicts.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() < 1024 {
            c.push((direction, tuple));
        }
    }

    /// Sends a translated packet to the wire: the kernel routes it by its addresses.
    fn send_wire(&self, pkt: &[u8]) {
        let Some((src, dst)) = ip_addrs(pkt) else {
            bump(&self.stats.send_errors);
            return;
        };
        let Some(sock) = self.raw.to(dst) else {
            bump(&self.stats.send_errors);
            return;
        };
        match send_raw(sock, pkt, src, dst) {
            Ok(()) => bump(&self.stats.to_wire),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                bump(&self.stats.oversize);
                debug!(len = pkt.len(), %dst, "larger than the route's MTU: dropped");
            }
            Err(e) => {
                bump(&self.stats.send_errors);
                debug!(%src, %dst, "raw send: {e}");
            }
        }
    }

    /// Hands a packet to the stack, as if it arrived on `roam0`.
    fn write_stack(&self, pkt: &[u8]) {
        // A TUN device takes a packet per write, whole or not at all.
        match (&self.stack).write(pkt) {
            Ok(n) if n == pkt.len() => bump(&self.stats.to_stack),
            Ok(n) => {
                bump(&self.stats.write_errors);
                debug!(n, len = pkt.len(), "short write into the TUN device");
            }
            Err(e) => {
                bump(&self.stats.write_errors);
                debug!("writing into the TUN device: {e}");
            }
        }
    }

    /// The packet thread: reads the devices (and the tunnel sockets) until told to stop.
    fn run(&self) {
        let mut buf = vec![0u8; 1 << 16];
        let mut burst = Burst::default();
        // What each polled descriptor is: `roam0`, then `roam0d` or the tunnel sockets.
        let mut sources = vec![(self.stack.as_raw_fd(), Source::Stack)];
        if let Some(d) = &self.divert {
            sources.push((d.as_raw_fd(), Source::Divert));
        }
        for (i, t) in self.tunnel.iter().enumerate() {
            sources.push((t.as_raw_fd(), Source::Tunnel(i)));
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|(fd, _)| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            for f in &mut fds {
                f.revents = 0;
            }
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("poll on the TUN devices: {e}");
                    std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                }
                continue;
            }
            // What is read from `roam0` left the stack, what is read from `roam0d`
            // came from the wire (module docs), and so did the tunnel's datagrams.
            for (f, (_, source)) in fds.iter().zip(&sources) {
                if f.revents == 0 {
                    continue;
                }
                match source {
                    Source::Stack => self.burst(&self.stack, Direction::Egress, &mut buf, &mut burst),
                    Source::Divert => {
                        if let Some(d) = &self.divert {
                            self.burst(d, Direction::Ingress, &mut buf, &mut burst);
                        }
                    }
                    Source::Tunnel(i) => self.tunnel_burst(&self.tunnel[*i], &mut buf, &mut burst),
                }
            }
            // A descriptor in error (it should not be: roamd owns them all) must not spin.
            let broken = libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
            if fds.iter().any(|f| f.revents & broken != 0) {
                warn!("a TUN device or tunnel socket reports an error; waiting");
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
            }
        }
    }

    /// Reads up to [`BURST`] packets into `b.read` with `read_one`, which gives a
    /// packet's length (and, from a tunnel socket, its outer addresses) or `None` when
    /// nothing is left; `what` names the source in the log.
    fn fill(
        &self,
        b: &mut Burst,
        buf: &mut [u8],
        what: &str,
        mut read_one: impl FnMut(&mut [u8]) -> io::Result<Option<(usize, Option<(IpAddr, IpAddr)>)>>,
    ) {
        for _ in 0..BURST {
            match read_one(buf) {
                Ok(None) => break,
                Ok(Some((n, outer))) => {
                    let mut pkt = b.spare.pop().unwrap_or_default();
                    pkt.clear();
                    pkt.extend_from_slice(&buf[..n]);
                    b.read.push(pkt);
                    b.outer.extend(outer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    bump(&self.stats.read_errors);
                    debug!("reading {what}: {e}");
                    break;
                }
            }
        }
    }

    /// Writes what the logic sent to the stack and to the wire, with the lock released,
    /// and keeps the buffers for the next burst.
    fn flush(&self, b: &mut Burst) {
        for pkt in b.to_stack.drain(..) {
            self.write_stack(&pkt);
            recycle(&mut b.spare, pkt);
        }
        for pkt in b.to_wire.drain(..) {
            self.send_wire(&pkt);
            recycle(&mut b.spare, pkt);
        }
    }

    /// Tunnel mode's ingress: reads up to [`BURST`] datagrams from a tunnel socket,
    /// unwraps them under one lock (the packet logic checks each against the table),
    /// and writes the inner packets into `roam0` with the lock released.
    fn tunnel_burst(&self, sock: &Socket, buf: &mut [u8], b: &mut Burst) {
        // An empty datagram is read too (the logic counts it as a refusal).
        self.fill(b, buf, "a tunnel socket", |buf| {
            recv_datagram(sock, buf).map(|(n, src, dst)| Some((n, Some((src, dst)))))
        });
        if b.read.is_empty() {
            return;
        }
        {
            let mut p = self.plane();
            self.stats
                .from_tunnel
                .fetch_add(b.read.len() as u64, Ordering::Relaxed);
            for (pkt, (src, dst)) in b.read.drain(..).zip(b.outer.drain(..)) {
                let verdict = p.unwrap(src, dst, pkt);
                // What arrived may have raised a budget: what now fits goes too.
                b.to_wire.append(&mut p.to_wire);
                if let Verdicts::Forward(pkt) = verdict {
                    b.to_stack.push(pkt);
                }
            }
        }
        self.flush(b);
    }

    /// Reads up to [`BURST`] packets from one device, pushes them through the packet
    /// logic under one lock and one reading of the clock, then sends and writes what
    /// came out with the lock released (the command side waits for no I/O). Egress: a
    /// translated flow's packets, by the rule that routed them into `roam0`; ingress:
    /// packets diverted by tc (they matched a current tuple).
    fn burst(&self, mut dev: &File, direction: Direction, buf: &mut [u8], b: &mut Burst) {
        self.fill(b, buf, "a TUN device", |buf| {
            dev.read(buf).map(|n| (n > 0).then_some((n, None)))
        });
        if b.read.is_empty() {
            return;
        }
        let (read, conflict) = match direction {
            Direction::Egress => (&self.stats.from_stack, ConflictDirection::Egress),
            Direction::Ingress => (&self.stats.from_wire, ConflictDirection::Ingress),
        };
        {
            let mut p = self.plane();
            // Counted under the lock, as the logic's own counters are: a snapshot
            // taken under it sees both or neither.
            read.fetch_add(b.read.len() as u64, Ordering::Relaxed);
            for pkt in b.read.drain(..) {
                let verdict = match direction {
                    Direction::Egress => p.egress(pkt),
                    Direction::Ingress => p.ingress(pkt),
                };
                // What arrived may have raised a budget: what now fits goes too.
                b.to_wire.append(&mut p.to_wire);
                match (verdict, direction) {
                    (Verdicts::Forward(pkt), Direction::Egress) => b.to_wire.push(pkt),
                    (Verdicts::Forward(pkt), Direction::Ingress) => b.to_stack.push(pkt),
                    (Verdicts::Conflict(t, pkt), _) => {
                        b.conflicts.push(t);
                        recycle(&mut b.spare, pkt);
                    }
                    (Verdicts::Held | Verdicts::Dropped, _) => {}
                }
            }
        }
        for t in b.conflicts.drain(..) {
            self.conflict(conflict, t);
        }
        self.flush(b);
    }
}

/// The packet thread's buffers, kept from one burst to the next: once warm, a packet
/// costs no allocation (the logic takes packets by value and hands them back).
#[derive(Default)]
struct Burst {
    /// Packets read, waiting for the lock.
    read: Vec<Vec<u8>>,
    /// Tunnel mode: each datagram's outer source and destination, beside `read`.
    outer: Vec<(IpAddr, IpAddr)>,
    /// What the logic sent on: to the wire (raw socket), to the stack (`roam0`).
    to_wire: Vec<Vec<u8>>,
    to_stack: Vec<Vec<u8>>,
    /// Conflicts found, handed to the command side once the lock is released.
    conflicts: Vec<Tuple>,
    /// Emptied packet buffers, for the next reads (at most [`SPARE`]).
    spare: Vec<Vec<u8>>,
}

/// What a descriptor the packet thread polls carries.
#[derive(Clone, Copy)]
enum Source {
    /// `roam0`: the stack's packets of translated flows.
    Stack,
    /// `roam0d`: packets tc diverted from the wire.
    Divert,
    /// A tunnel socket (by index): tunnelled datagrams.
    Tunnel(usize),
}

fn recycle(spare: &mut Vec<Vec<u8>>, pkt: Vec<u8>) {
    if spare.len() < SPARE {
        spare.push(pkt);
    }
}

/// The userspace TUN data plane. See the module documentation.
pub struct TunDataPlane {
    config: TunConfig,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    kernel: Kernel,
    nudger: Option<Nudger>,
    counters: TunCounters,
    closed: bool,
}

impl TunDataPlane {
    /// Opens the plane in the caller's namespace with the defaults.
    pub fn open() -> Result<TunDataPlane, TunError> {
        TunDataPlane::open_with(TunConfig::default())
    }

    /// Creates the devices (in tunnel mode, `roam0` and the tunnel sockets instead of
    /// `roam0d`), the raw sockets and roam's routing table; removes what a previous run
    /// left (rules, filters); starts the packet thread.
    pub fn open_with(config: TunConfig) -> Result<TunDataPlane, TunError> {
        for name in [&config.ifname, &config.divert_ifname] {
            check_ifname(name)?;
        }
        if config.tunnel_port == Some(0) {
            return Err(TunError::TunnelPort);
        }
        let opened = match &config.netns {
            None => Opened::open(&config)?,
            Some(path) => in_netns(path, || Opened::open(&config)).map_err(|source| TunError::Netns {
                path: path.clone(),
                source,
            })??,
        };
        let Opened {
            stack,
            divert,
            tunnel,
            stack_ifindex,
            divert_ifindex,
            raw,
            rtnl,
            nudger,
        } = opened;
        let mut kernel = Kernel {
            rtnl,
            table: config.route_table,
            rule_priority: config.rule_priority,
            tc_priority: config.tc_priority,
            stack_ifindex,
            divert_ifindex,
            rules: BTreeSet::new(),
            ids: BTreeMap::new(),
            links: BTreeMap::new(),
            errors: 0,
        };
        kernel.setup()?;
        let plane = match config.tunnel_port {
            Some(port) => PacketPlane::new_tunnel(config.hash_seed, port),
            None => PacketPlane::new(config.hash_seed),
        };
        let shared = Arc::new(Shared {
            plane: Mutex::new(plane),
            started: std::time::Instant::now(),
            stop: AtomicBool::new(false),
            stack,
            divert,
            tunnel,
            raw,
            stats: Stats::default(),
            conflicts: Mutex::new(Vec::new()),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("roam-tun".into())
            .spawn(move || worker.run())
            .map_err(TunError::Thread)?;
        match config.tunnel_port {
            Some(port) => info!(
                stack = %config.ifname,
                port,
                table = config.route_table,
                "TUN data plane ready, tunnel mode"
            ),
            None => info!(
                stack = %config.ifname,
                divert = %config.divert_ifname,
                table = config.route_table,
                "TUN data plane ready"
            ),
        }
        Ok(TunDataPlane {
            config,
            shared,
            thread: Some(thread),
            kernel,
            nudger,
            counters: TunCounters::default(),
            closed: false,
        })
    }

    pub fn config(&self) -> &TunConfig {
        &self.config
    }

    /// Carries out a batch of commands: the table changes first, then the kernel
    /// (filters before rules, so that answers to the first translated packet are
    /// diverted), then what the changes released (held packets), then the nudges.
    /// Each command is applied on its own; the first refusal is returned after the
    /// others were applied.
    pub fn apply_batch(&mut self, commands: &[DataPlaneCommand]) -> Result<(), TunError> {
        let mut first_error = None;
        let mut nudges = Vec::new();
        let (rules, divert, out) = {
            let mut p = self.shared.plane();
            for c in commands {
                let c = match c {
                    DataPlaneCommand::Table(change) => DataPlaneCommand::Table(canon_change(change)),
                    DataPlaneCommand::Nudge {
                        original,
                        fast_retransmit,
                    } => {
                        nudges.push((*original, *fast_retransmit));
                        continue;
                    }
                    other => *other,
                };
                if let Err(e) = p.apply(&c) {
                    self.counters.refused_commands += 1;
                    debug!(command = ?c, "refused: {e}");
                    first_error.get_or_insert(TunError::Table(e));
                } else if let DataPlaneCommand::Table(TableChange::RemoveFlow { original }) = c {
                    // This plane sees a flow's packets only while it has an entry: what
                    // the logic kept of it (the peer's last segment, recent data for a
                    // resend) would never be renewed nor freed. (The simulator, which
                    // sees every packet, forgets a flow when its stack closes it.)
                    p.forget(&original);
                }
            }
            let (rules, divert) = desired(&p);
            // Packets the budget held for a validated address, or resent: they are
            // translated already and need no kernel state.
            let out = std::mem::take(&mut p.to_wire);
            (rules, divert, out)
        };
        if let Err(e) = self.kernel.reconcile(&rules, &divert) {
            first_error.get_or_insert(e);
        }
        for pkt in out {
            self.shared.send_wire(&pkt);
        }
        for (original, fast_retransmit) in nudges {
            self.nudge(&original, fast_retransmit);
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn nudge(&mut self, original: &Tuple, fast_retransmit: bool) {
        let Some(n) = &self.nudger else {
            self.counters.nudge_errors += 1;
            return;
        };
        match n.nudge(original) {
            Ok(()) => {
                self.counters.nudges += 1;
                if fast_retransmit {
                    self.counters.fast_retransmit_as_single += 1;
                }
            }
            Err(e) => {
                self.counters.nudge_errors += 1;
                debug!("nudge: {e}");
            }
        }
    }

    /// Housekeeping, about once a second: drain aliases whose time has passed lose
    /// their filters, interfaces that appeared get roam's filters.
    pub fn maintain(&mut self) -> Result<(), TunError> {
        let (rules, divert) = {
            let mut p = self.shared.plane();
            p.expire_drains();
            desired(&p)
        };
        self.kernel.reconcile(&rules, &divert)
    }

    /// Conflicts found since the last call, for [`roam_core::Input::Conflict`]: the
    /// endpoint remaps, the sender's next attempt gets through.
    pub fn take_conflicts(&self) -> Vec<(ConflictDirection, Tuple)> {
        std::mem::take(&mut *self.shared.conflicts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Bytes received from unvalidated addresses since the last call, for
    /// [`roam_core::Input::Heard`].
    pub fn take_heard(&self) -> Vec<(IpAddr, u64)> {
        std::mem::take(&mut self.shared.plane().heard)
            .into_iter()
            .collect()
    }

    /// What is installed.
    pub fn entries(&self) -> TunEntries {
        let p = self.shared.plane();
        TunEntries {
            flows: p.table().flows(),
            addresses: p.table().addresses(),
            draining: p.draining(),
        }
    }

    pub fn counters(&self) -> TunCounters {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // The packets read and what the logic made of them, under one lock.
        let (plane, from_stack, from_wire, from_tunnel) = {
            let p = self.shared.plane();
            (
                p.counters.clone(),
                get(&s.from_stack),
                get(&s.from_wire),
                get(&s.from_tunnel),
            )
        };
        TunCounters {
            plane,
            from_stack,
            from_wire,
            from_tunnel,
            to_wire: get(&s.to_wire),
            to_stack: get(&s.to_stack),
            oversize: get(&s.oversize),
            send_errors: get(&s.send_errors),
            write_errors: get(&s.write_errors),
            read_errors: get(&s.read_errors),
            conflicts_reported: get(&s.conflicts),
            kernel_errors: self.kernel.errors,
            rules: self.kernel.rules.len() as u64,
            filters: self.kernel.links.values().map(|k| k.len() as u64).sum(),
            interfaces: self.kernel.links.len() as u64,
            ..self.counters.clone()
        }
    }

    /// Stops translating: the packet thread ends, roam's rules and filters go, and the
    /// devices with their routes go when their descriptors close.
    pub fn close(mut self) -> Result<(), TunError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), TunError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.kernel.teardown()
    }
}

impl Drop for TunDataPlane {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!("removing the TUN plane's rules and filters: {e}");
        }
    }
}

impl DataPlane for TunDataPlane {
    type Error = TunError;

    fn apply(&mut self, command: &DataPlaneCommand) -> Result<(), TunError> {
        self.apply_batch(std::slice::from_ref(command))
    }
}

/// What [`TunDataPlane::open_with`] creates inside the namespace.
struct Opened {
    stack: File,
    divert: Option<File>,
    tunnel: Vec<Socket>,
    stack_ifindex: u32,
    divert_ifindex: Option<u32>,
    raw: RawSockets,
    rtnl: Rtnl,
    nudger: Option<Nudger>,
}

impl Opened {
    fn open(config: &TunConfig) -> Result<Opened, TunError> {
        let stack = open_tun(&config.ifname)?;
        // Tunnel mode diverts nothing: its datagrams come to the tunnel sockets.
        let divert = match config.tunnel_port {
            None => Some(open_tun(&config.divert_ifname)?),
            Some(_) => None,
        };
        let tunnel = match config.tunnel_port {
            Some(port) => tunnel_sockets(port)?,
            None => Vec::new(),
        };
        let index = |name: &str| {
            let c = std::ffi::CString::new(name).map_err(|_| TunError::Name(name.to_owned()))?;
            // SAFETY: c is a valid NUL-terminated string.
            match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                0 => Err(TunError::Device {
                    name: name.to_owned(),
                    source: io::Error::last_os_error(),
                }),
                i => Ok(i),
            }
        };
        let stack_ifindex = index(&config.ifname)?;
        let divert_ifindex = match divert {
            Some(_) => Some(index(&config.divert_ifname)?),
            None => None,
        };
        // Unmarked: translated packets are ordinary output of the host.
        let raw = RawSockets::open(None, "translated").map_err(|source| TunError::Raw {
            family: "IPv4",
            source,
        })?;
        if config.tunnel_port.is_some() {
            ignore_path_mtu(&raw).map_err(|source| TunError::Raw {
                family: "IPv4 or IPv6",
                source,
            })?;
        }
        let rtnl = Rtnl::open().map_err(|source| TunError::Netlink {
            what: "opening a netlink route socket".into(),
            source,
        })?;
        let nudger = if config.nudge { Some(Nudger::open()?) } else { None };
        Ok(Opened {
            stack,
            divert,
            tunnel,
            stack_ifindex,
            divert_ifindex,
            raw,
            rtnl,
            nudger,
        })
    }
}

fn check_ifname(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(TunError::Name(name.to_owned()))
    }
}

/// Creates a TUN device (layer 3, no packet information header), non-blocking. It is
/// created in the calling thread's network namespace and removed when the descriptor
/// closes.
fn open_tun(name: &str) -> Result<File, TunError> {
    let err = |source| TunError::Device {
        name: name.to_owned(),
        source,
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    // struct ifreq: the name, then the flags (a short) at offset IFNAMSIZ.
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    req[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which req is large enough for.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(f)
}

/// How much a tunnel socket may queue towards roamd: the kernel's default (about 200
/// KiB) holds about 90 full datagrams, a few milliseconds of a busy link while the
/// packet thread is not scheduled; this holds about as much as the devices' queues.
const TUNNEL_RCVBUF: usize = 4 << 20;

/// Tunnel mode's UDP sockets, bound to `port` on every address: IPv4, and IPv6 (v6
/// only) unless the namespace has no IPv6. Non-blocking, with the destination address
/// of each datagram reported (`IP_PKTINFO`, `IPV6_RECVPKTINFO`): the acceptance rule
/// checks it. They only receive; the datagrams roamd sends leave by the raw sockets.
fn tunnel_sockets(port: u16) -> Result<Vec<Socket>, TunError> {
    let open = |v6: bool| -> io::Result<Socket> {
        let (domain, any): (socket2::Domain, IpAddr) = if v6 {
            (socket2::Domain::IPV6, std::net::Ipv6Addr::UNSPECIFIED.into())
        } else {
            (socket2::Domain::IPV4, std::net::Ipv4Addr::UNSPECIFIED.into())
        };
        let s = Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        let (level, option) = if v6 {
            s.set_only_v6(true)?;
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        };
        set_int(&s, level, option, 1)?;
        // CAP_NET_ADMIN may exceed net.core.rmem_max; without it, what the limit allows.
        if set_int(
            &s,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            TUNNEL_RCVBUF as libc::c_int,
        )
        .is_err()
        {
            s.set_recv_buffer_size(TUNNEL_RCVBUF)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&SockAddr::from(SocketAddr::new(any, port)))?;
        Ok(s)
    };
    let mut sockets = vec![open(false).map_err(|source| TunError::TunnelSocket {
        family: "IPv4",
        port,
        source,
    })?];
    match open(true) {
        Ok(s) => sockets.push(s),
        // IPv6 disabled in the namespace: IPv4 only (as roam's IPv6 route).
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => warn!("no IPv6 tunnel socket: {e}"),
        Err(source) => {
            return Err(TunError::TunnelSocket {
                family: "IPv6",
                port,
                source,
            });
        }
    }
    Ok(sockets)
}

fn set_int(s: &Socket, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid socket, and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tunnel mode: the raw sockets size what they send by the interface's MTU, not by the
/// path MTU cached for the destination (`IP_PMTUDISC_PROBE`, `IPV6_PMTUDISC_PROBE`).
///
/// The cache is keyed by destination address only, and a tunnelled flow's inner and
/// outer packets often share it (the peer that did not move). When the stack sends a
/// segment sized before its rule routed it into `roam0` (whose route carries the lower
/// MTU), its own "fragmentation needed" lowers the path MTU it records for the peer's
/// address on the main table's route, the one the outer datagrams take: every wrapped
/// packet was then fragmented in two (IPv4, DF clear) or refused (IPv6), measured in
/// the lab (one `tcp-move` run in eight: all 19,000 datagrams fragmented). The outer
/// datagrams are sized for the interface already (module docs, "MTU").
fn ignore_path_mtu(raw: &RawSockets) -> io::Result<()> {
    if let Some(s) = raw.to(std::net::Ipv4Addr::UNSPECIFIED.into()) {
        set_int(
            s,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
    }
    if let Some(s) = raw.to(std::net::Ipv6Addr::UNSPECIFIED.into()) {
        set_int(
            s,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
    }
    Ok(())
}

/// Receives one datagram into `buf`: its length, its source address and the address it
/// was sent to (from the packet-information message; unspecified if there was none,
/// which the acceptance rule refuses).
fn recv_datagram(sock: &Socket, buf: &mut [u8]) -> io::Result<(usize, IpAddr, IpAddr)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid, and every pointer set below stays
    // valid (from, iov, control) until recvmsg returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg refers to live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote a socket address of the family it names into `from`,
    // which is large and aligned enough for any; it is read as that family's.
    let src: IpAddr = match i32::from(from.ss_family) {
        libc::AF_INET => {
            let a = unsafe {
                std::ptr::read((&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>())
            };
            std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into()
        }
        libc::AF_INET6 => {
            let a = unsafe {
                std::ptr::read((&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>())
            };
            std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into()
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a datagram without an IP source",
            ));
        }
    };
    let mut dst: IpAddr = match src {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    // SAFETY: the kernel filled msg_controllen bytes of control messages; CMSG_FIRSTHDR
    // and CMSG_NXTHDR stay within them, and each data is read unaligned at its length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    dst = std::net::Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into();
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    dst = std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr).into();
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, src, dst))
}

/// Sends `pkt` (a whole IP packet) to `dst`, routed as a packet from `src` would be
/// (`IP_PKTINFO`/`IPV6_PKTINFO`: source-based rules apply). If `src` is no longer
/// local (an address going away), it is routed by its destination only.
fn send_raw(sock: &Socket, pkt: &[u8], src: IpAddr, dst: IpAddr) -> io::Result<()> {
    let addr = SockAddr::from(SocketAddr::new(dst, 0));
    match sendmsg_with_source(sock, pkt, &addr, src) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EADDRNOTAVAIL)) => {
            sock.send_to(pkt, &addr).map(|_| ())
        }
        r => r,
    }
}

fn sendmsg_with_source(sock: &Socket, pkt: &[u8], addr: &SockAddr, src: IpAddr) -> io::Result<()> {
    // Room for one cmsghdr and the larger of in_pktinfo / in6_pktinfo, 8-byte aligned.
    let mut control = [0u64; 8];
    let (level, kind, data_len) = match src {
        IpAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            std::mem::size_of::<libc::in_pktinfo>(),
        ),
        IpAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            std::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    let mut iov = libc::iovec {
        iov_base: pkt.as_ptr() as *mut libc::c_void,
        iov_len: pkt.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid, and every pointer set below
    // stays valid (control, iov, addr) until sendmsg returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len as u32) } as _;
    debug_assert!(msg.msg_controllen as usize <= std::mem::size_of_val(&control));
    // SAFETY: msg_control points to a zeroed, aligned buffer of msg_controllen bytes,
    // so CMSG_FIRSTHDR returns a valid header and CMSG_DATA room for data_len bytes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        let data = libc::CMSG_DATA(c);
        match src {
            IpAddr::V4(a) => std::ptr::write_unaligned(
                data.cast::<libc::in_pktinfo>(),
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            IpAddr::V6(a) => std::ptr::write_unaligned(
                data.cast::<libc::in6_pktinfo>(),
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr { s6_addr: a.octets() },
                    ipi6_ifindex: 0,
                },
            ),
        }
    }
    // SAFETY: msg is fully initialised above and refers to live buffers.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What an `ip rule` matches: a packet as the local stack sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RuleMatch {
    /// A flow entry's original tuple.
    Flow(Tuple),
    /// An address entry on this host's side: from its original address.
    From(IpAddr),
    /// An address entry on the peer's side: to its original address.
    To(IpAddr),
}

/// What a u32 node matches: a packet as it arrives from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DivertMatch {
    /// A flow entry's current tuple (or a former one, draining).
    Flow(Tuple),
    /// An address entry on this host's side: to its current address.
    To(IpAddr),
    /// An address entry on the peer's side: from its current address.
    From(IpAddr),
}

impl DivertMatch {
    fn is_ipv4(&self) -> bool {
        match self {
            DivertMatch::Flow(t) => t.local.ip().is_ipv4(),
            DivertMatch::To(a) | DivertMatch::From(a) => a.is_ipv4(),
        }
    }
}

/// The kernel state the packet logic's table calls for: a rule per entry's original
/// side, a diversion per current side that differs from it and per drain alias (none
/// in tunnel mode: the peer's packets arrive wrapped, on the tunnel sockets).
fn desired(p: &PacketPlane) -> (BTreeSet<RuleMatch>, BTreeSet<DivertMatch>) {
    let (rules, mut divert) = desired_translate(p);
    if p.tunnel_port().is_some() {
        divert.clear();
    }
    (rules, divert)
}

fn desired_translate(p: &PacketPlane) -> (BTreeSet<RuleMatch>, BTreeSet<DivertMatch>) {
    let mut rules = BTreeSet::new();
    let mut divert = BTreeSet::new();
    for m in p.table().flows() {
        rules.insert(RuleMatch::Flow(m.original));
        if m.current != m.original {
            divert.insert(DivertMatch::Flow(m.current));
        }
    }
    for a in p.table().addresses() {
        if a.original == a.current {
            continue;
        }
        match a.side {
            Side::Local => {
                rules.insert(RuleMatch::From(a.original));
                divert.insert(DivertMatch::To(a.current));
            }
            Side::Remote => {
                rules.insert(RuleMatch::To(a.original));
                divert.insert(DivertMatch::From(a.current));
            }
        }
    }
    for d in p.draining() {
        divert.insert(DivertMatch::Flow(d.current));
    }
    (rules, divert)
}

/// The kernel side: rules, routes, filters. Used from the command side only.
struct Kernel {
    rtnl: Rtnl,
    table: u32,
    rule_priority: u32,
    tc_priority: u16,
    stack_ifindex: u32,
    /// `roam0d`, in translate mode; `None` in tunnel mode (nothing is diverted).
    divert_ifindex: Option<u32>,
    rules: BTreeSet<RuleMatch>,
    /// The u32 node id of each diverted match (in its family's table).
    ids: BTreeMap<DivertMatch, u32>,
    /// Interfaces with roam's u32 tree, and the matches installed there.
    links: BTreeMap<u32, BTreeSet<DivertMatch>>,
    errors: u64,
}

impl Kernel {
    /// Prepares the devices and roam's routing table, and removes rules and filters a
    /// previous run left behind.
    fn setup(&mut self) -> Result<(), TunError> {
        let mtu = self.smallest_mtu()?;
        let devices = std::iter::once(self.stack_ifindex).chain(self.divert_ifindex);
        for index in devices.collect::<Vec<_>>() {
            // Address generation off before the device is up (see the module docs).
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.attributes = vec![
                LinkAttribute::Mtu(mtu),
                LinkAttribute::TxQueueLen(QUEUE_LEN),
                LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
                    In6AddrGenMode::None,
                )])]),
            ];
            self.call("configuring a TUN device", RouteNetlinkMessage::SetLink(m), 0)?;
            let mut m = LinkMessage::default();
            m.header.index = index;
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
            self.call("bringing a TUN device up", RouteNetlinkMessage::SetLink(m), 0)?;
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut r = RouteMessage::default();
            r.header.address_family = family;
            r.header.protocol = RouteProtocol::Static;
            r.header.scope = RouteScope::Link;
            r.header.kind = RouteType::Unicast;
            r.attributes = vec![
                RouteAttribute::Table(self.table),
                RouteAttribute::Oif(self.stack_ifindex),
            ];
            if self.divert_ifindex.is_none() {
                // Tunnel mode: what the stack sends into the device must fit once
                // wrapped (module docs, "Tunnel mode").
                let less = tunnel::overhead(family == AddressFamily::Inet6) as u32;
                r.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(
                    mtu.saturating_sub(less),
                )]));
            }
            let what = format!(
                "adding the default route of table {} via the TUN device",
                self.table
            );
            match self.call(
                &what,
                RouteNetlinkMessage::NewRoute(r),
                NLM_F_CREATE | NLM_F_REPLACE,
            ) {
                // IPv6 disabled in the namespace: IPv4 only.
                Err(e) if family == AddressFamily::Inet6 => warn!("{e}"),
                r => r?,
            }
        }
        self.remove_stale_rules()?;
        Ok(())
    }

    /// The smallest MTU of the other interfaces that are up (1500 if none).
    fn smallest_mtu(&mut self) -> Result<u32, TunError> {
        let links = self.dump_links()?;
        Ok(links
            .iter()
            .filter(|l| l.header.flags.contains(LinkFlags::Up))
            .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
            .filter(|l| l.header.index != self.stack_ifindex && Some(l.header.index) != self.divert_ifindex)
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
            })
            .min()
            .unwrap_or(1500))
    }

    fn dump_links(&mut self) -> Result<Vec<LinkMessage>, TunError> {
        let replies = self
            .rtnl
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|source| TunError::Netlink {
                what: "listing links".into(),
                source,
            })?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Removes rules into roam's table with roam's protocol (a crashed run's).
    fn remove_stale_rules(&mut self) -> Result<(), TunError> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RuleMessage::default();
            q.header.family = family;
            let Ok(replies) = self.rtnl.dump(RouteNetlinkMessage::GetRule(q)) else {
                continue;
            };
            for m in replies {
                let RouteNetlinkMessage::NewRule(r) = m else {
                    continue;
                };
                let ours = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Protocol(RouteProtocol::Other(p)) if *p == ROAM_ADDRESS_PROTO))
                    && r.attributes
                        .iter()
                        .any(|a| matches!(a, RuleAttribute::Table(t) if *t == self.table));
                if ours {
                    debug!(?r, "removing a rule a previous run left");
                    self.call("removing a stale rule", RouteNetlinkMessage::DelRule(r), 0)?;
                }
            }
        }
        Ok(())
    }

    /// Brings the kernel in line with the desired rules and diversions, in the order a
    /// move needs: interfaces, new diversions (the answers to the first translated
    /// packet must not reach the stack as they are), rules, then what is no longer
    /// wanted. Keeps going after an error (each change is independent) and returns the
    /// first.
    fn reconcile(
        &mut self,
        rules: &BTreeSet<RuleMatch>,
        divert: &BTreeSet<DivertMatch>,
    ) -> Result<(), TunError> {
        let mut first = None;
        if self.divert_ifindex.is_none() {
            // Tunnel mode: rules only; no interface gets a qdisc or a filter.
            self.sync_rules(rules, &mut first);
            return first.map_or(Ok(()), Err);
        }
        self.sync_links(&mut first);
        self.assign_ids(divert, &mut first);
        self.add_diversions(divert, &mut first);
        self.sync_rules(rules, &mut first);
        self.remove_diversions(divert, &mut first);
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Counts and logs a failed change; keeps the first for the caller.
    fn failed(&mut self, e: TunError, first: &mut Option<TunError>) {
        self.errors += 1;
        warn!("TUN plane: {e}");
        first.get_or_insert(e);
    }

    /// New interfaces get roam's u32 tree; vanished ones are forgotten.
    fn sync_links(&mut self, first: &mut Option<TunError>) {
        let links = match self.dump_links() {
            Ok(l) => l,
            Err(e) => return self.failed(e, first),
        };
        let present: BTreeSet<u32> = links
            .iter()
            .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
            .map(|l| l.header.index)
            .filter(|i| *i != self.stack_ifindex && Some(*i) != self.divert_ifindex)
            .collect();
        self.links.retain(|i, _| present.contains(i));
        for index in present {
            if self.links.contains_key(&index) {
                continue;
            }
            match self.prepare_link(index) {
                Ok(()) => {
                    self.links.insert(index, BTreeSet::new());
                }
                Err(e) => self.failed(e, first),
            }
        }
    }

    /// A u32 node id for each new diverted match, unique in its family's table.
    fn assign_ids(&mut self, divert: &BTreeSet<DivertMatch>, first: &mut Option<TunError>) {
        for m in divert {
            if self.ids.contains_key(m) {
                continue;
            }
            let used: BTreeSet<u32> = self
                .ids
                .iter()
                .filter(|(k, _)| k.is_ipv4() == m.is_ipv4())
                .map(|(_, v)| *v)
                .collect();
            match (1..=MAX_NODE).find(|i| !used.contains(i)) {
                Some(id) => {
                    self.ids.insert(*m, id);
                }
                None => {
                    let family = if m.is_ipv4() { "IPv4" } else { "IPv6" };
                    self.failed(
                        TunError::TooMany {
                            family,
                            max: MAX_NODE,
                        },
                        first,
                    );
                }
            }
        }
    }

    fn add_diversions(&mut self, divert: &BTreeSet<DivertMatch>, first: &mut Option<TunError>) {
        let wanted: Vec<(u32, DivertMatch, u32)> = self
            .links
            .iter()
            .flat_map(|(index, installed)| {
                divert
                    .difference(installed)
                    .filter_map(|m| Some((*index, *m, *self.ids.get(m)?)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (index, m, id) in wanted {
            match self.add_filter(index, &m, id) {
                Ok(()) => {
                    self.links.entry(index).or_default().insert(m);
                }
                Err(e) => self.failed(e, first),
            }
        }
    }

    /// Removes the diversions no longer wanted (after the rules: a flow going back to
    /// its original tuple stops being routed into `roam0` first), and the ids no match
    /// uses any more.
    fn remove_diversions(&mut self, divert: &BTreeSet<DivertMatch>, first: &mut Option<TunError>) {
        let unwanted: Vec<(u32, DivertMatch)> = self
            .links
            .iter()
            .flat_map(|(index, installed)| {
                installed
                    .difference(divert)
                    .map(|m| (*index, *m))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (index, m) in unwanted {
            let r = match self.ids.get(&m) {
                Some(&id) => self.delete_filter(index, &m, id),
                None => Ok(()),
            };
            match r {
                Err(e) if !e.is_errno(libc::ENOENT) => self.failed(e, first),
                _ => {
                    if let Some(set) = self.links.get_mut(&index) {
                        set.remove(&m);
                    }
                }
            }
        }
        let live: BTreeSet<DivertMatch> = self.links.values().flatten().copied().collect();
        self.ids.retain(|m, _| divert.contains(m) || live.contains(m));
    }

    fn sync_rules(&mut self, rules: &BTreeSet<RuleMatch>, first: &mut Option<TunError>) {
        let add: Vec<RuleMatch> = rules.difference(&self.rules).copied().collect();
        for m in add {
            let msg = RouteNetlinkMessage::NewRule(self.rule(&m));
            match self.call(
                &format!("adding the rule for {m:?}"),
                msg,
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                // EEXIST: already there (a retry): it is what is wanted.
                Err(e) if !e.is_errno(libc::EEXIST) => self.failed(e, first),
                _ => {
                    self.rules.insert(m);
                }
            }
        }
        let remove: Vec<RuleMatch> = self.rules.difference(rules).copied().collect();
        for m in remove {
            let msg = RouteNetlinkMessage::DelRule(self.rule(&m));
            match self.call(&format!("removing the rule for {m:?}"), msg, 0) {
                Err(e) if !e.is_errno(libc::ENOENT) => self.failed(e, first),
                _ => {
                    self.rules.remove(&m);
                }
            }
        }
    }

    /// Removes every rule and every interface's tree.
    fn teardown(&mut self) -> Result<(), TunError> {
        let mut first = None;
        for m in std::mem::take(&mut self.rules) {
            if let Err(e) = self.call("removing a rule", RouteNetlinkMessage::DelRule(self.rule(&m)), 0) {
                first.get_or_insert(e);
            }
        }
        for index in std::mem::take(&mut self.links).into_keys() {
            // Gone already (ENOENT), or with its interface (ENODEV, EINVAL).
            match self.delete_tree(index) {
                Err(e)
                    if ![libc::ENOENT, libc::ENODEV, libc::EINVAL]
                        .iter()
                        .any(|n| e.is_errno(*n)) =>
                {
                    first.get_or_insert(e);
                }
                _ => {}
            }
        }
        self.ids.clear();
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn rule(&self, m: &RuleMatch) -> RuleMessage {
        rule_message(m, self.table, self.rule_priority)
    }

    /// A clsact qdisc (or the one there), then roam's u32 tree on its ingress hook.
    fn prepare_link(&mut self, index: u32) -> Result<(), TunError> {
        let mut q = TcMessage::with_index(index as i32);
        q.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        q.header.parent = TcHandle::CLSACT;
        q.attributes = vec![TcAttribute::Kind("clsact".into())];
        match self.call(
            &format!("adding a clsact qdisc to interface {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(q),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_errno(libc::EEXIST) => {}
            r => r?,
        }
        // A previous run's tree, if roamd died without removing it.
        match self.delete_tree(index) {
            Err(e) if e.is_errno(libc::ENOENT) || e.is_errno(libc::EINVAL) => {}
            r => r?,
        }
        for (ht, what) in [(HT_V4, "IPv4"), (HT_V6, "IPv6")] {
            let m = self.u32_message(index, ht, vec![TcFilterU32Option::Divisor(1)]);
            self.call(
                &format!("adding the {what} u32 table on interface {index}"),
                RouteNetlinkMessage::NewTrafficFilter(m),
                NLM_F_CREATE | NLM_F_EXCL,
            )?;
        }
        for (node, ht, sel) in [(1, HT_V4, link_selector_v4()), (2, HT_V6, link_selector_v6())] {
            let m = self.u32_message(
                index,
                HT_ROOT | node,
                vec![
                    TcFilterU32Option::Hash(HT_ROOT),
                    TcFilterU32Option::Link(ht),
                    TcFilterU32Option::Selector(sel),
                ],
            );
            self.call(
                &format!("adding a u32 link on interface {index}"),
                RouteNetlinkMessage::NewTrafficFilter(m),
                NLM_F_CREATE | NLM_F_EXCL,
            )?;
        }
        Ok(())
    }

    fn add_filter(&mut self, index: u32, m: &DivertMatch, id: u32) -> Result<(), TunError> {
        let Some(divert) = self.divert_ifindex else {
            return Ok(());
        };
        let ht = if m.is_ipv4() { HT_V4 } else { HT_V6 };
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.keys = divert_keys(m);
        sel.nkeys = sel.keys.len() as u8;
        let msg = self.u32_message(
            index,
            ht | id,
            vec![
                TcFilterU32Option::Hash(ht),
                TcFilterU32Option::Selector(sel),
                TcFilterU32Option::Action(vec![redirect(divert)]),
            ],
        );
        self.call(
            &format!("diverting {m:?} on interface {index}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn delete_filter(&mut self, index: u32, m: &DivertMatch, id: u32) -> Result<(), TunError> {
        let ht = if m.is_ipv4() { HT_V4 } else { HT_V6 };
        let mut msg = self.u32_message(index, ht | id, Vec::new());
        msg.attributes.truncate(1);
        self.call(
            &format!("removing the diversion of {m:?} on interface {index}"),
            RouteNetlinkMessage::DelTrafficFilter(msg),
            0,
        )
    }

    /// Deletes roam's whole u32 instance (its priority and protocol) on an interface.
    fn delete_tree(&mut self, index: u32) -> Result<(), TunError> {
        let mut msg = self.u32_message(index, 0, Vec::new());
        msg.attributes.clear();
        self.call(
            &format!("removing roam's filters on interface {index}"),
            RouteNetlinkMessage::DelTrafficFilter(msg),
            0,
        )
    }

    /// A u32 filter message on `index`'s ingress hook at roam's priority.
    fn u32_message(&self, index: u32, handle: u32, options: Vec<TcFilterU32Option>) -> TcMessage {
        let mut m = TcMessage::with_index(index as i32);
        m.header = TcHeader {
            index: index as i32,
            handle: TcHandle::from(handle),
            parent: TcHandle {
                major: 0xffff,
                minor: TcHandle::MIN_INGRESS,
            },
            // tcm_info: priority in the high half, the protocol (network order) low.
            info: (u32::from(self.tc_priority) << 16) | u32::from(ETH_P_ALL.to_be()),
            ..TcHeader::default()
        };
        m.attributes = vec![TcAttribute::Kind("u32".into())];
        if !options.is_empty() {
            m.attributes.push(TcAttribute::Options(
                options.into_iter().map(TcOption::U32).collect(),
            ));
        }
        m
    }

    fn call(&mut self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), TunError> {
        self.rtnl.call(msg, flags).map_err(|source| TunError::Netlink {
            what: what.to_owned(),
            source,
        })
    }
}

/// The `ip rule` for a match: to roam's table, at roam's priority, marked as roam's.
fn rule_message(m: &RuleMatch, table: u32, priority: u32) -> RuleMessage {
    let full = |a: &IpAddr| if a.is_ipv4() { 32 } else { 128 };
    let mut r = RuleMessage::default();
    r.header.action = RuleAction::ToTable;
    r.attributes = vec![
        RuleAttribute::Priority(priority),
        RuleAttribute::Table(table),
        RuleAttribute::Protocol(RouteProtocol::Other(ROAM_ADDRESS_PROTO)),
    ];
    let (src, dst) = match m {
        RuleMatch::Flow(t) => {
            r.attributes.push(RuleAttribute::IpProtocol(match t.protocol {
                Protocol::Tcp => IpProtocol::Tcp,
                Protocol::Udp => IpProtocol::Udp,
            }));
            r.attributes.push(RuleAttribute::SourcePortRange(RulePortRange {
                start: t.local.port(),
                end: t.local.port(),
            }));
            r.attributes
                .push(RuleAttribute::DestinationPortRange(RulePortRange {
                    start: t.remote.port(),
                    end: t.remote.port(),
                }));
            (Some(t.local.ip()), Some(t.remote.ip()))
        }
        RuleMatch::From(a) => (Some(*a), None),
        RuleMatch::To(a) => (None, Some(*a)),
    };
    let family_of = src.or(dst).expect("a rule names an address");
    r.header.family = if family_of.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    if let Some(s) = src {
        r.header.src_len = full(&s);
        r.attributes.push(RuleAttribute::Source(s));
    }
    if let Some(d) = dst {
        r.header.dst_len = full(&d);
        r.attributes.push(RuleAttribute::Destination(d));
    }
    r
}

/// Root node of IPv4: version 4; the transport header is IHL * 4 bytes in (the 16-bit
/// word at 0, masked to the IHL nibble, shifted right by 6: `offset at 0 mask 0x0f00
/// shift 6`).
fn link_selector_v4() -> TcU32Selector {
    let mut s = TcU32Selector::default();
    s.flags = TcU32SelectorFlags::VarOffset;
    s.offoff = 0;
    s.offmask = 0x0f00;
    s.offshift = 6;
    s.keys = vec![version_key(4)];
    s.nkeys = 1;
    s
}

/// Root node of IPv6: version 6; the transport header right after the fixed header.
fn link_selector_v6() -> TcU32Selector {
    let mut s = TcU32Selector::default();
    s.flags = TcU32SelectorFlags::Offset;
    s.off = 40;
    s.keys = vec![version_key(6)];
    s.nkeys = 1;
    s
}

fn version_key(v: u32) -> TcU32Key {
    key(v << 28, 0xf000_0000, 0)
}

fn key(val: u32, mask: u32, off: i32) -> TcU32Key {
    let mut k = TcU32Key::default();
    k.val = val;
    k.mask = mask;
    k.off = off;
    k
}

/// The u32 keys of a diverted match, for a packet arriving from the wire: source the
/// peer's end, destination this host's. Offsets are the IP header's; the ports' word is
/// at the transport header (`at nexthdr+0`, placed by the family's link node).
fn divert_keys(m: &DivertMatch) -> Vec<TcU32Key> {
    let addr = |a: IpAddr, v4_off: i32, v6_off: i32| -> Vec<TcU32Key> {
        match a {
            IpAddr::V4(a) => vec![key(u32::from(a), u32::MAX, v4_off)],
            IpAddr::V6(a) => a
                .octets()
                .chunks(4)
                .enumerate()
                .map(|(i, w)| {
                    key(
                        u32::from_be_bytes(w.try_into().expect("4 bytes")),
                        u32::MAX,
                        v6_off + 4 * i as i32,
                    )
                })
                .collect(),
        }
    };
    let (src, dst) = (|a| addr(a, 12, 8), |a| addr(a, 16, 24));
    match *m {
        DivertMatch::Flow(t) => {
            let (remote, local) = (t.remote.ip().to_canonical(), t.local.ip().to_canonical());
            let mut keys = src(remote);
            keys.extend(dst(local));
            let proto = u32::from(t.protocol.ip_number());
            keys.push(if local.is_ipv4() {
                key(proto << 16, 0x00ff_0000, 8)
            } else {
                key(proto << 8, 0x0000_ff00, 4)
            });
            let mut ports = key(
                (u32::from(t.remote.port()) << 16) | u32::from(t.local.port()),
                u32::MAX,
                0,
            );
            ports.offmask = -1;
            keys.push(ports);
            keys
        }
        DivertMatch::To(a) => dst(a.to_canonical()),
        DivertMatch::From(a) => src(a.to_canonical()),
    }
}

/// `action mirred egress redirect dev <divert>`: the packet is taken (stolen) from the
/// interface's ingress and queued to the divert device.
fn redirect(ifindex: u32) -> TcAction {
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = ifindex;
    let mut a = TcAction::default();
    a.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];
    a
}

/// A synchronous rtnetlink client: one request at a time, each answered (ACK, error
/// or dump) before the next. The command side of the plane is synchronous
/// ([`DataPlane::apply`]) and must not need an async runtime.
struct Rtnl {
    sock: rtnetlink::sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
        socket2::SockRef::from(&sock.as_fd()).set_read_timeout(Some(NETLINK_TIMEOUT))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut out = vec![0u8; m.buffer_len()];
        m.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// The messages answering request `seq`, until `done` says so. Errors from the
    /// kernel come back as `io::Error`s with their errno.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage), dump: bool) -> io::Result<()> {
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut at = 0;
            while at < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                at += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        if !dump {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A request answered by an ACK.
    fn call(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_ACK | flags)?;
        self.receive(seq, |_| {}, false)
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |m| out.push(m), true)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_core::translate::TableChange;

    fn tcp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }

    fn install(p: &mut PacketPlane, original: Tuple, current: Tuple, hold: bool) {
        p.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
            original,
            current,
            hold,
        })))
        .unwrap();
    }

    #[test]
    fn each_entry_asks_for_a_rule_on_its_original_side_and_a_diversion_on_its_current_side() {
        let mut p = PacketPlane::new(1);
        let o = tcp("10.0.1.10:40000", "10.0.3.11:5001");
        let c = tcp("10.0.2.10:40000", "10.0.3.11:5001");
        // Held with nothing changed yet: the stack's packets must come to roamd (to be
        // held), nothing arrives under another tuple.
        install(&mut p, o, o, true);
        let (rules, divert) = desired(&p);
        assert_eq!(rules, BTreeSet::from([RuleMatch::Flow(o)]));
        assert!(divert.is_empty());
        install(&mut p, o, c, false);
        let (rules, divert) = desired(&p);
        assert_eq!(rules, BTreeSet::from([RuleMatch::Flow(o)]));
        assert_eq!(divert, BTreeSet::from([DivertMatch::Flow(c)]));
        // Moved again: the former current tuple drains (still diverted) next to the new.
        let c2 = tcp("10.0.4.10:40000", "10.0.3.11:5001");
        install(&mut p, o, c2, false);
        let (_, divert) = desired(&p);
        assert_eq!(
            divert,
            BTreeSet::from([DivertMatch::Flow(c), DivertMatch::Flow(c2)])
        );
        // Address entries: the original side routes, the current side diverts.
        p.apply(&DataPlaneCommand::Table(TableChange::InstallAddress(
            AddressMapping {
                side: Side::Remote,
                original: "10.9.0.1".parse().unwrap(),
                current: "10.9.0.2".parse().unwrap(),
            },
        )))
        .unwrap();
        let (rules, divert) = desired(&p);
        assert!(rules.contains(&RuleMatch::To("10.9.0.1".parse().unwrap())));
        assert!(divert.contains(&DivertMatch::From("10.9.0.2".parse().unwrap())));
    }

    #[test]
    fn tunnel_mode_asks_for_rules_and_never_for_a_diversion() {
        let mut p = PacketPlane::new_tunnel(1, 4792);
        let o = tcp("10.0.1.10:40000", "10.0.3.11:5001");
        install(&mut p, o, tcp("10.0.2.10:40000", "10.0.3.11:5001"), false);
        // Moved again: the former current tuple drains, still without a diversion.
        install(&mut p, o, tcp("10.0.4.10:40000", "10.0.3.11:5001"), false);
        assert_eq!(p.draining().len(), 1);
        let (rules, divert) = desired(&p);
        assert_eq!(rules, BTreeSet::from([RuleMatch::Flow(o)]));
        assert!(divert.is_empty(), "{divert:?}");
    }

    #[test]
    fn a_flow_node_matches_the_arriving_packet_field_by_field() {
        // The current tuple from this host's view: the packet comes from the remote end.
        let t = tcp("10.0.2.10:40000", "10.0.3.11:5001");
        let keys = divert_keys(&DivertMatch::Flow(t));
        let k = |off: i32| keys.iter().find(|k| k.off == off && k.offmask == 0).unwrap();
        assert_eq!(k(12).val, u32::from_be_bytes([10, 0, 3, 11]), "source: the peer");
        assert_eq!(
            k(16).val,
            u32::from_be_bytes([10, 0, 2, 10]),
            "destination: this host"
        );
        assert_eq!((k(8).val, k(8).mask), (6 << 16, 0x00ff_0000), "protocol byte 9");
        let ports = keys.iter().find(|k| k.offmask == -1).unwrap();
        assert_eq!(
            ports.val,
            (5001 << 16) | 40000,
            "source port, then destination port"
        );
        assert_eq!(ports.off, 0);

        let t6 = tcp("[fd00::2]:40000", "[fd00::3]:5001");
        let keys = divert_keys(&DivertMatch::Flow(t6));
        // Four words per address, the next-header byte, the ports.
        assert_eq!(keys.len(), 4 + 4 + 1 + 1);
        let k = |off: i32| keys.iter().find(|k| k.off == off && k.offmask == 0).unwrap();
        assert_eq!(k(8).val, 0xfd00_0000, "source starts at byte 8");
        assert_eq!(k(20).val, 3, "source ends at byte 23");
        assert_eq!(k(36).val, 2, "destination ends at byte 39");
        assert_eq!((k(4).val, k(4).mask), (6 << 8, 0x0000_ff00), "next header byte 6");
    }

    #[test]
    fn a_rule_names_the_whole_original_tuple_and_is_marked_as_roams() {
        let t = tcp("[fd00::1]:40000", "[fd00::3]:5001");
        let r = rule_message(&RuleMatch::Flow(t), 7, 9);
        assert_eq!(r.header.family, AddressFamily::Inet6);
        assert_eq!((r.header.src_len, r.header.dst_len), (128, 128));
        assert_eq!(r.header.action, RuleAction::ToTable);
        for a in [
            RuleAttribute::Table(7),
            RuleAttribute::Priority(9),
            RuleAttribute::IpProtocol(IpProtocol::Tcp),
            RuleAttribute::Source("fd00::1".parse().unwrap()),
            RuleAttribute::Destination("fd00::3".parse().unwrap()),
            RuleAttribute::SourcePortRange(RulePortRange {
                start: 40000,
                end: 40000,
            }),
            RuleAttribute::DestinationPortRange(RulePortRange {
                start: 5001,
                end: 5001,
            }),
            RuleAttribute::Protocol(RouteProtocol::Other(ROAM_ADDRESS_PROTO)),
        ] {
            assert!(r.attributes.contains(&a), "{a:?} missing from {r:?}");
        }
        let r = rule_message(&RuleMatch::From("10.0.0.1".parse().unwrap()), 7, 9);
        assert_eq!(
            (r.header.family, r.header.src_len, r.header.dst_len),
            (AddressFamily::Inet, 32, 0)
        );
    }

    #[test]
    fn device_names_are_checked() {
        assert!(check_ifname("roam0").is_ok());
        for bad in ["", "a-name-that-is-too-long", "roam 0", "roam/0"] {
            assert!(matches!(check_ifname(bad), Err(TunError::Name(_))), "{bad:?}");
        }
    }
}
