//! The kernel data plane: roam's translation table as one nftables table (`inet roam`)
//! per network namespace, driven through `nft -f -` transactions.
//!
//! [`NftDataPlane`] obeys the endpoint's [`DataPlaneCommand`]s like the simulator's data
//! plane (`roam-sim/src/dataplane.rs`) does, with what the kernel can and cannot do
//! (below). Every batch of commands is one nft transaction ([`NftDataPlane::apply_batch`]):
//! nftables commits a batch atomically, so a refused batch changes nothing in the kernel,
//! and the in-memory mirror ([`NftDataPlane::entries`]) is only updated once the kernel
//! has accepted it.
//!
//! # Where the rewrite happens, and why (verified on Linux 6.18, nft 1.0.6)
//!
//! ```text
//!  socket (original tuple)                              socket (original tuple)
//!    | output                                              ^ input (routing: local)
//!    v                                                     |
//!  [egress: type route, hook output, prio -300]      [ingress: type filter, hook prerouting, prio -150]
//!    |  original -> current, then re-route               |  current -> original
//!    v                                                   |
//!  conntrack (-200) sees current tuples               conntrack (-200) sees current tuples
//!    v                                                   ^
//!   wire ------------------------------------------------ wire
//! ```
//!
//! - **Egress** is a `type route` chain on the output hook at priority -300. A rewrite at
//!   the device (netdev egress, tc) comes after routing and neighbour resolution, so the
//!   packet would leave by the interface and next hop chosen for the *original* source.
//!   A `route` chain makes the kernel route the packet again when it changed an address
//!   (`ip_route_me_harder`/`ip6_route_me_harder`): the mover's packets leave from its new
//!   address, by the interface that address lives on, and its ARP requests carry that
//!   address. -300 is before connection tracking (-200), so conntrack (and any NAT or
//!   firewall after it) sees the tuple that is on the wire.
//! - **Ingress** is a `type filter` chain on prerouting at -150: after conntrack (which
//!   again sees the wire's tuple), before the routing decision, which then finds the
//!   original local address local (it stays on the host, e.g. as a /32 on `lo`: Linux
//!   accepts packets for any local address on any interface). The remote address is
//!   rewritten before routing too, so reverse-path filtering sees the *original* remote
//!   address: a peer with strict `rp_filter` must route the mover's old address out of
//!   the interface its new one arrives on (true of a single-homed host; use loose mode,
//!   `rp_filter=2`, otherwise).
//! - Checksums: nft updates the IPv4 header checksum and the TCP/UDP checksum (pseudo
//!   header included) for address rewrites (`NFT_PAYLOAD_L4CSUM_PSEUDOHDR`; the kernel
//!   finds the L4 header itself), and the TCP/UDP checksum for port rewrites. It leaves a
//!   zero UDP-over-IPv4 checksum ("none", RFC 768) alone on address rewrites, but **not**
//!   on port rewrites: `udp sport set` turns a zero checksum into a wrong non-zero one
//!   (measured: every datagram dropped as `UdpInCsumErrors`). UDP-over-IPv4 flows whose
//!   ports change therefore get two rules: `udp checksum 0` rewrites the ports with raw
//!   payload writes (`@th,0,16`, no checksum update) and `udp checksum != 0` with
//!   `udp sport set`. IPv6 forbids a zero UDP checksum (RFC 8200 §8.1).
//!
//! # Rule layout (O(1) per packet whatever the number of flows)
//!
//! - Flow entries: one verdict map per (direction, family, protocol), keyed by the
//!   concatenation `saddr . sport . daddr . dport` of the packet as it is seen at that
//!   hook: `eg4tcp`, `eg4udp`, `eg6tcp`, `eg6udp` (keyed by the original tuple) and
//!   `in4tcp`, ... (keyed by the current tuple as it arrives). An element jumps (`goto`)
//!   to a small chain of the flow: `e<id>` (egress: the `set` statements of the fields
//!   that change, a counter, then the budget check; or, for a held flow, a counter and
//!   `drop`) and `i<id>` (ingress: all four fields set back to the original ones, so the
//!   chain depends on the original tuple only and also serves the drain alias below).
//!   One lookup per packet and family/protocol, then a handful of statements.
//!   A flow whose current tuple equals its original one has no element (nothing to do)
//!   unless it is held. Why a chain per flow rather than maps of values
//!   (`ip saddr set <key> map @m`): nft evaluates each `set` statement's lookup on the
//!   packet as the previous statements left it, so only the first field could be looked
//!   up by the original tuple; the partly rewritten keys of later fields are not unique.
//! - Address entries (`InstallAddress`, seed 002's virtual/actual address): plain maps
//!   address -> address per direction, family and side (`ea4l`: egress, local side,
//!   original -> current; `ia4r`: ingress, remote side, current -> original; ...) used as
//!   `ip saddr set ip saddr map @ea4l`. They come after the flow maps, and a flow's chain
//!   is reached by `goto`, so a flow entry beats an address entry as in the rewriter.
//! - Hold (seed 001 FIG. 3 step 305): the flow's egress chain counts and drops. TCP
//!   retransmits (the output hook's drop reaches `tcp_transmit_skb` as an error and the
//!   segment stays queued). A UDP application's `send` fails with `EPERM` while the flow
//!   is held (or over budget): nftables' drop at the output hook is reported to the
//!   sender, and there is no silent variant short of a device that discards.
//! - Return routability: per unvalidated address two named quotas, `bc<n>` (the cap,
//!   every translated byte counts) and `ba<n>` (`min(cap, 3 * received)`, bare ACKs
//!   exempt, as in the simulator, so the mover's sender is not stalled for the round
//!   trip the validation takes), found through quota maps (`bcap4`, `bamp4`, ...) in the
//!   `budget` chain that every translated egress packet passes (`Validated` and
//!   `Unreachable` put the address in the set `bok4`/`bok6` it lets through first).
//!   Untranslated packets to
//!   the address (the endpoint's own control messages, its path challenges in
//!   particular) are never limited: the endpoint budgets those itself. A bare ACK is
//!   recognised as a TCP segment without SYN, FIN, RST or PSH of at most 100 bytes (an
//!   IPv6 header and a TCP header with the largest options); nft cannot compare the IP
//!   length with the header lengths, so a data segment of under ~50 bytes without PSH
//!   passes as an ACK, still within the cap. The kernel counts; it cannot raise the
//!   budget from what arrives from the address ([`Input::Heard`](roam_core::Input::Heard)
//!   has no kernel counterpart here): `received` stays what the endpoint said, the
//!   conservative side. An nft quota is spent by every packet it sees, dropped ones
//!   included, and once over it stays over: what crosses the limit is dropped, and so is
//!   everything after it (the simulator would still send a smaller packet that fits).
//! - Drain (seed 001 FIG. 4 step 404, the simulator's `DRAIN`): when a flow's current tuple
//!   changes (or its entry goes), packets still arriving under the previous current tuple
//!   are translated for [`NftConfig::drain`] more: the previous key stays in the ingress
//!   map as an element with a timeout (the maps have `flags timeout`; adding an element
//!   that exists, with the same data and a timeout, sets its timeout: verified on 6.18),
//!   pointing to the same ingress chain. The kernel forgets it by itself; the flow's ingress chain, which
//!   such an element references, is deleted later by [`NftDataPlane::maintain`] (an
//!   element the kernel has expired but not yet garbage-collected still pins its chain).
//! - Nudges: segments injected by [`crate::nudge`] carry [`NUDGE_MARK`]; the egress chain
//!   lets them through first, untranslated and untracked (`notrack`), and so does the
//!   ingress chain when they come back in through loopback. The ICMP errors
//!   [`crate::icmp`] re-injects carry the same mark.
//! - ICMP errors: before the flow maps, each chain sends ICMP errors that quote an
//!   address of a translated entry (sets `icq4`/`icq6`, keyed by the raw quoted address)
//!   to [`crate::icmp`]'s relay, which translates them with roam-core's rewriter.
//! - Retransmission kicks ([`crate::icmp`], "Retransmission kicks"): with the relay, a
//!   translated TCP flow's egress chain starts with a rule that, when the flow's original
//!   tuple is in the set `kick4`/`kick6`, deletes it from there (from the packet path:
//!   one-shot) and logs the packet's headers to the relay. [`DataPlaneCommand::Resend`]
//!   adds the element, with a timeout (2 s); the relay then makes the local
//!   stack retransmit what the peer's move lost, at once.
//! - Named counters: `eg_translated`, `in_translated`, `hold_dropped`, `budget_dropped`
//!   ([`NftDataPlane::counters`]).
//!
//! # Only additions on the paths of a move
//!
//! A transaction that deletes anything (a rule, an element, a chain; even updating a
//! quota) costs an RCU grace period: nf_tables frees what it replaced from a worker, and
//! when nft closes its netlink socket at exit the kernel waits for that worker
//! (`NETLINK_URELEASE`; measured with strace: the socket's `close()` takes 8 to 15 ms on
//! the loaded lab machine, against ~2.5 ms for the whole of an add-only run). So the
//! transactions a move makes only add:
//!
//! - a first entry: chains, rules, elements;
//! - a changed entry (hold released, new current tuple, back to the original tuple): the
//!   new egress rules are *inserted at the head* of the flow's chain and shadow the old
//!   ones (every rule set ends in a verdict); the previous ingress element gets its drain
//!   timeout (or a 1 ms one) instead of being deleted;
//! - `Validated`/`Unreachable`: the exemption set gets the address;
//! - `Resend`: the kick set gets the flow (the packet path deletes it, or its timeout).
//!
//! [`NftDataPlane::maintain`], off the critical path, compacts shadowed chains, deletes
//! lifted budgets and the chains of removed flows. Deletions happen there, in
//! `RemoveFlow` (a closed flow) and in the rare change that reuses a tuple whose drain
//! alias is still alive.
//!
//! # Install times (`cargo test -p roam-linux --test nft_batch -- --nocapture`)
//!
//! Transactions run in process through libnftables ([`crate::libnft`]) on a context
//! (and netlink socket) that lives as long as the plane; without the library, one
//! `nft -f -` process each. Medians of 7 on the 2-core lab machine shared with builds,
//! libnftables / nft processes: each transaction of a move (a held entry, its release,
//! a budget and its validation) 0.2 / 3.0-3.6 ms; one that deletes 0.2 / 10-13 ms (a
//! process's exit waits for the RCU grace period above; the long-lived socket does
//! not); 1 flow entry 0.3 / 4 ms; 100 in one batch 14 / 19 ms; 10,000 in one batch
//! about 2 s either way (some 200 µs a flow: two chains, their rules, two elements,
//! nearly all of it nft's own parsing and evaluation). nft re-reads the table's chains
//! on every run that names a chain (to check a `goto` target), so a run costs a few µs
//! more per installed flow: one more entry next to 10,000 took 35 / 56 ms. Installing
//! 100,000 at once (`roam bench scale`) takes tens of seconds: a chain pair per flow
//! is this plane's limit (docs/ARCHITECTURE.md).
//!
//! # What this data plane does not do (the simulator's does)
//!
//! - Conflicts (seed 000 ¶0067-¶0069) are not detected: a packet under a moved flow's
//!   original tuple arriving from the wire is delivered as it is (for TCP, the old path
//!   draining, which is what the simulator does with anything but a SYN), and a new local
//!   flow whose tuple is a moved flow's current one goes out unchanged.
//! - ICMP errors about translated flows (their quoted packet) are not rewritten in the
//!   kernel: nft cannot fix the ICMP checksum over a rewritten quote. The chains log them
//!   (`log group`, see [`NftConfig::icmp_group`]) and drop them, and [`crate::icmp`]
//!   translates and re-injects them from userspace.
//! - No queueing (hold, budget): dropped packets are the stack's to retransmit. The
//!   kernel keeps no copies to resend: [`DataPlaneCommand::Resend`] arms a retransmission
//!   kick instead (above), which makes the stack itself retransmit.
//! - Non-first IP fragments carry no ports and match no flow entry (as in the rewriter).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roam_core::translate::{
    AddressMapping, FlowMapping, Protocol, Side, TableChange, TableError, TranslationTable, Tuple,
};
use roam_core::{DataPlane, DataPlaneCommand};
use serde::Serialize;
use thiserror::Error;

