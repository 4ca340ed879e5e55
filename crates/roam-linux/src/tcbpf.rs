//! The measured alternative to [`crate::nft`]: roam's flow translation as a tc-BPF
//! program (`bpf/translate.bpf.c`, built by clang at build time) attached in
//! direct-action mode to the clsact qdisc of chosen interfaces, with the translation
//! entries in two BPF hash maps that this module fills.
//!
//! It implements flow entries only: [`TableChange::InstallFlow`] (hold included: a held
//! flow's egress packets are dropped, as nft does) and [`TableChange::RemoveFlow`].
//! Every other command (address entries, budgets, nudges, resends) is refused with
//! [`TcBpfError::Unsupported`] and the batch changes nothing. It is what `roam bench
//! dataplane` measures against nftables (docs/BENCHMARKS.md), not the plane roamd ships.
//!
//! # Where the rewrite happens, and what that means for roam
//!
//! ```text
//!  socket (original tuple)                               socket (original tuple)
//!    | output, routing by the ORIGINAL addresses            ^ routing: local
//!    | neighbour resolution, qdisc                          |
//!  [tc egress: roam_egress, original -> current]       [tc ingress: roam_ingress, current -> original]
//!    v                                                      |
//!   wire --------------------------------------------------- wire
//! ```
//!
//! Ingress is as good as nft's prerouting chain: the rewrite happens before the routing
//! decision, so the original local address only has to stay local (on `lo`). Egress is
//! not: tc egress runs after routing and neighbour resolution, so the packet leaves by
//! the device and next hop chosen for its *original* destination, with the Ethernet
//! header already built. When the mover's own address changes (the remote one stays)
//! that is harmless as long as the route to the peer is the same; when the *peer* has
//! moved (this host's stack sends to the peer's old address), the packet would go
//! wherever the old address routes. nft's `type route` output chain re-routes after
//! the rewrite (`ip_route_me_harder`). A tc-BPF plane would have to do the same by
//! hand: `bpf_fib_lookup` on the rewritten tuple (GPL-only: the object's license string
//! would have to be GPL-compatible), then `bpf_redirect_neigh` to the interface it names
//! (Linux 5.10+, which also resolves the neighbour), and it would see packets only on
//! the interfaces it is attached to (every interface a route may lead to). Netfilter
//! (conntrack, NAT, the host's firewall) runs between tc ingress and tc egress, so it
//! sees the original tuple both ways; nft's chains sit outside conntrack's priority,
//! so there it sees the current one.
//!
//! # Checksums and what is not translated
//!
//! See the C file's header: IPv4 header and TCP/UDP checksums are updated
//! incrementally, a zero UDP-over-IPv4 checksum stays zero, and CHECKSUM_PARTIAL and
//! CHECKSUM_COMPLETE packets both come out right (the latter by construction: veth
//! never delivers it, so the tests cannot show it). Not translated: IP fragments (tc sees
//! them one by one: a non-first fragment has no ports; all fragments pass and are
//! counted in [`TcBpfCounters::fragments`]), IPv6 with extension headers before
//! TCP/UDP, ICMP errors quoting a translated flow; no drain of a former current tuple
//! (a changed entry's old ingress key goes at once). nft at the output hook sees whole
//! datagrams (fragmentation comes later) and reassembled ones at prerouting.
//!
//! # Entries
//!
//! - `roam_egress_flows`, keyed by the packet's `saddr, sport, daddr, dport` as the
//!   socket sends it (the original tuple), valued by the current tuple (and the hold
//!   flag). A flow whose current tuple is its original one has no element unless held.
//! - `roam_ingress_flows`, keyed by the packet as it arrives (`current.remote`,
//!   `current.local`), valued by the original tuple (remote end first).
//!
//! A batch is applied to the mirror ([`TranslationTable`], the core's invariants) first,
//! then as at most four `BPF_MAP_*_BATCH` system calls (updates and deletions per map).
//! If the kernel refuses one, what was already written is put back and the mirror too.
//! A packet sees each element either before or after its update, never half of it:
//! the hash maps are not preallocated, so a replaced element is reused only after an
//! RCU grace period (see the C file).
//!
//! The programs and maps live as long as this value; dropping it detaches both programs
//! from every interface (from a thread inside the namespace: tc filters are named by
//! interface index, which only means something there) and removes the clsact qdiscs it
//! created.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use roam_core::translate::{FlowMapping, Protocol, TableChange, TableError, TranslationTable, Tuple};
use roam_core::{DataPlane, DataPlaneCommand};
use serde::Serialize;
use thiserror::Error;

use crate::nft::PacketCount;