use crate::icmp::{self, DEFAULT_ICMP_GROUP, IcmpCounters, IcmpError, IcmpRelay};
use crate::libnft::{LibNft, LibNftError};
use crate::nudge::{NUDGE_MARK, NudgeError, Nudger};

/// The table's name unless configured otherwise (`inet roam`).
pub const DEFAULT_TABLE: &str = "roam";

/// How long packets under a flow's previous current tuple are still translated on the
/// way in (the simulator's `DRAIN`): longer than any path's delay.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

/// After its timeout, how long an element may still exist in the kernel (it is reaped by
/// the set's garbage collector, which runs about once a second) and pin its chain.
const GC_SLACK: Duration = Duration::from_secs(3);

/// The largest bare TCP ACK, in bytes: an IPv6 header (40) and a TCP header with the most
/// options (60). An IPv4 one is at most 80 without IP options.
const BARE_ACK_MAX: u32 = 100;

/// How long an armed retransmission kick waits for the flow's next packet: the nudge of
/// the same batch normally elicits one at once.
const KICK_ARMED: Duration = Duration::from_secs(2);

/// How much of a kick's trigger packet is logged: its IP and TCP headers (an IPv6 header
/// and a TCP header with the most options take 100 bytes).
const KICK_SNAPLEN: u32 = 128;

/// nft refuses quotas of 2^63 bytes and more.
const QUOTA_MAX: u64 = 1 << 62;

/// Why a command or batch was refused. A refusal changes nothing, in the kernel or here.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NftError {
    /// The translation table's invariants refuse the change (seed 000 ¶0069: currents
    /// one-to-one with originals; one family and protocol per entry).
    #[error("translation entry refused: {0}")]
    Table(#[from] TableError),
    #[error("running {program}: {source}", program = .program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// nft (or the kernel) refused the transaction; nothing of it was applied.
    #[error("nft refused the transaction ({status}): {stderr}")]
    Nft { status: String, stderr: String },
    #[error("reading nft's JSON output: {0}")]
    Json(#[from] serde_json::Error),
    #[error("table name {0:?}: use 1 to 64 ASCII letters, digits and '_'")]
    TableName(String),
    #[error("opening network namespace {path}: {source}", path = .path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening the nudge sockets: {0}")]
    Nudge(#[from] NudgeError),
    #[error("starting the ICMP error relay: {0}")]
    Icmp(#[from] IcmpError),
}

/// How to open the kernel data plane.
#[derive(Clone, Debug)]
pub struct NftConfig {
    /// The nftables table (family `inet`) roam owns in the namespace: replaced on open.
    pub table: String,
    /// The network namespace to work in (a path such as `/var/run/netns/NAME`), `None`
    /// for the caller's. nft runs there and the nudge sockets are opened there.
    pub netns: Option<PathBuf>,
    /// The nft executable.
    pub nft: PathBuf,
    /// Run transactions in process through libnftables ([`crate::libnft`]) when it
    /// loads and `nft` is the default program; otherwise (or `false`) each is an `nft`
    /// process.
    pub in_process: bool,
    /// Leave the table in place when the data plane is dropped (a daemon restart must not
    /// drop migrated sessions); [`NftDataPlane::close`] deletes it regardless.
    pub keep_on_drop: bool,
    /// Open raw sockets for [`DataPlaneCommand::Nudge`] (needs CAP_NET_RAW). Without
    /// them nudges are counted as errors and otherwise ignored.
    pub nudge: bool,
    /// See [`DEFAULT_DRAIN`]; zero turns draining off.
    pub drain: Duration,
    /// The nfnetlink_log group through which ICMP errors about translated flows go to
    /// [`IcmpRelay`] to be translated ([`crate::icmp`]); `None`: no relay, and such
    /// errors pass untranslated (their quote matches no socket).
    pub icmp_group: Option<u16>,
}

impl Default for NftConfig {
    fn default() -> NftConfig {
        NftConfig {
            table: DEFAULT_TABLE.to_owned(),
            netns: None,
            nft: PathBuf::from("nft"),
            in_process: true,
            keep_on_drop: false,
            nudge: true,
            drain: DEFAULT_DRAIN,
            icmp_group: Some(DEFAULT_ICMP_GROUP),
        }
    }
}

/// Packets and bytes of one nft counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

/// What the data plane did: the kernel's counters and this process's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NftCounters {
    /// Packets rewritten original -> current on the way out (a packet whose local and
    /// remote addresses both have address entries counts twice).
    pub egress_translated: PacketCount,
    /// Packets rewritten current -> original on the way in.
    pub ingress_translated: PacketCount,
    /// Egress packets of held flows, dropped.
    pub hold_dropped: PacketCount,
    /// Translated egress packets over an unvalidated address's budget, dropped.
    pub budget_dropped: PacketCount,
    /// nft transactions committed, and refused (by nft or the kernel).
    pub transactions: u64,
    pub failed_transactions: u64,
    /// Of the committed ones, those run in process through libnftables (the others
    /// were `nft` processes).
    pub in_process_transactions: u64,
    /// Batches refused before reaching nft (translation table invariants).
    pub refused_batches: u64,
    pub nudges: u64,
    /// Nudges that could not be sent (no socket, UDP flow, send error).
    pub nudge_errors: u64,
    /// Nudges that asked for a fast retransmit and got one segment (the kernel answers
    /// one per socket per 500 ms; see [`crate::nudge`]).
    pub fast_retransmit_as_single: u64,
    /// `Resend` commands that armed a retransmission kick ([`crate::icmp`]): the flow's
    /// next packet goes to the relay, which makes the local stack retransmit at once.
    pub kicks_armed: u64,
    /// `Resend` commands with nothing to do: no relay, or no translated TCP entry (the
    /// kernel keeps no copies to resend).
    pub resends_ignored: u64,
    /// ICMP errors about translated flows, relayed through userspace ([`crate::icmp`]).
    pub icmp: IcmpCounters,
}

/// A return-routability limit in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BudgetEntry {
    pub remote: IpAddr,
    /// Bytes of translated packets, bare ACKs included.
    pub cap: u64,
    /// Bytes of translated packets other than bare ACKs: `min(cap, 3 * received)`.
    pub limit: u64,
}

/// An ingress alias still draining: packets under `previous` (a former current tuple)
/// are still translated to `original`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DrainEntry {
    pub original: Tuple,
    pub previous: Tuple,
    pub remaining: Duration,
}

/// What is installed (the mirror of the kernel's table), for `roam status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Entries {
    /// Sorted by original tuple.
    pub flows: Vec<FlowMapping>,
    /// Sorted by side and original address.
    pub addresses: Vec<AddressMapping>,
    pub budgets: Vec<BudgetEntry>,
    pub draining: Vec<DrainEntry>,
}

/// The kernel data plane. See the module documentation.
pub struct NftDataPlane {
    config: NftConfig,
    /// Kept open so that every nft run can enter the namespace without a path lookup.
    netns: Option<File>,
    /// libnftables in process, when it loaded ([`NftConfig::in_process`]).
    lib: Option<LibNft>,
    state: State,
    nudger: Option<Nudger>,
    icmp: Option<IcmpRelay>,
    counters: NftCounters,
    /// The table is gone (closed) or handed over (detached).
    done: bool,
}

impl std::fmt::Debug for NftDataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftDataPlane")
            .field("table", &self.config.table)
            .field("netns", &self.config.netns)
            .field("flows", &self.state.table.flow_count())
            .field("addresses", &self.state.table.address_count())
            .field("budgets", &self.state.budgets.len())
            .finish_non_exhaustive()
    }
}

impl NftDataPlane {
    /// Creates the table `inet roam` in the caller's namespace, replacing any previous one.
    pub fn open() -> Result<NftDataPlane, NftError> {
        NftDataPlane::open_with(NftConfig::default())
    }

    /// Creates the configured table (replacing any previous one of that name, in one
    /// transaction: there is no instant without a table) and the nudge sockets.
    pub fn open_with(config: NftConfig) -> Result<NftDataPlane, NftError> {
        NftDataPlane::open_restoring(config, &[]).map(|(dp, _)| dp)
    }

    /// [`NftDataPlane::open_with`], with `restore` (the entries of a previous run, which
    /// roamd persisted) installed by the same transaction that replaces the table: a
    /// restored flow is never without its translation, not even while roamd restarts.
    /// Changes the translation table's invariants refuse (a clash among them) are
    /// skipped and returned with the reason; the others are installed.
    pub fn open_restoring(
        config: NftConfig,
        restore: &[TableChange],
    ) -> Result<(NftDataPlane, Vec<(TableChange, TableError)>), NftError> {
        if config.table.is_empty()
            || config.table.len() > 64
            || !config
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(NftError::TableName(config.table));
        }
        let netns = match &config.netns {
            Some(path) => Some(File::open(path).map_err(|source| NftError::Netns {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let lib = if config.in_process && config.nft == Path::new("nft") {
            match LibNft::open(config.netns.as_deref()) {
                Ok(lib) => Some(lib),
                Err(e) => {
                    tracing::info!("nft transactions by the nft command: {e}");
                    None
                }
            }
        } else {
            None
        };
        let nudger = if config.nudge {
            Some(Nudger::open_in(config.netns.as_deref())?)
        } else {
            None
        };
        // Bound before the table exists, so that no logged error finds nobody listening.
        let icmp = match config.icmp_group {
            Some(group) => Some(IcmpRelay::start(
                config.netns.as_deref(),
                group,
                State::default().table,
            )?),
            None => None,
        };
        // Kicks need the relay: it injects them.
        let kick_group = config.icmp_group;
        let mut dp = NftDataPlane {
            config,
            netns,
            lib,
            state: State {
                kick_group,
                ..State::default()
            },
            nudger,
            icmp,
            counters: NftCounters::default(),
            done: false,
        };
        // Validated one by one first, so that one bad change leaves out only itself.
        let mut scratch = TranslationTable::new(0);
        let mut refused = Vec::new();
        let mut script = Script::new(&dp.config.table);
        let now = Instant::now();
        for change in restore {
            let change = canon_change(change);
            match scratch.apply(&change) {
                Ok(()) => dp
                    .state
                    .plan(
                        &DataPlaneCommand::Table(change),
                        &mut script,
                        now,
                        dp.config.drain,
                    )
                    .expect("validated against the same invariants"),
                Err(e) => refused.push((change, e)),
            }
        }
        let mut text = base_script(&dp.config.table, dp.config.icmp_group);
        text.push_str(&script.text);
        dp.run(&text)?;
        if let Some(relay) = &dp.icmp
            && !restore.is_empty()
        {
            relay.set_table(Arc::new(dp.state.table.clone()));
        }
        tracing::info!(
            table = %dp.config.table,
            netns = ?dp.config.netns,
            restored = dp.state.table.flow_count() + dp.state.table.address_count(),
            refused = refused.len(),
            "nftables data plane ready"
        );
        Ok((dp, refused))
    }

    pub fn config(&self) -> &NftConfig {
        &self.config
    }

    /// Applies `commands` in order, table changes in one nft transaction: all of them or
    /// none. Nudges are sent once the transaction is committed (so that the answering
    /// ACK leaves through the new entries); their failures are logged and counted, not
    /// returned (the table did change).
    pub fn apply_batch(&mut self, commands: &[DataPlaneCommand]) -> Result<(), NftError> {
        let now = Instant::now();
        let mut next = self.state.clone();
        let mut script = Script::new(&self.config.table);
        for command in commands {
            if let Err(e) = next.plan(command, &mut script, now, self.config.drain) {
                self.counters.refused_batches += 1;
                tracing::debug!(error = %e, ?command, "batch refused");
                return Err(e.into());
            }
        }
        if !script.is_empty() {
            self.run(&script.text)?;
        }
        self.state = next;
        if let Some(relay) = &self.icmp
            && commands.iter().any(|c| matches!(c, DataPlaneCommand::Table(_)))
        {
            relay.set_table(Arc::new(self.state.table.clone()));
        }
        for command in commands {
            match command {
                DataPlaneCommand::Nudge {
                    original,
                    fast_retransmit,
                } => self.nudge(original, *fast_retransmit),
                DataPlaneCommand::Resend { original } => {
                    if self.state.kick_target(original).is_some() {
                        tracing::debug!(flow = %original, "resend: retransmission kick armed");
                        self.counters.kicks_armed += 1;
                    } else {
                        tracing::trace!(flow = %original, "resend: left to the stack's SACK/RACK");
                        self.counters.resends_ignored += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The nft script `commands` would be applied with (nothing is applied). For
    /// debugging and tests.
    pub fn render_batch(&self, commands: &[DataPlaneCommand]) -> Result<String, NftError> {
        let mut next = self.state.clone();
        let mut script = Script::new(&self.config.table);
        for command in commands {
            next.plan(command, &mut script, Instant::now(), self.config.drain)?;
        }
        Ok(script.text)
    }

    fn nudge(&mut self, original: &Tuple, fast_retransmit: bool) {
        let Some(nudger) = &self.nudger else {
            self.counters.nudge_errors += 1;
            tracing::debug!(flow = %original, "nudge: no raw sockets (disabled)");
            return;
        };
        match nudger.nudge(original) {
            Ok(()) => {
                self.counters.nudges += 1;
                if fast_retransmit {
                    self.counters.fast_retransmit_as_single += 1;
                }
            }
            Err(e) => {
                self.counters.nudge_errors += 1;
                tracing::warn!(flow = %original, error = %e, "nudge failed");
            }
        }
    }

    /// What is installed, from the mirror (no kernel round trip).
    pub fn entries(&self) -> Entries {
        let now = Instant::now();
        let mut draining: Vec<DrainEntry> = self
            .state
            .alias_of
            .iter()
            .filter(|(_, a)| a.until > now)
            .map(|(original, a)| DrainEntry {
                original: *original,
                previous: a.key,
                remaining: a.until - now,
            })
            .collect();
        draining.sort_by_key(|d| d.original);
        Entries {
            flows: self.state.table.flows(),
            addresses: self.state.table.addresses(),
            budgets: self
                .state
                .budgets
                .iter()
                .map(|(remote, b)| BudgetEntry {
                    remote: *remote,
                    cap: b.cap,
                    limit: b.limit,
                })
                .collect(),
            draining,
        }
    }

    /// The kernel's counters (one `nft -j` run) and this process's.
    pub fn counters(&self) -> Result<NftCounters, NftError> {
        let out = self.nft_json(&format!("list counters table inet {}", self.config.table))?;
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        let mut c = self.local_counters();
        for item in v.get("nftables").and_then(|n| n.as_array()).into_iter().flatten() {
            let Some(counter) = item.get("counter") else {
                continue;
            };
            let count = PacketCount {
                packets: counter.get("packets").and_then(|p| p.as_u64()).unwrap_or(0),
                bytes: counter.get("bytes").and_then(|p| p.as_u64()).unwrap_or(0),
            };
            match counter.get("name").and_then(|n| n.as_str()) {
                Some("eg_translated") => c.egress_translated = count,
                Some("in_translated") => c.ingress_translated = count,
                Some("hold_dropped") => c.hold_dropped = count,
                Some("budget_dropped") => c.budget_dropped = count,
                _ => {}
            }
        }
        Ok(c)
    }

    /// This process's counters only (no kernel round trip).
    pub fn local_counters(&self) -> NftCounters {
        let mut c = self.counters.clone();
        if let Some(relay) = &self.icmp {
            c.icmp = relay.counters();
        }
        c
    }

    /// Housekeeping, off the paths of a move (call it every few seconds; it costs an RCU
    /// grace period when it deletes anything): compacts egress chains whose rules were
    /// shadowed, deletes lifted budgets, and deletes the ingress chains of removed flows
    /// once their drain aliases have expired in the kernel. Two transactions; a failure
    /// changes nothing and is retried next time.
    pub fn maintain(&mut self) -> Result<(), NftError> {
        let now = Instant::now();
        let mut next = self.state.clone();
        let mut script = Script::new(&self.config.table);
        next.plan_tidy(&mut script);
        if !script.is_empty() {
            self.run(&script.text)?;
        }
        self.state = next;
        self.state.forget_expired_aliases(now);
        let due: Vec<u64> = self
            .state
            .zombies
            .iter()
            .filter(|(_, z)| z.not_before <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let t = self.config.table.clone();
        let script: String = due
            .iter()
            .map(|id| format!("delete chain inet {t} i{id}\n"))
            .collect();
        let deleted: Vec<u64> = if self.run(&script).is_ok() {
            due
        } else {
            // One of them is still pinned (an expired element not yet reaped): take the
            // others one by one, and that one next time.
            let mut ok = Vec::new();
            for id in due {
                let one = format!("delete chain inet {t} i{id}\n");
                if self.run(&one).is_ok() {
                    ok.push(id);
                }
            }
            ok
        };
        for id in deleted {
            if let Some(z) = self.state.zombies.remove(&id) {
                self.state.zombie_of.remove(&z.original);
            }
            self.state.aliased_until.remove(&id);
        }
        Ok(())
    }

    /// Deletes the table: every translated flow goes back to its original tuple.
    pub fn close(mut self) -> Result<(), NftError> {
        self.done = true;
        self.delete_table()
    }

    /// Leaves the table in the kernel and forgets it (a daemon restart hands migrated
    /// sessions over to its next instance).
    pub fn detach(mut self) {
        self.done = true;
    }

    fn delete_table(&mut self) -> Result<(), NftError> {
        let t = &self.config.table;
        // Adding first makes the deletion succeed whether or not the table is there.
        let script = format!("table inet {t}\ndelete table inet {t}\n");
        self.run(&script)
    }

    /// Runs one nft transaction (`nft -f -`).
    fn run(&mut self, script: &str) -> Result<(), NftError> {
        let started = Instant::now();
        match self.nft_with_input(script) {
            Ok(_) => {
                self.counters.transactions += 1;
                if self.lib.is_some() {
                    self.counters.in_process_transactions += 1;
                }
                tracing::debug!(
                    bytes = script.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "nft transaction committed"
                );
                Ok(())
            }
            Err(e) => {
                self.counters.failed_transactions += 1;
                tracing::warn!(error = %e, "nft transaction refused");
                Err(e)
            }
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.config.nft);
        if let Some(ns) = &self.netns {
            let fd = ns.as_raw_fd();
            // SAFETY: the closure runs in the child between fork and exec and only makes
            // the setns system call (async-signal-safe) on a descriptor the parent keeps
            // open until the child has been spawned.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        cmd
    }

    fn nft_with_input(&self, script: &str) -> Result<Vec<u8>, NftError> {
        if let Some(lib) = &self.lib {
            return lib
                .run(script, false)
                .map(String::into_bytes)
                .map_err(refused_in_process);
        }
        let spawn_err = |source| NftError::Spawn {
            program: self.config.nft.clone(),
            source,
        };
        let mut child = self
            .command()
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let mut stdin = child.stdin.take().expect("piped");
        // Written from another thread: nft could start answering before it has read a
        // large script, and both pipes would fill.
        let output = std::thread::scope(|s| {
            let writer = s.spawn(move || stdin.write_all(script.as_bytes()));
            let out = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
            (out, written)
        });
        let (output, written) = output;
        let output = output.map_err(spawn_err)?;
        if !output.status.success() {
            return Err(NftError::Nft {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        written.map_err(spawn_err)?;
        Ok(output.stdout)
    }

    /// nft's JSON answer to `command` (a `list`), as `nft -j` prints it.
    fn nft_json(&self, command: &str) -> Result<Vec<u8>, NftError> {
        if let Some(lib) = &self.lib {
            return lib
                .run(command, true)
                .map(String::into_bytes)
                .map_err(refused_in_process);
        }
        let output = self
            .command()
            .arg("-j")
            .args(command.split_whitespace())
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NftError::Spawn {
                program: self.config.nft.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(NftError::Nft {
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(output.stdout)
    }
}

/// libnftables's refusal (or failure) in the shape of the `nft` command's.
fn refused_in_process(e: LibNftError) -> NftError {
    NftError::Nft {
        status: "libnftables".to_owned(),
        stderr: e.to_string(),
    }
}

impl DataPlane for NftDataPlane {
    type Error = NftError;

    fn apply(&mut self, command: &DataPlaneCommand) -> Result<(), NftError> {
        self.apply_batch(std::slice::from_ref(command))
    }
}

impl Drop for NftDataPlane {
    fn drop(&mut self) {
        if self.done || self.config.keep_on_drop {
            return;
        }
        if let Err(e) = self.delete_table() {
            tracing::warn!(table = %self.config.table, error = %e, "could not delete the nftables table");
        }
    }
}

// ---- the mirror and the planner ----

/// An ingress element with a timeout: `key` (a former current tuple) still leads to the
/// ingress chain of `chain`'s flow until `until`.
#[derive(Clone, Copy, Debug)]
struct Alias {
    key: Tuple,
    chain: u64,
    until: Instant,
}

/// An ingress chain of a removed flow, kept while a drain alias may point to it.
#[derive(Clone, Copy, Debug)]
struct Zombie {
    original: Tuple,
    not_before: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Budget {
    id: u64,
    cap: u64,
    limit: u64,
}

/// A flow's chains (`e<id>`, `i<id>`) and what its egress chain holds.
#[derive(Clone, Copy, Debug)]
struct FlowChains {
    id: u64,
    /// The egress map has the element `original -> goto e<id>`. Without it, the chain
    /// is empty.
    egress_element: bool,
    /// Newer rules were inserted at the chain's head over older ones (which no packet
    /// reaches any more); `maintain` compacts it.
    stale: bool,
}

/// The mirror of what the kernel holds, and what the next transaction must do to it.
#[derive(Clone)]
struct State {
    /// The entries, validated by roam-core's own table (the same refusals as every data
    /// plane).
    table: TranslationTable,
    /// Original tuple -> its chains.
    chains: HashMap<Tuple, FlowChains>,
    /// The latest time any drain alias of a chain expires (chain id -> time).
    aliased_until: HashMap<u64, Instant>,
    /// Drain aliases, by original tuple (one each, as in the simulator) and by key.
    alias_of: HashMap<Tuple, Alias>,
    alias_key: HashMap<Tuple, Tuple>,
    /// Ingress chains of removed flows waiting for their aliases to go (by id).
    zombies: BTreeMap<u64, Zombie>,
    zombie_of: HashMap<Tuple, u64>,
    budgets: BTreeMap<IpAddr, Budget>,
    /// Budgets lifted by raising their quotas (by id), left for `maintain` to delete.
    lifted: BTreeMap<IpAddr, u64>,
    /// The addresses in the sets `icq4`/`icq6`: ICMP errors quoting one of them go to
    /// the relay ([`crate::icmp`]). Added with the entries, deleted by `maintain`.
    icmp_addrs: BTreeSet<IpAddr>,
    /// The relay's nfnetlink_log group when retransmission kicks are on (with the relay):
    /// translated TCP entries' egress chains log their first packet after a kick was
    /// armed ([`crate::icmp`]).
    kick_group: Option<u16>,
    next_id: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            // The hash seed only spreads this process's own lookups; nothing observable
            // depends on it.
            table: TranslationTable::new(0x726f_616d),
            chains: HashMap::new(),
            aliased_until: HashMap::new(),
            alias_of: HashMap::new(),
            alias_key: HashMap::new(),
            zombies: BTreeMap::new(),
            zombie_of: HashMap::new(),
            budgets: BTreeMap::new(),
            lifted: BTreeMap::new(),
            icmp_addrs: BTreeSet::new(),
            kick_group: None,
            next_id: 1,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }
    fn l3(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

fn l4(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn canon_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// IPv4-mapped IPv6 addresses (how a dual-stack socket names an IPv4 peer) are IPv4 on
/// the wire: entries are kept and keyed in that form.
fn canon_tuple(t: Tuple) -> Tuple {
    Tuple::new(t.protocol, canon_addr(t.local), canon_addr(t.remote))
}

pub(crate) fn canon_change(c: &TableChange) -> TableChange {
    match *c {
        TableChange::InstallFlow(m) => TableChange::InstallFlow(FlowMapping {
            original: canon_tuple(m.original),
            current: canon_tuple(m.current),
            hold: m.hold,
        }),
        TableChange::RemoveFlow { original } => TableChange::RemoveFlow {
            original: canon_tuple(original),
        },
        TableChange::InstallAddress(m) => TableChange::InstallAddress(AddressMapping {
            side: m.side,
            original: m.original.to_canonical(),
            current: m.current.to_canonical(),
        }),
        TableChange::RemoveAddress { side, original } => TableChange::RemoveAddress {
            side,
            original: original.to_canonical(),
        },
    }
}

/// The verdict map of a flow tuple: `eg4tcp`, `in6udp`, ...
fn flow_map(dir: &str, t: &Tuple) -> String {
    format!("{dir}{}{}", Family::of(t.local.ip()).digit(), l4(t.protocol))
}

/// The egress key of an original tuple: `saddr . sport . daddr . dport`.
fn egress_key(t: &Tuple) -> String {
    format!(
        "{} . {} . {} . {}",
        t.local.ip(),
        t.local.port(),
        t.remote.ip(),
        t.remote.port()
    )
}

/// The ingress key of a current tuple, as the packet arrives: `saddr . sport . daddr . dport`.
fn ingress_key(t: &Tuple) -> String {
    format!(
        "{} . {} . {} . {}",
        t.remote.ip(),
        t.remote.port(),
        t.local.ip(),
        t.local.port()
    )
}

/// The addresses of an entry that an ICMP error about it may quote in translated form or
/// not: both ends of each side whose address changes (canonical).
fn flow_addresses(m: &FlowMapping) -> Vec<IpAddr> {
    let (o, c) = (m.original, m.current);
    let mut v = Vec::new();
    if o.local.ip() != c.local.ip() {
        v.extend([o.local.ip(), c.local.ip()]);
    }
    if o.remote.ip() != c.remote.ip() {
        v.extend([o.remote.ip(), c.remote.ip()]);
    }
    v.into_iter().map(|ip| ip.to_canonical()).collect()
}

fn needs_egress(m: &FlowMapping) -> bool {
    m.hold || m.current != m.original
}

/// Rules whose `set` statements rewrite a packet's (source, destination) from `from` to
/// `to`, writing only the fields that differ unless `all`, then `tail`: two rules for
/// UDP over IPv4 with ports to write (one per checksum case, see the module docs), one
/// otherwise.
fn rewrite_rules(
    protocol: Protocol,
    from: (SocketAddr, SocketAddr),
    to: (SocketAddr, SocketAddr),
    all: bool,
    tail: &str,
) -> Vec<String> {
    let fam = Family::of(to.0.ip());
    let l3 = fam.l3();
    let p = l4(protocol);
    let mut addrs = String::new();
    if all || from.0.ip() != to.0.ip() {
        let _ = write!(addrs, "{l3} saddr set {} ", to.0.ip());
    }
    if all || from.1.ip() != to.1.ip() {
        let _ = write!(addrs, "{l3} daddr set {} ", to.1.ip());
    }
    let sport = (all || from.0.port() != to.0.port()).then_some(to.0.port());
    let dport = (all || from.1.port() != to.1.port()).then_some(to.1.port());
    let ports = |raw: bool| {
        let mut s = String::new();
        if let Some(port) = sport {
            if raw {
                let _ = write!(s, "@th,0,16 set {port} ");
            } else {
                let _ = write!(s, "{p} sport set {port} ");
            }
        }
        if let Some(port) = dport {
            if raw {
                let _ = write!(s, "@th,16,16 set {port} ");
            } else {
                let _ = write!(s, "{p} dport set {port} ");
            }
        }
        s
    };
    if protocol == Protocol::Udp && fam == Family::V4 && (sport.is_some() || dport.is_some()) {
        vec![
            format!("udp checksum 0 {}{addrs}{tail}", ports(true)),
            format!("udp checksum != 0 {}{addrs}{tail}", ports(false)),
        ]
    } else {
        // The protocol match makes nft load the L4 protocol for the port writes (and is
        // what the map lookup already established).
        vec![format!("meta l4proto {p} {}{addrs}{tail}", ports(false))]
    }
}

/// Rules that hand ICMP errors quoting an address in `icq4`/`icq6` to the relay: logged
/// with `prefix` to `group`, whole, and dropped (the relay injects the translation).
/// The quote starts 8 bytes into the ICMP message; the source address is 12 bytes into
/// an IPv4 header (bit 160 of the ICMP message) and 8 into an IPv6 one (bit 128), the
/// destination 4 or 16 bytes later. Types: those that quote a packet (RFC 792: 3, 4, 5,
/// 11, 12; RFC 4443: 1 to 4), as roam-core's rewriter.
fn icmp_rules(s: &mut String, group: Option<u16>, prefix: &str) {
    let Some(group) = group else { return };
    let v4 =
        "icmp type { destination-unreachable, source-quench, redirect, time-exceeded, parameter-problem }";
    let v6 = "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }";
    for (types, at, bits, d) in [
        (v4, 160, 32, 4),
        (v4, 192, 32, 4),
        (v6, 128, 128, 6),
        (v6, 256, 128, 6),
    ] {
        let _ = writeln!(
            s,
            "    {types} @th,{at},{bits} @icq{d} log prefix \"{prefix}\" group {group} drop"
        );
    }
}

/// An nft script under construction: one transaction.
struct Script {
    table: String,
    text: String,
}

impl Script {
    fn new(table: &str) -> Script {
        Script {
            table: format!("inet {table}"),
            text: String::new(),
        }
    }
    fn t(&self) -> &str {
        &self.table
    }
    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
    fn cmd(&mut self, line: std::fmt::Arguments<'_>) {
        let _ = self.text.write_fmt(line);
        self.text.push('\n');
    }
    fn add_element(&mut self, map: &str, key: &str, data: &str) {
        let t = self.table.clone();
        self.cmd(format_args!("add element {t} {map} {{ {key} : {data} }}"));
    }
    fn add_element_timeout(&mut self, map: &str, key: &str, timeout: Duration, data: &str) {
        let t = self.table.clone();
        let ms = timeout.as_millis().max(1);
        self.cmd(format_args!(
            "add element {t} {map} {{ {key} timeout {ms}ms : {data} }}"
        ));
    }
    fn delete_element(&mut self, map: &str, key: &str) {
        let t = self.table.clone();
        self.cmd(format_args!("delete element {t} {map} {{ {key} }}"));
    }
    fn add_rules(&mut self, chain: &str, rules: &[String]) {
        let t = self.table.clone();
        for r in rules {
            self.cmd(format_args!("add rule {t} {chain} {r}"));
        }
    }
}

impl State {
    /// Checks `command` against the mirror, updates the mirror, and appends what the
    /// kernel must do to `script`. An error leaves `self` partly updated: the caller
    /// works on a copy and drops it.
    fn plan(
        &mut self,
        command: &DataPlaneCommand,
        s: &mut Script,
        now: Instant,
        drain: Duration,
    ) -> Result<(), TableError> {
        match command {
            DataPlaneCommand::Table(change) => match canon_change(change) {
                TableChange::InstallFlow(m) => self.install_flow(m, s, now, drain),
                TableChange::RemoveFlow { original } => {
                    self.remove_flow(original, s, now, drain);
                    Ok(())
                }
                TableChange::InstallAddress(m) => self.install_address(m, s),
                TableChange::RemoveAddress { side, original } => {
                    self.remove_address(side, original, s);
                    Ok(())
                }
            },
            DataPlaneCommand::Unvalidated {
                remote,
                cap,
                received,
            } => {
                self.unvalidated(remote.to_canonical(), *cap, *received, s);
                Ok(())
            }
            DataPlaneCommand::Validated { remote } | DataPlaneCommand::Unreachable { remote } => {
                self.lift_budget(remote.to_canonical(), s);
                Ok(())
            }
            DataPlaneCommand::Resend { original } => {
                self.arm_kick(original, s);
                Ok(())
            }
            DataPlaneCommand::Nudge { .. } => Ok(()),
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Whether the kernel may still hold an alias that expires at `until` (its clock
    /// started when nft committed, a little after ours).
    fn may_live(until: Instant, now: Instant) -> bool {
        now < until + Duration::from_secs(1)
    }

    /// The egress chain of an entry. Every rule set ends in a verdict (`goto budget`
    /// ends in `accept`), so newer rules inserted at the head shadow older ones. A
    /// translated TCP entry's set starts with its retransmission kick's trigger when
    /// kicks are on (see [`State::arm_kick`]).
    fn egress_rules(&self, m: &FlowMapping) -> Vec<String> {
        if m.hold {
            vec!["counter name \"hold_dropped\" drop".to_owned()]
        } else if m.current == m.original {
            vec!["accept".to_owned()]
        } else {
            let (o, c) = (m.original, m.current);
            let mut rules = Vec::new();
            if let Some(group) = self.kick_group
                && o.protocol == Protocol::Tcp
            {
                let fam = Family::of(o.local.ip());
                let (d, l3) = (fam.digit(), fam.l3());
                let key = format!("{l3} saddr . tcp sport . {l3} daddr . tcp dport");
                rules.push(format!(
                    "{key} @kick{d} delete @kick{d} {{ {key} }} log prefix \"{}\" group {group} snaplen {KICK_SNAPLEN}",
                    icmp::PREFIX_KICK
                ));
            }
            rules.extend(rewrite_rules(
                o.protocol,
                (o.local, o.remote),
                (c.local, c.remote),
                false,
                "counter name \"eg_translated\" goto budget",
            ));
            rules
        }
    }

    /// The original tuple of the entry a `Resend` for `original` arms a retransmission
    /// kick for: a TCP entry translated (not held) by a chain that has the trigger rule.
    fn kick_target(&self, original: &Tuple) -> Option<Tuple> {
        self.kick_group?;
        let o = canon_tuple(*original);
        let m = self.table.flow_by_original(&o)?;
        (o.protocol == Protocol::Tcp && !m.hold && m.current != m.original).then_some(o)
    }

    /// `Resend`: the peer of `original` moved, and what the local stack sent it was
    /// probably lost at its old address. The flow's next egress packet (the nudge of the
    /// same batch elicits one) is logged to the relay, which makes the stack retransmit
    /// its window at once ([`crate::icmp`], "Retransmission kicks"). One-shot: the rule
    /// deletes the element from the packet path; the timeout covers a flow that sends
    /// nothing. An addition only: nothing on a move's path waits for a deletion.
    fn arm_kick(&mut self, original: &Tuple, s: &mut Script) {
        let Some(o) = self.kick_target(original) else {
            return;
        };
        let t = s.t().to_owned();
        let d = Family::of(o.local.ip()).digit();
        let ms = KICK_ARMED.as_millis();
        s.cmd(format_args!(
            "add element {t} kick{d} {{ {} timeout {ms}ms }}",
            egress_key(&o)
        ));
    }

    /// The ingress chain of an original tuple: every field back to the original, so that
    /// the chain serves whichever current tuple (or drain alias) leads to it.
    fn ingress_rules(o: &Tuple) -> Vec<String> {
        rewrite_rules(
            o.protocol,
            (o.remote, o.local),
            (o.remote, o.local),
            true,
            "counter name \"in_translated\"",
        )
    }

    /// Installs or replaces an entry. Only additions on the paths a move takes (a first
    /// entry, a hold released, a new current tuple): a transaction that deletes anything
    /// costs an RCU grace period when nft closes its socket (see the module docs), so
    /// replaced egress rules are shadowed and an old ingress element is given a timeout
    /// instead; `maintain` tidies up later.
    fn install_flow(
        &mut self,
        m: FlowMapping,
        s: &mut Script,
        now: Instant,
        drain: Duration,
    ) -> Result<(), TableError> {
        let prev = self.table.flow_by_original(&m.original).copied();
        self.table.apply(&TableChange::InstallFlow(m))?;
        if prev == Some(m) {
            return Ok(());
        }
        self.watch_icmp(&flow_addresses(&m), s);
        let t = s.t().to_owned();
        let mut fc = match self.chains.get(&m.original) {
            Some(fc) => *fc,
            None => {
                let id = match self.zombie_of.remove(&m.original) {
                    // Its ingress chain is still there (a drain alias may use it), and
                    // it is the same chain (it depends on the original tuple only).
                    Some(id) => {
                        self.zombies.remove(&id);
                        id
                    }
                    None => {
                        let id = self.new_id();
                        s.cmd(format_args!("add chain {t} i{id}"));
                        s.add_rules(&format!("i{id}"), &Self::ingress_rules(&m.original));
                        id
                    }
                };
                s.cmd(format_args!("add chain {t} e{id}"));
                FlowChains {
                    id,
                    egress_element: false,
                    stale: false,
                }
            }
        };
        let id = fc.id;

        // Egress.
        let rules = self.egress_rules(&m);
        if fc.egress_element {
            for r in rules.iter().rev() {
                s.cmd(format_args!("insert rule {t} e{id} {r}"));
            }
            fc.stale = true;
        } else if needs_egress(&m) {
            s.add_rules(&format!("e{id}"), &rules);
            s.add_element(
                &flow_map("eg", &m.original),
                &egress_key(&m.original),
                &format!("goto e{id}"),
            );
            fc.egress_element = true;
        }
        self.chains.insert(m.original, fc);

        // Ingress: the element under the current tuple.
        let prev_cur = prev.map(|p| p.current).filter(|c| *c != m.original);
        let new_cur = Some(m.current).filter(|c| *c != m.original);
        if prev_cur != new_cur {
            if let Some(nc) = new_cur {
                self.clear_alias_key(&nc, s, now, drain);
                s.add_element(&flow_map("in", &nc), &ingress_key(&nc), &format!("goto i{id}"));
            }
            if let Some(pc) = prev_cur {
                self.retire_current(m.original, pc, id, s, now, drain);
            }
        }
        Ok(())
    }

    /// Removes an entry (its flow closed, or went back to its original tuple).
    fn remove_flow(&mut self, original: Tuple, s: &mut Script, now: Instant, drain: Duration) {
        let Some(prev) = self.table.flow_by_original(&original).copied() else {
            return;
        };
        self.table
            .apply(&TableChange::RemoveFlow { original })
            .expect("removing never fails");
        let t = s.t().to_owned();
        let fc = self.chains.remove(&original).expect("every entry has chains");
        let id = fc.id;
        if fc.egress_element {
            s.delete_element(&flow_map("eg", &original), &egress_key(&original));
        }
        s.cmd(format_args!("delete chain {t} e{id}"));
        if prev.current != original {
            self.retire_current(original, prev.current, id, s, now, drain);
        }
        match self.aliased_until.get(&id) {
            // An alias (live, or expired and not yet reaped) may point to the ingress
            // chain: deleting it now would fail the whole transaction. `maintain` does.
            Some(until) if now < *until + GC_SLACK => {
                self.zombies.insert(
                    id,
                    Zombie {
                        original,
                        not_before: *until + GC_SLACK,
                    },
                );
                self.zombie_of.insert(original, id);
            }
            _ => s.cmd(format_args!("delete chain {t} i{id}")),
        }
    }

    /// The ingress element under `key`, `original`'s current tuple until now, goes:
    /// it keeps translating for `drain` (seed 001 FIG. 4 step 404) by being given a
    /// timeout (re-adding an element with a timeout sets it, Linux 6.18), or is deleted
    /// at once when draining is off.
    fn retire_current(
        &mut self,
        original: Tuple,
        key: Tuple,
        chain: u64,
        s: &mut Script,
        now: Instant,
        drain: Duration,
    ) {
        if let Some(old) = self.alias_of.remove(&original) {
            // One alias per flow, as in the simulator: the older one expires now.
            self.alias_key.remove(&old.key);
            if Self::may_live(old.until, now) {
                s.add_element_timeout(
                    &flow_map("in", &old.key),
                    &ingress_key(&old.key),
                    Duration::from_millis(1),
                    &format!("goto i{}", old.chain),
                );
            }
        }
        if drain.is_zero() {
            s.delete_element(&flow_map("in", &key), &ingress_key(&key));
            return;
        }
        s.add_element_timeout(
            &flow_map("in", &key),
            &ingress_key(&key),
            drain,
            &format!("goto i{chain}"),
        );
        let until = now + drain;
        self.alias_of.insert(original, Alias { key, chain, until });
        self.alias_key.insert(key, original);
        self.aliased_until.insert(chain, until);
    }

    /// Makes sure no drain alias is left under `key`, about to become a flow's current
    /// tuple (a permanent element, perhaps to another chain): the one deletion on these
    /// paths, and only when a flow comes back to a tuple it left less than `drain` ago.
    /// Adding first (a no-op on a live alias, a fresh element for an expired one) makes
    /// the deletion succeed either way.
    fn clear_alias_key(&mut self, key: &Tuple, s: &mut Script, now: Instant, drain: Duration) {
        let Some(original) = self.alias_key.remove(key) else {
            return;
        };
        let Some(a) = self.alias_of.remove(&original) else {
            return;
        };
        if Self::may_live(a.until, now) {
            let map = flow_map("in", &a.key);
            let k = ingress_key(&a.key);
            s.add_element_timeout(
                &map,
                &k,
                drain.max(Duration::from_millis(1)),
                &format!("goto i{}", a.chain),
            );
            s.delete_element(&map, &k);
        }
    }

    fn forget_expired_aliases(&mut self, now: Instant) {
        let gone: Vec<Tuple> = self
            .alias_of
            .iter()
            .filter(|(_, a)| !Self::may_live(a.until, now))
            .map(|(o, _)| *o)
            .collect();
        for o in gone {
            if let Some(a) = self.alias_of.remove(&o) {
                self.alias_key.remove(&a.key);
            }
        }
        let zombies = &self.zombies;
        self.aliased_until
            .retain(|id, until| now < *until + GC_SLACK || zombies.contains_key(id));
    }

    /// What `maintain` does in its first transaction: compacts egress chains with
    /// shadowed rules (and drops the egress elements of entries that need none) and
    /// deletes lifted budgets. Deletions only: off the paths of a move.
    fn plan_tidy(&mut self, s: &mut Script) {
        let t = s.t().to_owned();
        let stale: Vec<Tuple> = self
            .chains
            .iter()
            .filter(|(_, fc)| fc.stale)
            .map(|(o, _)| *o)
            .collect();
        for original in stale {
            let m = *self
                .table
                .flow_by_original(&original)
                .expect("chains only for entries");
            let rules = self.egress_rules(&m);
            let fc = self.chains.get_mut(&original).expect("listed");
            let id = fc.id;
            s.cmd(format_args!("flush chain {t} e{id}"));
            fc.stale = false;
            if needs_egress(&m) {
                s.add_rules(&format!("e{id}"), &rules);
            } else {
                fc.egress_element = false;
                s.delete_element(&flow_map("eg", &original), &egress_key(&original));
            }
        }
        for (remote, id) in std::mem::take(&mut self.lifted) {
            Self::delete_budget(remote, id, s);
        }
        let wanted = self.icmp_wanted();
        let t = s.t().to_owned();
        for ip in self.icmp_addrs.difference(&wanted) {
            let set = format!("icq{}", Family::of(*ip).digit());
            s.cmd(format_args!(
                "delete element {t} {set} {{ {} }}",
                icmp::set_key(*ip)
            ));
        }
        self.icmp_addrs = wanted;
    }

    /// Puts `addrs` in the ICMP sets (an addition: no cost on a move's path).
    fn watch_icmp(&mut self, addrs: &[IpAddr], s: &mut Script) {
        for ip in addrs {
            let ip = ip.to_canonical();
            if self.icmp_addrs.insert(ip) {
                let t = s.t().to_owned();
                let set = format!("icq{}", Family::of(ip).digit());
                s.cmd(format_args!("add element {t} {set} {{ {} }}", icmp::set_key(ip)));
            }
        }
    }

    /// The addresses the ICMP sets need for the entries there are now.
    fn icmp_wanted(&self) -> BTreeSet<IpAddr> {
        let mut w = BTreeSet::new();
        for m in self.table.flows() {
            w.extend(flow_addresses(&m));
        }
        for m in self.table.addresses() {
            w.insert(m.original.to_canonical());
            w.insert(m.current.to_canonical());
        }
        w
    }

    fn address_maps(side: Side, fam: Family) -> (String, String) {
        let d = fam.digit();
        let s = match side {
            Side::Local => 'l',
            Side::Remote => 'r',
        };
        (format!("ea{d}{s}"), format!("ia{d}{s}"))
    }

    fn install_address(&mut self, m: AddressMapping, s: &mut Script) -> Result<(), TableError> {
        let prev = self.table.address_current(m.side, m.original);
        self.table.apply(&TableChange::InstallAddress(m))?;
        if prev == Some(m.current) {
            return Ok(());
        }
        self.watch_icmp(&[m.original, m.current], s);
        let (eg, ing) = Self::address_maps(m.side, Family::of(m.original));
        if let Some(p) = prev {
            s.delete_element(&eg, &m.original.to_string());
            s.delete_element(&ing, &p.to_string());
        }
        s.add_element(&eg, &m.original.to_string(), &m.current.to_string());
        s.add_element(&ing, &m.current.to_string(), &m.original.to_string());
        Ok(())
    }

    fn remove_address(&mut self, side: Side, original: IpAddr, s: &mut Script) {
        let Some(cur) = self.table.address_current(side, original) else {
            return;
        };
        self.table
            .apply(&TableChange::RemoveAddress { side, original })
            .expect("removing never fails");
        let (eg, ing) = Self::address_maps(side, Family::of(original));
        s.delete_element(&eg, &original.to_string());
        s.delete_element(&ing, &cur.to_string());
    }

    fn unvalidated(&mut self, remote: IpAddr, cap: u64, received: u64, s: &mut Script) {
        // As in the simulator: a budget already running is not reset by a repeated
        // command (what was sent stays spent).
        if self.budgets.contains_key(&remote) {
            return;
        }
        // Lifted but not deleted yet: its quotas are spent, start afresh.
        if let Some(old) = self.lifted.remove(&remote) {
            Self::delete_budget(remote, old, s);
        }
        let id = self.new_id();
        let cap = cap.min(QUOTA_MAX);
        let limit = cap.min(received.saturating_mul(3));
        let t = s.t().to_owned();
        s.cmd(format_args!("add quota {t} bc{id} {{ over {cap} bytes }}"));
        s.cmd(format_args!("add quota {t} ba{id} {{ over {limit} bytes }}"));
        let d = Family::of(remote).digit();
        s.add_element(&format!("bcap{d}"), &remote.to_string(), &format!("\"bc{id}\""));
        s.add_element(&format!("bamp{d}"), &remote.to_string(), &format!("\"ba{id}\""));
        self.budgets.insert(remote, Budget { id, cap, limit });
    }

    /// Validated (or Unreachable): the limit goes at once by adding the address to the
    /// set the budget chain lets through first, which deletes nothing (deleting, or even
    /// updating, a quota costs an RCU grace period when nft exits); `maintain` removes
    /// the quotas and the exemption later.
    fn lift_budget(&mut self, remote: IpAddr, s: &mut Script) {
        let Some(b) = self.budgets.remove(&remote) else {
            return;
        };
        let t = s.t().to_owned();
        let d = Family::of(remote).digit();
        s.cmd(format_args!("add element {t} bok{d} {{ {remote} }}"));
        self.lifted.insert(remote, b.id);
    }

    /// Deletes a lifted budget: its exemption, its quotas.
    fn delete_budget(remote: IpAddr, id: u64, s: &mut Script) {
        let t = s.t().to_owned();
        let d = Family::of(remote).digit();
        s.cmd(format_args!("delete element {t} bok{d} {{ {remote} }}"));
        s.delete_element(&format!("bcap{d}"), &remote.to_string());
        s.delete_element(&format!("bamp{d}"), &remote.to_string());
        s.cmd(format_args!("delete quota {t} bc{id}"));
        s.cmd(format_args!("delete quota {t} ba{id}"));
    }
}

/// The table, created in one transaction that first replaces any previous one.
fn base_script(table: &str, icmp_group: Option<u16>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{"
    );
    for c in ["eg_translated", "in_translated", "hold_dropped", "budget_dropped"] {
        let _ = writeln!(s, "  counter {c} {{ }}");
    }
    for fam in [Family::V4, Family::V6] {
        let d = fam.digit();
        let a = match fam {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        };
        for p in ["tcp", "udp"] {
            let key = format!("{a} . inet_service . {a} . inet_service");
            let _ = writeln!(s, "  map eg{d}{p} {{ type {key} : verdict; }}");
            // Ingress elements under a former current tuple drain with a timeout.
            let _ = writeln!(s, "  map in{d}{p} {{ type {key} : verdict; flags timeout; }}");
        }
        for m in ["ea", "ia"] {
            for side in ['l', 'r'] {
                let _ = writeln!(s, "  map {m}{d}{side} {{ type {a} : {a}; }}");
            }
        }
        for m in ["bcap", "bamp"] {
            let _ = writeln!(s, "  map {m}{d} {{ type {a} : quota; }}");
        }
        // Addresses whose budget was lifted (until `maintain` deletes it).
        let _ = writeln!(s, "  set bok{d} {{ type {a}; }}");
        // Addresses an ICMP error may quote to be relayed (crate::icmp), keyed by the
        // raw quoted address: nft will not compare a raw load with an address type.
        let bits = match fam {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let _ = writeln!(s, "  set icq{d} {{ typeof @th,128,{bits}; }}");
        // Original tuples of TCP flows whose retransmission kick is armed (crate::icmp):
        // deleted from the packet path by the trigger rule, or by their timeout.
        let _ = writeln!(
            s,
            "  set kick{d} {{ type {a} . inet_service . {a} . inet_service; flags dynamic, timeout; }}"
        );
    }
    // Every translated egress packet ends here. Both quotas are spent by what passes
    // them; bare ACKs only by the cap (see the module docs). `accept` ends the table's
    // processing of the packet (later tables and hooks still see it).
    let _ = writeln!(
        s,
        "  chain budget {{
    ip daddr @bok4 accept
    ip6 daddr @bok6 accept
    quota name ip daddr map @bcap4 counter name \"budget_dropped\" drop
    quota name ip6 daddr map @bcap6 counter name \"budget_dropped\" drop
    tcp flags & (fin | syn | rst | psh) == 0 meta length <= {BARE_ACK_MAX} accept
    quota name ip daddr map @bamp4 counter name \"budget_dropped\" drop
    quota name ip6 daddr map @bamp6 counter name \"budget_dropped\" drop
    accept
  }}"
    );
    for fam in [Family::V4, Family::V6] {
        let (d, l3) = (fam.digit(), fam.l3());
        // Reached once the local address was rewritten: the remote one may be too.
        let _ = writeln!(
            s,
            "  chain ea{d}r {{
    {l3} daddr set {l3} daddr map @ea{d}r goto budget
    goto budget
  }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain egress {{
    type route hook output priority -300; policy accept;
    meta mark {NUDGE_MARK:#x} notrack accept"
    );
    icmp_rules(&mut s, icmp_group, icmp::PREFIX_EGRESS);
    for fam in [Family::V4, Family::V6] {
        let (d, l3) = (fam.digit(), fam.l3());
        for p in ["tcp", "udp"] {
            let _ = writeln!(
                s,
                "    {l3} saddr . {p} sport . {l3} daddr . {p} dport vmap @eg{d}{p}"
            );
        }
    }
    for fam in [Family::V4, Family::V6] {
        let (d, l3) = (fam.digit(), fam.l3());
        let _ = writeln!(
            s,
            "    {l3} saddr set {l3} saddr map @ea{d}l counter name \"eg_translated\" goto ea{d}r
    {l3} daddr set {l3} daddr map @ea{d}r counter name \"eg_translated\" goto budget"
        );
    }
    let _ = writeln!(
        s,
        "  }}
  chain ingress {{
    type filter hook prerouting priority -150; policy accept;
    meta mark {NUDGE_MARK:#x} accept"
    );
    icmp_rules(&mut s, icmp_group, icmp::PREFIX_INGRESS);
    for fam in [Family::V4, Family::V6] {
        let (d, l3) = (fam.digit(), fam.l3());
        for p in ["tcp", "udp"] {
            let _ = writeln!(
                s,
                "    {l3} saddr . {p} sport . {l3} daddr . {p} dport vmap @in{d}{p}"
            );
        }
    }
    for fam in [Family::V4, Family::V6] {
        let (d, l3) = (fam.digit(), fam.l3());
        let _ = writeln!(
            s,
            "    {l3} daddr set {l3} daddr map @ia{d}l counter name \"in_translated\"
    {l3} saddr set {l3} saddr map @ia{d}r counter name \"in_translated\""
        );
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }
    fn udp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Udp, l.parse().unwrap(), r.parse().unwrap())
    }

    fn plan(state: &mut State, cmds: &[DataPlaneCommand]) -> Result<String, TableError> {
        let mut s = Script::new("roam");
        for c in cmds {
            state.plan(c, &mut s, Instant::now(), DEFAULT_DRAIN)?;
        }
        Ok(s.text)
    }

    fn install(original: Tuple, current: Tuple, hold: bool) -> DataPlaneCommand {
        DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
            original,
            current,
            hold,
        }))
    }

    #[test]
    fn a_moved_flow_gets_two_chains_and_two_elements() {
        let mut st = State::default();
        let o = tcp("10.9.0.1:40000", "10.9.0.2:5001");
        let c = tcp("10.9.0.3:40000", "10.9.0.2:5001");
        let text = plan(&mut st, &[install(o, c, false)]).unwrap();
        assert!(text.contains("add chain inet roam i1\n"), "{text}");
        assert!(
            text.contains(
                "add rule inet roam e1 meta l4proto tcp ip saddr set 10.9.0.3 counter name \"eg_translated\" goto budget"
            ),
            "{text}"
        );
        assert!(
            text.contains("add element inet roam eg4tcp { 10.9.0.1 . 40000 . 10.9.0.2 . 5001 : goto e1 }"),
            "{text}"
        );
        assert!(
            text.contains("add element inet roam in4tcp { 10.9.0.2 . 5001 . 10.9.0.3 . 40000 : goto i1 }"),
            "{text}"
        );
        // The ingress chain writes every field back.
        assert!(
            text.contains("add rule inet roam i1 meta l4proto tcp tcp sport set 5001 tcp dport set 40000 ip saddr set 10.9.0.2 ip daddr set 10.9.0.1 counter"),
            "{text}"
        );
    }

    #[test]
    fn udp_over_ipv4_with_new_ports_gets_a_rule_for_zero_checksums() {
        let mut st = State::default();
        let o = udp("10.9.0.1:40000", "10.9.0.2:5001");
        let c = udp("10.9.0.3:40001", "10.9.0.2:5001");
        let text = plan(&mut st, &[install(o, c, false)]).unwrap();
        assert!(
            text.contains("e1 udp checksum 0 @th,0,16 set 40001 ip saddr set 10.9.0.3 "),
            "{text}"
        );
        assert!(
            text.contains("e1 udp checksum != 0 udp sport set 40001 ip saddr set 10.9.0.3 "),
            "{text}"
        );
        let o6 = udp("[fd00::1]:40000", "[fd00::2]:5001");
        let c6 = udp("[fd00::3]:40001", "[fd00::2]:5001");
        let text = plan(&mut st, &[install(o6, c6, false)]).unwrap();
        assert!(!text.contains("checksum"), "{text}");
    }

    #[test]
    fn hold_then_release_inserts_rules_and_deletes_nothing() {
        let mut st = State::default();
        let o = tcp("10.9.0.1:40000", "10.9.0.2:5001");
        let c = tcp("10.9.0.3:40000", "10.9.0.2:5001");
        let text = plan(&mut st, &[install(o, c, true)]).unwrap();
        assert!(text.contains("e1 counter name \"hold_dropped\" drop"), "{text}");
        let text = plan(&mut st, &[install(o, c, false)]).unwrap();
        assert_eq!(
            text,
            "insert rule inet roam e1 meta l4proto tcp ip saddr set 10.9.0.3 counter name \"eg_translated\" goto budget\n"
        );
        // The same entry again: nothing to do.
        assert_eq!(plan(&mut st, &[install(o, c, false)]).unwrap(), "");
        // Tidying replaces the shadowed rules.
        let mut s = Script::new("roam");
        st.plan_tidy(&mut s);
        assert!(
            s.text.starts_with(
                "flush chain inet roam e1\nadd rule inet roam e1 meta l4proto tcp ip saddr set 10.9.0.3"
            ),
            "{}",
            s.text
        );
        let mut s = Script::new("roam");
        st.plan_tidy(&mut s);
        assert_eq!(s.text, "");
    }

    /// The paths a move takes (mover: hold, release, a second move; peer: entry, budget,
    /// validation, the second move) only add: no transaction of theirs pays the RCU
    /// grace period a deletion costs.
    #[test]
    fn the_paths_of_a_move_delete_nothing() {
        let (mut x, mut y) = (State::default(), State::default());
        let o = tcp("10.9.0.1:40000", "10.9.0.2:5001");
        let c1 = tcp("10.9.0.3:40000", "10.9.0.2:5001");
        let c2 = tcp("10.9.0.4:40001", "10.9.0.2:5001");
        let r1: IpAddr = "10.9.0.3".parse().unwrap();
        let r2: IpAddr = "10.9.0.4".parse().unwrap();
        let budget = |remote| DataPlaneCommand::Unvalidated {
            remote,
            cap: 16384,
            received: 200,
        };
        let steps_x = [
            vec![install(o, c1, true)],
            vec![install(o, c1, false)],
            vec![install(o, c2, true)],
            vec![install(o, c2, false)],
        ];
        let steps_y = [
            vec![install(o.reversed(), c1.reversed(), false), budget(r1)],
            vec![DataPlaneCommand::Validated { remote: r1 }],
            vec![install(o.reversed(), c2.reversed(), false), budget(r2)],
            vec![DataPlaneCommand::Validated { remote: r2 }],
        ];
        for step in steps_x {
            let text = plan(&mut x, &step).unwrap();
            assert!(!text.contains("delete") && !text.contains("flush"), "{text}");
        }
        for step in steps_y {
            let text = plan(&mut y, &step).unwrap();
            assert!(!text.contains("delete") && !text.contains("flush"), "{text}");
        }
    }

    #[test]
    fn a_changed_current_drains_and_a_removed_flow_keeps_its_ingress_chain() {
        let mut st = State::default();
        let o = tcp("10.9.0.1:40000", "10.9.0.2:5001");
        let c1 = tcp("10.9.0.3:40000", "10.9.0.2:5001");
        let c2 = tcp("10.9.0.4:40000", "10.9.0.2:5001");
        plan(&mut st, &[install(o, c1, false)]).unwrap();
        let text = plan(&mut st, &[install(o, c2, false)]).unwrap();
        assert!(
            text.contains("add element inet roam in4tcp { 10.9.0.2 . 5001 . 10.9.0.4 . 40000 : goto i1 }")
        );
        assert!(text.contains(
            "add element inet roam in4tcp { 10.9.0.2 . 5001 . 10.9.0.3 . 40000 timeout 2000ms : goto i1 }"
        ));
        assert_eq!(st.alias_of[&o].key, c1);
        let text = plan(
            &mut st,
            &[DataPlaneCommand::Table(TableChange::RemoveFlow { original: o })],
        )
        .unwrap();
        assert!(
            text.contains("delete element inet roam eg4tcp { 10.9.0.1 . 40000 . 10.9.0.2 . 5001 }"),
            "{text}"
        );
        assert!(text.contains("delete chain inet roam e1"), "{text}");
        // c2 drains now, c1's alias goes.
        assert!(
            text.contains("10.9.0.4 . 40000 timeout 2000ms : goto i1 }"),
            "{text}"
        );
        assert!(
            text.contains("10.9.0.3 . 40000 timeout 1ms : goto i1 }"),
            "{text}"
        );
        assert!(!text.contains("delete chain inet roam i1"), "{text}");
        assert!(st.zombies.contains_key(&1));
        // Back to c2 before the chain went: the same ingress chain serves, and the
        // alias under c2 makes way for the permanent element.
        let text = plan(&mut st, &[install(o, c2, false)]).unwrap();
        assert!(!text.contains("add chain inet roam i"), "{text}");
        assert!(
            text.contains("delete element inet roam in4tcp { 10.9.0.2 . 5001 . 10.9.0.4 . 40000 }"),
            "{text}"
        );
        assert!(
            text.ends_with("add element inet roam in4tcp { 10.9.0.2 . 5001 . 10.9.0.4 . 40000 : goto i1 }\n"),
            "{text}"
        );
        assert!(st.zombies.is_empty());
        assert!(st.alias_of.is_empty());
    }

    #[test]
    fn refusals_come_from_the_core_table() {
        let mut st = State::default();
        let a = tcp("10.9.0.1:1", "10.9.0.2:2");
        let b = tcp("10.9.0.1:3", "10.9.0.2:2");
        let c = tcp("10.9.0.3:1", "10.9.0.2:2");
        plan(&mut st, &[install(a, c, false)]).unwrap();
        assert!(matches!(
            plan(&mut st, &[install(b, c, false)]),
            Err(TableError::CurrentInUse { .. })
        ));
        let mixed = tcp("10.9.0.1:1", "[fd00::2]:2");
        assert!(plan(&mut st, &[install(mixed, mixed, false)]).is_err());
    }

    #[test]
    fn budgets_are_two_quotas_not_reset_and_lifted_by_an_exemption() {
        let mut st = State::default();
        let r: IpAddr = "10.9.0.3".parse().unwrap();
        let unvalidated = |cap, received| DataPlaneCommand::Unvalidated {
            remote: r,
            cap,
            received,
        };
        let text = plan(&mut st, &[unvalidated(16384, 100)]).unwrap();
        assert!(
            text.contains("add quota inet roam bc1 { over 16384 bytes }"),
            "{text}"
        );
        assert!(
            text.contains("add quota inet roam ba1 { over 300 bytes }"),
            "{text}"
        );
        assert!(
            text.contains("add element inet roam bcap4 { 10.9.0.3 : \"bc1\" }"),
            "{text}"
        );
        assert_eq!(plan(&mut st, &[unvalidated(1, 1)]).unwrap(), "");
        let text = plan(&mut st, &[DataPlaneCommand::Validated { remote: r }]).unwrap();
        assert_eq!(text, "add element inet roam bok4 { 10.9.0.3 }\n");
        assert_eq!(
            plan(&mut st, &[DataPlaneCommand::Unreachable { remote: r }]).unwrap(),
            ""
        );
        // Unvalidated again before tidying: fresh quotas.
        let text = plan(&mut st, &[unvalidated(1000, 1000)]).unwrap();
        assert!(
            text.starts_with(
                "delete element inet roam bok4 { 10.9.0.3 }\ndelete element inet roam bcap4 { 10.9.0.3 }"
            ),
            "{text}"
        );
        assert!(
            text.contains("delete quota inet roam ba1\nadd quota inet roam bc2 { over 1000 bytes }"),
            "{text}"
        );
        plan(&mut st, &[DataPlaneCommand::Validated { remote: r }]).unwrap();
        let mut s = Script::new("roam");
        st.plan_tidy(&mut s);
        assert!(s.text.contains("delete quota inet roam bc2"), "{}", s.text);
    }

    #[test]
    fn resend_arms_a_one_shot_kick_for_translated_tcp_entries_only() {
        let mut st = State {
            kick_group: Some(7),
            ..State::default()
        };
        // The peer's side of a move: local y, remote X's original and current address.
        let o = tcp("10.9.0.2:5001", "10.9.0.1:40000");
        let c = tcp("10.9.0.2:5001", "10.9.0.3:40000");
        let text = plan(&mut st, &[install(o, c, false)]).unwrap();
        let key = "ip saddr . tcp sport . ip daddr . tcp dport";
        // The trigger comes first in the flow's egress chain, before the rewrite: it
        // sees the original tuple, and it does not end the chain.
        assert!(
            text.contains(&format!(
                "add rule inet roam e1 {key} @kick4 delete @kick4 {{ {key} }} log prefix \"roam-kick\" group 7 snaplen 128\nadd rule inet roam e1 meta l4proto tcp ip daddr set 10.9.0.3"
            )),
            "{text}"
        );
        let resend = DataPlaneCommand::Resend { original: o };
        assert_eq!(st.kick_target(&o), Some(o));
        assert_eq!(
            plan(
                &mut st,
                &[
                    resend,
                    DataPlaneCommand::Nudge {
                        original: o,
                        fast_retransmit: false
                    }
                ]
            )
            .unwrap(),
            "add element inet roam kick4 { 10.9.0.2 . 5001 . 10.9.0.1 . 40000 timeout 2000ms }\n"
        );
        // A second move replaces the rules at the head; the trigger stays first.
        let c2 = tcp("10.9.0.2:5001", "10.9.0.4:40000");
        let text = plan(&mut st, &[install(o, c2, false)]).unwrap();
        let first = text
            .lines()
            .find(|l| l.starts_with("insert rule inet roam e1"))
            .unwrap();
        assert!(first.contains("ip daddr set 10.9.0.4"), "{text}");
        let last = text
            .lines()
            .rfind(|l| l.starts_with("insert rule inet roam e1"))
            .unwrap();
        assert!(
            last.contains("@kick4"),
            "inserted last, so first in the chain: {text}"
        );
        assert!(
            !text.contains("delete element") && !text.contains("flush"),
            "{text}"
        );

        // UDP, held, untranslated or unknown entries: nothing armed.
        let u = udp("10.9.0.2:53", "10.9.0.1:41000");
        let uc = udp("10.9.0.2:53", "10.9.0.3:41000");
        let text = plan(&mut st, &[install(u, uc, false)]).unwrap();
        assert!(!text.contains("kick"), "{text}");
        let h = tcp("10.9.0.2:5002", "10.9.0.1:40001");
        let hc = tcp("10.9.0.2:5002", "10.9.0.3:40001");
        plan(&mut st, &[install(h, hc, true)]).unwrap();
        let same = tcp("10.9.0.2:5003", "10.9.0.1:40002");
        plan(&mut st, &[install(same, same, true)]).unwrap();
        plan(&mut st, &[install(same, same, false)]).unwrap();
        let unknown = tcp("10.9.0.2:5004", "10.9.0.1:40003");
        for t in [u, h, same, unknown] {
            assert_eq!(st.kick_target(&t), None, "{t}");
            assert_eq!(
                plan(&mut st, &[DataPlaneCommand::Resend { original: t }]).unwrap(),
                ""
            );
        }
        // Without the relay, no kicks at all.
        let mut off = State::default();
        let text = plan(&mut off, &[install(o, c, false)]).unwrap();
        assert!(!text.contains("kick"), "{text}");
        assert_eq!(
            plan(&mut off, &[DataPlaneCommand::Resend { original: o }]).unwrap(),
            ""
        );
        // Tidying keeps the trigger in the compacted chain.
        let mut s = Script::new("roam");
        st.plan_tidy(&mut s);
        assert!(
            s.text.contains(&format!(
                "flush chain inet roam e1\nadd rule inet roam e1 {key} @kick4"
            )),
            "{}",
            s.text
        );
    }

    #[test]
    fn v4_mapped_tuples_are_keyed_as_ipv4() {
        let mut st = State::default();
        let o = tcp("[::ffff:10.9.0.1]:40000", "[::ffff:10.9.0.2]:5001");
        let c = tcp("[::ffff:10.9.0.3]:40000", "[::ffff:10.9.0.2]:5001");
        let text = plan(&mut st, &[install(o, c, false)]).unwrap();
        assert!(text.contains("eg4tcp { 10.9.0.1 . 40000"), "{text}");
    }

    #[test]
    fn the_base_script_names_every_map_the_planner_uses() {
        let base = base_script("roam", Some(7));
        for m in [
            "eg4tcp", "eg4udp", "eg6tcp", "eg6udp", "in4tcp", "in6udp", "ea4l", "ea6r", "ia4l", "ia6r",
            "bcap4", "bamp6",
        ] {
            assert!(base.contains(&format!("map {m} {{")), "{m}");
        }
        for k in ["kick4", "kick6"] {
            assert!(base.contains(&format!("set {k} {{")), "{k}");
        }
    }
}