/// Hash maps for the batch planner: tuples come from local sockets, not the network,
/// and a batch of 100,000 flows spends most of its userspace time hashing.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The maps' size unless configured otherwise: elements per direction.
pub const DEFAULT_MAX_FLOWS: u32 = 65536;

const EGRESS_PROGRAM: &str = "roam_egress";
const INGRESS_PROGRAM: &str = "roam_ingress";
const EGRESS_MAP: &str = "roam_egress_flows";
const INGRESS_MAP: &str = "roam_ingress_flows";
const COUNTERS_MAP: &str = "roam_counters";

// The C program's constants (translate.bpf.c).
const ROAM_HOLD: u32 = 1;
const CNT_EGRESS: u32 = 0;
const CNT_INGRESS: u32 = 1;
const CNT_HOLD_DROPPED: u32 = 2;
const CNT_ERRORS: u32 = 3;
const CNT_FRAGMENTS: u32 = 4;

/// The object clang built (build.rs), or why there is none.
#[cfg(roam_bpf)]
fn object() -> Result<&'static [u8], TcBpfError> {
    Ok(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/translate.bpf.o"
    )))
}

#[cfg(not(roam_bpf))]
fn object() -> Result<&'static [u8], TcBpfError> {
    Err(TcBpfError::BuiltWithoutClang)
}

/// Whether this build carries the BPF object (clang was there at build time).
pub fn available() -> bool {
    object().is_ok()
}

/// Why the data plane could not open or refused a batch. A refused batch changes
/// nothing, in the kernel or here.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TcBpfError {
    #[error(
        "built without clang: this binary has no tc-BPF object (install clang and libbpf-dev, then rebuild roam-linux)"
    )]
    BuiltWithoutClang,
    /// The translation table's invariants refuse the change (seed 000 ¶0069).
    #[error("translation entry refused: {0}")]
    Table(#[from] TableError),
    #[error("the tc-BPF data plane does not implement {0} (only flow entries)")]
    Unsupported(&'static str),
    #[error("loading the BPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("BPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF map {name}: {detail}")]
    Map { name: &'static str, detail: String },
    #[error("clsact qdisc on {interface}: {source}")]
    Qdisc {
        interface: String,
        #[source]
        source: Box<TcError>,
    },
    #[error("opening network namespace {path}: {source}", path = .path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering the network namespace: {0}")]
    EnterNetns(#[source] io::Error),
    /// The kernel refused a map update (`E2BIG`: the map is full).
    #[error("{op} on {map}: {source} ({done} of {count} elements done, undone)")]
    MapUpdate {
        op: &'static str,
        map: &'static str,
        done: usize,
        count: usize,
        #[source]
        source: io::Error,
    },
}

/// How to open the tc-BPF data plane.
#[derive(Clone, Debug)]
pub struct TcBpfConfig {
    /// The interfaces whose clsact ingress and egress get the programs.
    pub interfaces: Vec<String>,
    /// The network namespace the interfaces are in (`/var/run/netns/NAME`), `None` for
    /// the caller's.
    pub netns: Option<PathBuf>,
    /// Elements per map (per direction).
    pub max_flows: u32,
}

impl Default for TcBpfConfig {
    fn default() -> TcBpfConfig {
        TcBpfConfig {
            interfaces: Vec::new(),
            netns: None,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// The programs' counters (summed over CPUs) and this process's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcBpfCounters {
    /// Packets rewritten original -> current on the way out.
    pub egress_translated: PacketCount,
    /// Packets rewritten current -> original on the way in.
    pub ingress_translated: PacketCount,
    /// Egress packets of held flows, dropped.
    pub hold_dropped: PacketCount,
    /// Packets dropped because a checksum or store helper failed midway.
    pub errors: PacketCount,
    /// IP fragments seen (passed untranslated, whatever their flow).
    pub fragments: PacketCount,
    /// Batches applied, and refused (by the table or the kernel).
    pub batches: u64,
    pub failed_batches: u64,
    /// Map elements written and deleted.
    pub elements_written: u64,
    pub elements_deleted: u64,
}

/// The kernel's maps, decoded ([`TcBpfDataPlane::kernel_entries`]); sorted by
/// original tuple.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelEntries {
    pub egress: Vec<FlowMapping>,
    pub ingress: Vec<FlowMapping>,
}

/// A map key: the packet's flow as it is at the hook. Mirrors `struct flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    family: u8,
    proto: u8,
    pad: u16,
    /// Network byte order, as in the packet.
    sport: [u8; 2],
    dport: [u8; 2],
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// A map value: what the packet becomes. Mirrors `struct flow_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowVal {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    flags: u32,
}

/// Mirrors `struct counter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Counter {
    packets: u64,
    bytes: u64,
}

// SAFETY: plain old data without padding (the layouts above are checked against the C
// ones in the tests: 40, 40 and 16 bytes); any bit pattern is a valid value.
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowVal {}

const _: () = assert!(std::mem::size_of::<FlowKey>() == 40 && std::mem::size_of::<FlowVal>() == 40);

impl FlowKey {
    /// A tuple of this key's family and protocol.
    fn tuple(&self, local: [u8; 16], lport: [u8; 2], remote: [u8; 16], rport: [u8; 2]) -> Tuple {
        let ip = |b: [u8; 16]| -> IpAddr {
            if self.family == 4 {
                IpAddr::from([b[0], b[1], b[2], b[3]])
            } else {
                IpAddr::from(b)
            }
        };
        let protocol = Protocol::from_ip_number(self.proto).unwrap_or(Protocol::Tcp);
        Tuple::new(
            protocol,
            SocketAddr::new(ip(local), u16::from_be_bytes(lport)),
            SocketAddr::new(ip(remote), u16::from_be_bytes(rport)),
        )
    }
}

fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut b = [0u8; 16];
    // A v4-mapped IPv6 address is an IPv4 packet on the wire (as in nft.rs).
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (4, b)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

/// The key of a packet going from `src` to `dst`.
fn key(protocol: u8, src: SocketAddr, dst: SocketAddr) -> FlowKey {
    let (family, saddr) = addr_bytes(src.ip());
    let (_, daddr) = addr_bytes(dst.ip());
    FlowKey {
        family,
        proto: protocol,
        pad: 0,
        sport: src.port().to_be_bytes(),
        dport: dst.port().to_be_bytes(),
        saddr,
        daddr,
    }
}

fn value(src: SocketAddr, dst: SocketAddr, flags: u32) -> FlowVal {
    FlowVal {
        saddr: addr_bytes(src.ip()).1,
        daddr: addr_bytes(dst.ip()).1,
        sport: src.port().to_be_bytes(),
        dport: dst.port().to_be_bytes(),
        flags,
    }
}

/// The egress element of an entry: the socket's packets (original local -> original
/// remote) become current local -> current remote.
fn egress_entry(m: &FlowMapping) -> Option<(FlowKey, FlowVal)> {
    if m.current == m.original && !m.hold {
        return None;
    }
    let p = m.original.protocol.ip_number();
    let flags = if m.hold { ROAM_HOLD } else { 0 };
    Some((
        key(p, m.original.local, m.original.remote),
        value(m.current.local, m.current.remote, flags),
    ))
}

/// The ingress element: what arrives (current remote -> current local) becomes
/// original remote -> original local.
fn ingress_entry(m: &FlowMapping) -> Option<(FlowKey, FlowVal)> {
    if m.current == m.original {
        return None;
    }
    let p = m.original.protocol.ip_number();
    Some((
        key(p, m.current.remote, m.current.local),
        value(m.original.remote, m.original.local, 0),
    ))
}

/// The tc-BPF data plane. See the module documentation.
pub struct TcBpfDataPlane {
    config: TcBpfConfig,
    netns: Option<File>,
    /// `Map::HashMap`s (checked at open).
    egress: Map,
    ingress: Map,
    counters: PerCpuArray<MapData, Counter>,
    /// Detached in the namespace on drop.
    links: Vec<SchedClassifierLink>,
    /// clsact qdiscs this plane added (removed on drop).
    created_qdiscs: Vec<String>,
    /// Keeps the programs loaded (the filters hold them too).
    _ebpf: Ebpf,
    table: TranslationTable,
    local: TcBpfCounters,
}

impl std::fmt::Debug for TcBpfDataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcBpfDataPlane")
            .field("interfaces", &self.config.interfaces)
            .field("netns", &self.config.netns)
            .field("flows", &self.table.flow_count())
            .finish_non_exhaustive()
    }
}

/// Runs `f` on a short-lived thread inside the namespace `ns` (or here, for `None`):
/// interface names and indexes, and netlink sockets, are per namespace.
fn in_netns<T: Send>(ns: Option<&File>, f: impl FnOnce() -> T + Send) -> Result<T, TcBpfError> {
    let Some(ns) = ns else {
        return Ok(f());
    };
    let fd = ns.as_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns only reads the descriptor, which `ns` keeps open.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(TcBpfError::EnterNetns(io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(TcBpfError::EnterNetns(io::Error::other("thread panicked"))))
    })
}

/// What attaching produced, inside the namespace.
struct Attached {
    ebpf: Ebpf,
    links: Vec<SchedClassifierLink>,
    created_qdiscs: Vec<String>,
}

/// Loads the object and attaches both programs to every interface; on failure, what
/// was attached is detached again (the links drop here, inside the namespace).
fn load_and_attach(config: &TcBpfConfig) -> Result<Attached, TcBpfError> {
    let mut ebpf = EbpfLoader::new()
        // No CO-RE relocations in this object: the kernel's BTF is not needed.
        .btf(None)
        .map_max_entries(EGRESS_MAP, config.max_flows)
        .map_max_entries(INGRESS_MAP, config.max_flows)
        .load(object()?)
        .map_err(|e| TcBpfError::Load(Box::new(e)))?;
    for name in [EGRESS_PROGRAM, INGRESS_PROGRAM] {
        program(&mut ebpf, name)?
            .load()
            .map_err(|e| TcBpfError::Program {
                name,
                source: Box::new(e),
            })?;
    }
    let mut attached = Attached {
        ebpf,
        links: Vec::new(),
        created_qdiscs: Vec::new(),
    };
    let result = (|| {
        for iface in &config.interfaces {
            match aya::programs::tc::qdisc_add_clsact(iface) {
                Ok(()) => attached.created_qdiscs.push(iface.clone()),
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(TcBpfError::Qdisc {
                        interface: iface.clone(),
                        source: Box::new(e),
                    });
                }
            }
            for (name, hook) in [
                (EGRESS_PROGRAM, TcAttachType::Egress),
                (INGRESS_PROGRAM, TcAttachType::Ingress),
            ] {
                let prog = program(&mut attached.ebpf, name)?;
                let prog_err = |e| TcBpfError::Program {
                    name,
                    source: Box::new(e),
                };
                // Netlink (cls_bpf, direct-action on clsact), not TCX: what this
                // kernel's notes list, and what older kernels have.
                let id = prog
                    .attach_with_options(iface, hook, TcAttachOptions::Netlink(NlOptions::default()))
                    .map_err(prog_err)?;
                let link = prog.take_link(id).map_err(prog_err)?;
                attached.links.push(link);
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(attached),
        Err(e) => {
            detach(attached.links, &attached.created_qdiscs);
            Err(e)
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, TcBpfError> {
    let prog = ebpf.program_mut(name).ok_or(TcBpfError::Map {
        name,
        detail: "no such program in the object".into(),
    })?;
    prog.try_into().map_err(|e| TcBpfError::Program {
        name,
        source: Box::new(e),
    })
}

/// Detaches the filters (their drop does it through netlink) and deletes the clsact
/// qdiscs that were created, unless someone else has attached filters there since.
/// Call inside the namespace. Best effort: an interface that is gone took its filters
/// with it.
fn detach(links: Vec<SchedClassifierLink>, created_qdiscs: &[String]) {
    drop(links);
    // aya has no call for listing filters or removing a qdisc; iproute2's tc does both
    // (at teardown only, never on the paths of a move).
    let tc = |args: &[&str]| {
        std::process::Command::new("tc")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
    };
    for iface in created_qdiscs {
        let others = ["ingress", "egress"].iter().any(|hook| {
            tc(&["filter", "show", "dev", iface, hook])
                .map(|o| !o.status.success() || !o.stdout.is_empty())
                .unwrap_or(true)
        });
        if others {
            tracing::debug!(interface = %iface, "clsact left in place: other filters use it");
            continue;
        }
        match tc(&["qdisc", "del", "dev", iface, "clsact"]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::debug!(
                interface = %iface,
                stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                "removing the clsact qdisc"
            ),
            Err(e) => tracing::debug!(interface = %iface, error = %e, "running tc"),
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, TcBpfError> {
    ebpf.take_map(name).ok_or(TcBpfError::Map {
        name,
        detail: "no such map in the object".into(),
    })
}

fn hash_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, TcBpfError> {
    match take_map(ebpf, name)? {
        m @ Map::HashMap(_) => Ok(m),
        other => Err(TcBpfError::Map {
            name,
            detail: format!("expected a hash map, found {other:?}"),
        }),
    }
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::HashMap(data) => data,
        _ => unreachable!("checked by hash_map at open"),
    }
}

impl TcBpfDataPlane {
    /// Loads the programs (the kernel verifies them), attaches them to the clsact
    /// ingress and egress of every configured interface (adding the qdisc where there
    /// is none) and starts with empty maps.
    pub fn open(config: TcBpfConfig) -> Result<TcBpfDataPlane, TcBpfError> {
        object()?;
        let netns = match &config.netns {
            Some(path) => Some(File::open(path).map_err(|source| TcBpfError::Netns {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let Attached {
            mut ebpf,
            links,
            created_qdiscs,
        } = in_netns(netns.as_ref(), || load_and_attach(&config))??;
        let maps = (|| {
            let egress = hash_map(&mut ebpf, EGRESS_MAP)?;
            let ingress = hash_map(&mut ebpf, INGRESS_MAP)?;
            let counters =
                PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP)?).map_err(|e| TcBpfError::Map {
                    name: COUNTERS_MAP,
                    detail: e.to_string(),
                })?;
            Ok((egress, ingress, counters))
        })();
        let (egress, ingress, counters) = match maps {
            Ok(m) => m,
            Err(e) => {
                let _ = in_netns(netns.as_ref(), || detach(links, &created_qdiscs));
                return Err(e);
            }
        };
        tracing::info!(interfaces = ?config.interfaces, netns = ?config.netns, "tc-BPF data plane ready");
        Ok(TcBpfDataPlane {
            config,
            netns,
            egress,
            ingress,
            counters,
            links,
            created_qdiscs,
            _ebpf: ebpf,
            table: TranslationTable::new(0),
            local: TcBpfCounters::default(),
        })
    }

    pub fn config(&self) -> &TcBpfConfig {
        &self.config
    }

    /// The flow entries installed, sorted by original tuple (from the mirror).
    pub fn entries(&self) -> Vec<FlowMapping> {
        self.table.flows()
    }

    /// Applies `commands` in order: all of them or none (see the module docs).
    pub fn apply_batch(&mut self, commands: &[DataPlaneCommand]) -> Result<(), TcBpfError> {
        let result = self.apply_inner(commands);
        match &result {
            Ok(()) => self.local.batches += 1,
            Err(e) => {
                self.local.failed_batches += 1;
                tracing::debug!(error = %e, "batch refused");
            }
        }
        result
    }

    fn apply_inner(&mut self, commands: &[DataPlaneCommand]) -> Result<(), TcBpfError> {
        let mut changes = Vec::with_capacity(commands.len());
        for c in commands {
            match c {
                DataPlaneCommand::Table(
                    t @ (TableChange::InstallFlow(_) | TableChange::RemoveFlow { .. }),
                ) => changes.push(t),
                DataPlaneCommand::Table(_) => return Err(TcBpfError::Unsupported("address entries")),
                DataPlaneCommand::Nudge { .. } => return Err(TcBpfError::Unsupported("nudges")),
                DataPlaneCommand::Resend { .. } => return Err(TcBpfError::Unsupported("resends")),
                DataPlaneCommand::Unvalidated { .. }
                | DataPlaneCommand::Validated { .. }
                | DataPlaneCommand::Unreachable { .. } => {
                    return Err(TcBpfError::Unsupported("return-routability budgets"));
                }
            }
        }
        // The mirror first, with an undo log: a refusal puts it back as it was.
        let mut undo: Vec<TableChange> = Vec::with_capacity(changes.len());
        // Each original the batch touches, once, with its entry before the batch.
        let mut before: FastMap<Tuple, Option<FlowMapping>> = FastMap::default();
        before.reserve(changes.len());
        let mut order: Vec<Tuple> = Vec::with_capacity(changes.len());
        for change in &changes {
            let original = match change {
                TableChange::InstallFlow(m) => m.original,
                TableChange::RemoveFlow { original } => *original,
                _ => unreachable!("filtered above"),
            };
            let previous = self.table.flow_by_original(&original).copied();
            if let Err(e) = self.table.apply(change) {
                self.undo(undo);
                return Err(e.into());
            }
            undo.push(match previous {
                Some(p) => TableChange::InstallFlow(p),
                None => TableChange::RemoveFlow { original },
            });
            if let std::collections::hash_map::Entry::Vacant(v) = before.entry(original) {
                v.insert(previous);
                order.push(original);
            }
        }
        // What each map must become for the flows the batch touched. Every current
        // tuple belonged to at most one original before and belongs to at most one
        // after (the table's invariant), and an original whose current changed is in
        // the batch: so every ingress element the batch replaces or deletes is the old
        // element of one of the batch's originals. (A batch of new flows has none, and
        // costs no lookups here.)
        let mut eg_put = Vec::with_capacity(order.len());
        let mut eg_del = Vec::new();
        let mut in_put: Vec<((FlowKey, FlowVal), Option<FlowVal>)> = Vec::with_capacity(order.len());
        let mut in_gone: Vec<(FlowKey, FlowVal)> = Vec::new();
        let mut in_old: FastMap<FlowKey, FlowVal> = FastMap::default();
        for original in &order {
            let old = before[original];
            let new = self.table.flow_by_original(original).copied();
            let (eo, en) = (
                old.as_ref().and_then(egress_entry),
                new.as_ref().and_then(egress_entry),
            );
            match (eo, en) {
                (_, Some(n)) if eo != Some(n) => eg_put.push((n, eo.map(|o| o.1))),
                (Some(o), None) => eg_del.push(o),
                _ => {}
            }
            let (io, inew) = (
                old.as_ref().and_then(ingress_entry),
                new.as_ref().and_then(ingress_entry),
            );
            if let Some(o) = io {
                in_old.insert(o.0, o.1);
                if inew.map(|n| n.0) != Some(o.0) {
                    in_gone.push(o);
                }
            }
            if let Some(n) = inew
                && io != Some(n)
            {
                // Its value before the batch, if another original held this key: filled
                // in below, once every old element is known.
                in_put.push((n, None));
            }
        }
        let mut in_del = Vec::new();
        if !in_old.is_empty() {
            for ((k, v), old) in in_put.iter_mut() {
                *old = in_old.get(k).copied();
                // The value names the original, so the same element under another
                // original cannot be: this is a write.
                debug_assert!(*old != Some(*v));
            }
            let new_keys: FastSet<FlowKey> = in_put.iter().map(|((k, _), _)| *k).collect();
            in_del = in_gone
                .into_iter()
                .filter(|(k, _)| !new_keys.contains(k))
                .collect();
        }
        // The kernel: new ingress elements first (replies under the new tuple are
        // understood before anything leaves under it), then egress, then what goes.
        let mut journal = Journal::default();
        let (egress, ingress) = (map_data(&self.egress), map_data(&self.ingress));
        let steps: [(&'static str, &MapData, Op<'_>); 4] = [
            (INGRESS_MAP, ingress, Op::Put(&in_put)),
            (EGRESS_MAP, egress, Op::Put(&eg_put)),
            (EGRESS_MAP, egress, Op::Delete(&eg_del)),
            (INGRESS_MAP, ingress, Op::Delete(&in_del)),
        ];
        let failed = steps
            .into_iter()
            .find_map(|(name, map, op)| journal.run(name, map, op).err());
        if let Some(e) = failed {
            journal.roll_back(egress, ingress);
            self.undo(undo);
            return Err(e);
        }
        self.local.elements_written += (in_put.len() + eg_put.len()) as u64;
        self.local.elements_deleted += (in_del.len() + eg_del.len()) as u64;
        Ok(())
    }

    fn undo(&mut self, undo: Vec<TableChange>) {
        for change in undo.into_iter().rev() {
            // Restoring a state the table held a moment ago cannot break its invariants.
            let _ = self.table.apply(&change);
        }
    }

    /// The programs' counters, summed over CPUs, and this process's.
    pub fn counters(&self) -> Result<TcBpfCounters, TcBpfError> {
        let mut c = self.local.clone();
        for (index, slot) in [
            (CNT_EGRESS, &mut c.egress_translated),
            (CNT_INGRESS, &mut c.ingress_translated),
            (CNT_HOLD_DROPPED, &mut c.hold_dropped),
            (CNT_ERRORS, &mut c.errors),
            (CNT_FRAGMENTS, &mut c.fragments),
        ] {
            let per_cpu = self.counters.get(&index, 0).map_err(|e| TcBpfError::Map {
                name: COUNTERS_MAP,
                detail: e.to_string(),
            })?;
            for v in per_cpu.iter() {
                slot.packets += v.packets;
                slot.bytes += v.bytes;
            }
        }
        Ok(c)
    }

    /// What the kernel's maps hold, read back and decoded (one walk over each map): the
    /// egress elements as entries (original -> current, hold), and the ingress
    /// elements as the entries they undo. For tests and diagnostics; the mirror
    /// ([`TcBpfDataPlane::entries`]) is what the plane goes by.
    pub fn kernel_entries(&self) -> Result<KernelEntries, TcBpfError> {
        fn read(map: &Map, name: &'static str) -> Result<Vec<(FlowKey, FlowVal)>, TcBpfError> {
            let err = |e: aya::maps::MapError| TcBpfError::Map {
                name,
                detail: e.to_string(),
            };
            let typed = aya::maps::HashMap::<_, FlowKey, FlowVal>::try_from(map).map_err(err)?;
            typed.iter().map(|kv| kv.map_err(err)).collect()
        }
        let mut egress: Vec<FlowMapping> = read(&self.egress, EGRESS_MAP)?
            .into_iter()
            .map(|(k, v)| FlowMapping {
                original: k.tuple(k.saddr, k.sport, k.daddr, k.dport),
                current: k.tuple(v.saddr, v.sport, v.daddr, v.dport),
                hold: v.flags & ROAM_HOLD != 0,
            })
            .collect();
        let mut ingress: Vec<FlowMapping> = read(&self.ingress, INGRESS_MAP)?
            .into_iter()
            .map(|(k, v)| FlowMapping {
                // Keyed by what arrives: remote -> local.
                original: k.tuple(v.daddr, v.dport, v.saddr, v.sport),
                current: k.tuple(k.daddr, k.dport, k.saddr, k.sport),
                hold: false,
            })
            .collect();
        egress.sort_by_key(|m| m.original);
        ingress.sort_by_key(|m| m.original);
        Ok(KernelEntries { egress, ingress })
    }

    /// Detaches the programs now (dropping does the same, ignoring errors).
    pub fn close(mut self) -> Result<(), TcBpfError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), TcBpfError> {
        let links = std::mem::take(&mut self.links);
        let created = std::mem::take(&mut self.created_qdiscs);
        if links.is_empty() && created.is_empty() {
            return Ok(());
        }
        in_netns(self.netns.as_ref(), || detach(links, &created))
    }
}

impl DataPlane for TcBpfDataPlane {
    type Error = TcBpfError;

    fn apply(&mut self, command: &DataPlaneCommand) -> Result<(), TcBpfError> {
        self.apply_batch(std::slice::from_ref(command))
    }
}

impl Drop for TcBpfDataPlane {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "detaching the tc-BPF programs");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Map writes: the bpf(2) batch commands, which aya does not wrap.

/// One step of a batch: elements to write (with the value they replace, for the undo)
/// or to delete (with the value they had).
enum Op<'a> {
    Put(&'a [((FlowKey, FlowVal), Option<FlowVal>)]),
    Delete(&'a [(FlowKey, FlowVal)]),
}

/// What a batch changed so far, to put back if a later step fails.
#[derive(Default)]
struct Journal {
    /// (map, key, value before: `None` = absent)
    done: Vec<(&'static str, FlowKey, Option<FlowVal>)>,
}

impl Journal {
    fn run(&mut self, name: &'static str, map: &MapData, op: Op<'_>) -> Result<(), TcBpfError> {
        let fd = map.fd().as_fd();
        match op {
            Op::Put(elements) => {
                if elements.is_empty() {
                    return Ok(());
                }
                let keys: Vec<FlowKey> = elements.iter().map(|((k, _), _)| *k).collect();
                let values: Vec<FlowVal> = elements.iter().map(|((_, v), _)| *v).collect();
                let (done, result) = sys::update_batch(fd, &keys, &values);
                for ((k, _), old) in &elements[..done] {
                    self.done.push((name, *k, *old));
                }
                result.map_err(|source| TcBpfError::MapUpdate {
                    op: "update",
                    map: name,
                    done,
                    count: elements.len(),
                    source,
                })
            }
            Op::Delete(elements) => {
                if elements.is_empty() {
                    return Ok(());
                }
                let keys: Vec<FlowKey> = elements.iter().map(|(k, _)| *k).collect();
                let (done, result) = sys::delete_batch(fd, &keys);
                for (k, old) in &elements[..done] {
                    self.done.push((name, *k, Some(*old)));
                }
                result.map_err(|source| TcBpfError::MapUpdate {
                    op: "delete",
                    map: name,
                    done,
                    count: elements.len(),
                    source,
                })
            }
        }
    }

    /// Puts back what was changed, newest first, element by element (best effort: a
    /// failure is logged; it can only be the kernel refusing what it held a moment ago).
    fn roll_back(self, egress: &MapData, ingress: &MapData) {
        for (name, k, old) in self.done.into_iter().rev() {
            let map = if name == EGRESS_MAP { egress } else { ingress };
            let fd = map.fd().as_fd();
            let result = match old {
                Some(v) => sys::update_batch(fd, &[k], &[v]).1,
                None => sys::delete_batch(fd, &[k]).1,
            };
            if let Err(e) = result {
                tracing::warn!(map = name, error = %e, "rolling back a map element");
            }
        }
    }
}

mod sys {
    //! `bpf(BPF_MAP_UPDATE_BATCH)` and `bpf(BPF_MAP_DELETE_BATCH)` (Linux 5.6+): one
    //! system call for any number of elements of a hash map. The kernel applies them
    //! in order and stops at the first failure, reporting how many it did.

    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    /// Larger batches are split: the kernel copies keys and values in, one element at a
    /// time, but a single call on 100,000 elements holds the map's locks for long.
    const CHUNK: usize = 16384;

    /// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    fn call(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the pointers
        // in it point to live arrays of `count` elements of the map's key and value
        // sizes (the callers' slices), which the kernel only reads (count is written).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Writes `keys[i] -> values[i]` (insert or replace). Returns how many were written
    /// and the first error.
    pub(super) fn update_batch<K: Copy, V: Copy>(
        fd: BorrowedFd<'_>,
        keys: &[K],
        values: &[V],
    ) -> (usize, io::Result<()>) {
        assert_eq!(keys.len(), values.len());
        let mut done = 0;
        for (ks, vs) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
            let mut attr = BatchAttr {
                keys: ks.as_ptr() as u64,
                values: vs.as_ptr() as u64,
                count: ks.len() as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = call(BPF_MAP_UPDATE_BATCH, &mut attr);
            if let Err(e) = result {
                return (done + (attr.count as usize).min(ks.len()), Err(e));
            }
            done += ks.len();
        }
        (done, Ok(()))
    }

    /// Deletes `keys` (each must exist). Returns how many were deleted and the first
    /// error.
    pub(super) fn delete_batch<K: Copy>(fd: BorrowedFd<'_>, keys: &[K]) -> (usize, io::Result<()>) {
        let mut done = 0;
        for ks in keys.chunks(CHUNK) {
            let mut attr = BatchAttr {
                keys: ks.as_ptr() as u64,
                count: ks.len() as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = call(BPF_MAP_DELETE_BATCH, &mut attr);
            if let Err(e) = result {
                return (done + (attr.count as usize).min(ks.len()), Err(e));
            }
            done += ks.len();
        }
        (done, Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<FlowKey>(), 40);
        assert_eq!(std::mem::offset_of!(FlowKey, sport), 4);
        assert_eq!(std::mem::offset_of!(FlowKey, saddr), 8);
        assert_eq!(std::mem::offset_of!(FlowKey, daddr), 24);
        assert_eq!(std::mem::size_of::<FlowVal>(), 40);
        assert_eq!(std::mem::offset_of!(FlowVal, sport), 32);
        assert_eq!(std::mem::offset_of!(FlowVal, flags), 36);
        assert_eq!(std::mem::size_of::<Counter>(), 16);
    }

    #[test]
    fn elements_of_a_moved_flow() {
        let m = FlowMapping {
            original: tcp("10.0.0.1:40000", "10.0.0.2:5001"),
            current: tcp("10.0.0.3:40001", "10.0.0.2:5001"),
            hold: false,
        };
        let (k, v) = egress_entry(&m).unwrap();
        assert_eq!((k.family, k.proto), (4, 6));
        assert_eq!(&k.saddr[..4], &[10, 0, 0, 1]);
        assert_eq!(k.saddr[4..], [0; 12]);
        assert_eq!(k.sport, 40000u16.to_be_bytes());
        assert_eq!(&v.saddr[..4], &[10, 0, 0, 3]);
        assert_eq!(v.sport, 40001u16.to_be_bytes());
        assert_eq!(v.flags, 0);
        // Ingress: keyed by what arrives (from the peer to the current local end).
        let (k, v) = ingress_entry(&m).unwrap();
        assert_eq!(&k.saddr[..4], &[10, 0, 0, 2]);
        assert_eq!(&k.daddr[..4], &[10, 0, 0, 3]);
        assert_eq!(
            (k.sport, k.dport),
            (5001u16.to_be_bytes(), 40001u16.to_be_bytes())
        );
        assert_eq!(&v.daddr[..4], &[10, 0, 0, 1]);
        assert_eq!(v.dport, 40000u16.to_be_bytes());
    }

    #[test]
    fn an_untranslated_entry_has_elements_only_while_held() {
        let t = tcp("[fd00::1]:40000", "[fd00::2]:5001");
        let held = FlowMapping {
            original: t,
            current: t,
            hold: true,
        };
        let (k, v) = egress_entry(&held).unwrap();
        assert_eq!(k.family, 6);
        assert_eq!(v.flags, ROAM_HOLD);
        assert!(ingress_entry(&held).is_none());
        let released = FlowMapping { hold: false, ..held };
        assert!(egress_entry(&released).is_none());
    }

    #[test]
    fn v4_mapped_addresses_key_as_ipv4() {
        let m = FlowMapping {
            original: tcp("[::ffff:10.0.0.1]:1", "[::ffff:10.0.0.2]:2"),
            current: tcp("[::ffff:10.0.0.3]:1", "[::ffff:10.0.0.2]:2"),
            hold: false,
        };
        let (k, _) = egress_entry(&m).unwrap();
        assert_eq!(k.family, 4);
        assert_eq!(&k.saddr[..4], &[10, 0, 0, 1]);
    }
}
