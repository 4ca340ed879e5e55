//! The kernel's Multipath TCP (RFC 8684), driven by its in-kernel path manager.
//!
//! Sockets opened with [`IPPROTO_MPTCP`] (or programs run under `mptcpize run`, which
//! swaps the protocol in with `LD_PRELOAD`) open one MPTCP connection made of TCP
//! subflows. The path manager opens a subflow from every *endpoint* of A's marked
//! `subflow` (`ip mptcp endpoint add ADDR dev IF subflow`) to B's address (MP_JOIN,
//! RFC 8684 §3.2), and closes the subflows of an endpoint that is deleted, announcing
//! it to B with REMOVE_ADDR (§3.4.2). Data lost with a subflow is sent again on another
//! at the connection level (§3.3.6). B needs no endpoint: it accepts joins to the
//! address and port it listens on.
//!
//! A moves in one of two ways ([`MptcpMove`]):
//! - **make-before-break**: the new subnet's addresses and endpoints come first; once
//!   every connection has a subflow from the new address, the old endpoints and then
//!   the old addresses go (the instant the handover is measured from);
//! - **break-before-make**: the old addresses go (the link is lost), then their
//!   endpoints (what a path-manager daemon such as mptcpd does when it sees the address
//!   go), then the new addresses, routes and endpoints come. Between the two, a
//!   connection has no subflow at all; this kernel keeps it open, and the new endpoint
//!   gives it a subflow again.
//!
//! A subflow from A's second address must leave through that address's own link: R
//! validates sources (BCP 38) and drops it on the other. Source-based policy routing
//! does that: a rule per access address sends its packets to a table whose default
//! route is that subnet's gateway, for both families.
//!
//! Whether a connection really is Multipath TCP (and not a fallback to plain TCP after
//! a SYN-ACK without MP_CAPABLE, RFC 8684 §3.7) is read from `ss -M` (the connection's
//! flags) and from the MIB counters of both hosts ([`MptcpCounters`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use super::{Carrier, IPPROTO_MPTCP};
use crate::capture::{PacketFilter, Protocol};
use crate::netns::{DEFAULT_COMMAND_TIMEOUT, LabError, Ns, run_checked};
use crate::topology::{Family, MoveTimes, Subnet, Topology};

/// How A moves from one subnet to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MptcpMove {
    /// The new path first: a subflow from the new address is up before the old one goes.
    MakeBeforeBreak,
    /// The old path first: the old address is lost, then the new one comes.
    BreakBeforeMake,
}

/// What the path manager may do on each host: up to 8 subflows per connection, and up
/// to 8 addresses announced by the peer accepted (the kernel's defaults are 2 and 0).
const LIMITS: &str = "mptcp limits set subflow 8 add_addr_accepted 8\n";

/// How long [`Carrier::wait_ready`] waits for a Multipath TCP connection with a subflow.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a make-before-break move waits for the subflows from the new address
/// before it removes the old one anyway (and says so in the notes).
const SUBFLOW_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two looks at the sockets while waiting.
const POLL: Duration = Duration::from_millis(5);

/// The counters (without the `MPTcpExt` prefix) that count a connection falling back to
/// plain TCP (RFC 8684 §3.7), or Multipath TCP being given up on a path: any of them
/// above zero means a measured connection was not Multipath TCP all along.
pub const FALLBACK_COUNTERS: [&str; 13] = [
    "MPCapableFallbackACK",
    "MPCapableFallbackSYNACK",
    "MPFallbackTokenInit",
    "DSSCorruptionFallback",
    "MPCapableDataFallback",
    "DssFallback",
    "SimultConnectFallback",
    "FallbackFailed",
    "MD5SigFallback",
    "InfiniteMapTx",
    "InfiniteMapRx",
    "MPCapableSYNTXDrop",
    "MPCapableSYNTXDisabled",
];

/// A's policy-routing table for the subflows from its address on `subnet`.
fn table(subnet: Subnet) -> u32 {
    match subnet {
        Subnet::One => 201,
        Subnet::Two => 202,
    }
}

/// The endpoint id of A's address on `subnet` in `family`: fixed, so that a move deletes
/// exactly the endpoints it means to.
fn endpoint_id(subnet: Subnet, family: Family) -> u8 {
    match (subnet, family) {
        (Subnet::One, Family::V4) => 1,
        (Subnet::One, Family::V6) => 2,
        (Subnet::Two, Family::V4) => 3,
        (Subnet::Two, Family::V6) => 4,
    }
}

/// The default routes of `subnet`'s policy table (the kernel drops the IPv4 one with
/// the address, so every arrival on a subnet puts them back).
fn table_routes(subnet: Subnet) -> String {
    let (gw, dev, t) = (subnet.router(), subnet.interface(), table(subnet));
    format!(
        "route replace default via {} dev {dev} table {t}\n\
         route replace default via {} dev {dev} table {t}\n",
        gw.v4, gw.v6
    )
}

fn add_endpoints(subnet: Subnet) -> String {
    let (a, dev) = (subnet.a(), subnet.interface());
    Family::BOTH
        .iter()
        .map(|&f| {
            format!(
                "mptcp endpoint add {} id {} dev {dev} subflow\n",
                a.get(f),
                endpoint_id(subnet, f)
            )
        })
        .collect()
}

fn remove_endpoints(subnet: Subnet) -> String {
    Family::BOTH
        .iter()
        .map(|&f| format!("mptcp endpoint delete id {}\n", endpoint_id(subnet, f)))
        .collect()
}

/// The kernel's Multipath TCP between A and B on a [`Topology`]: limits on both hosts,
/// endpoints and source routing on A, and A's moves made through the path manager.
#[derive(Debug)]
pub struct Mptcp {
    how: MptcpMove,
    a: Ns,
    b: Ns,
    /// `ip mptcp limits show` of A and B before, restored at the stop.
    limits_before: Vec<(Ns, String)>,
    counters_start: Option<[MptcpCounters; 2]>,
    counters_end: Option<[MptcpCounters; 2]>,
    /// The most established subflows one connection had when looked at.
    max_subflows: usize,
    /// Make-before-break: from adding the new endpoints to every connection having a
    /// subflow from them, per move.
    subflow_waits: Vec<Duration>,
    /// Make-before-break moves whose new subflows did not come within the bound.
    late_subflows: u32,
    moves: u32,
    /// Connections seen falling back to plain TCP in `ss -M`.
    fallbacks_seen: u32,
    /// Connections found closing (an end shut its sending side) at a move: the path
    /// manager opens subflows only for established connections, so these keep only the
    /// paths they had.
    closing_at_moves: u32,
    stopped: bool,
}

impl Mptcp {
    /// Sets Multipath TCP up on the topology: enabled and with room for subflows on A
    /// and B, an endpoint for A's current addresses, and source routing for both of
    /// A's subnets. Both families are set up whatever `family` is (it is taken for
    /// symmetry with the other carriers).
    pub fn start(topology: &Topology, family: Family, how: MptcpMove) -> Result<Mptcp, LabError> {
        let _ = family;
        // Another carrier's endpoints would be deleted with ours at the stop: refuse
        // before changing anything.
        let endpoints = topology.a().ip(&["mptcp", "endpoint", "show"])?.stdout;
        if !endpoints.trim().is_empty() {
            return Err(LabError::Invalid(format!(
                "A already has Multipath TCP endpoints (another carrier running?): {}",
                endpoints.trim()
            )));
        }
        let mut mptcp = Mptcp {
            how,
            a: topology.a().clone(),
            b: topology.b().clone(),
            limits_before: Vec::new(),
            counters_start: None,
            counters_end: None,
            max_subflows: 0,
            subflow_waits: Vec::new(),
            late_subflows: 0,
            moves: 0,
            fallbacks_seen: 0,
            closing_at_moves: 0,
            stopped: false,
        };
        if let Err(e) = mptcp.set_up(topology.a_subnet()) {
            if let Err(cleanup) = mptcp.clean_up() {
                tracing::warn!("cleaning up a Multipath TCP set-up that failed: {cleanup}");
            }
            return Err(e);
        }
        Ok(mptcp)
    }

    fn set_up(&mut self, current: Subnet) -> Result<(), LabError> {
        for ns in [&self.a, &self.b] {
            ns.sysctl(&[("net.mptcp.enabled", "1")]).map_err(|e| {
                LabError::Invalid(format!("this kernel offers no Multipath TCP (net.mptcp): {e}"))
            })?;
            let limits = ns.ip(&["mptcp", "limits", "show"])?.stdout;
            self.limits_before.push((ns.clone(), limits));
            ns.ip_batch(LIMITS)?;
        }
        // One rule per access address and family (`ip rule` takes the family from the
        // command line, not from the address).
        for family in Family::BOTH {
            let rules: String = [Subnet::One, Subnet::Two]
                .iter()
                .map(|&s| format!("rule add from {} table {}\n", s.a().get(family), table(s)))
                .collect();
            ip_batch_family(&self.a, family, &rules)?;
        }
        self.a
            .ip_batch(&(table_routes(current) + &add_endpoints(current)))?;
        self.counters_start = Some([MptcpCounters::read(&self.a)?, MptcpCounters::read(&self.b)?]);
        Ok(())
    }

    /// How this carrier moves A.
    pub fn how(&self) -> MptcpMove {
        self.how
    }

    /// The MIB counters of A and B since the start (up to the stop once stopped).
    pub fn counters(&self) -> Result<[MptcpCounters; 2], LabError> {
        let Some([a0, b0]) = &self.counters_start else {
            return Err(LabError::Invalid("Multipath TCP was not set up".into()));
        };
        let [a1, b1] = match &self.counters_end {
            Some(end) => end.clone(),
            None => [MptcpCounters::read(&self.a)?, MptcpCounters::read(&self.b)?],
        };
        Ok([a1.since(a0), b1.since(b0)])
    }

    /// Connections that fell back to plain TCP since the start, by the counters of both
    /// hosts (plus any seen flagged so in `ss -M`).
    pub fn fallbacks(&self) -> Result<u64, LabError> {
        let [a, b] = self.counters()?;
        Ok(a.fallbacks() + b.fallbacks() + u64::from(self.fallbacks_seen))
    }

    /// A's Multipath TCP connections and their subflows now.
    pub fn connections(&self) -> Result<Vec<MptcpConnection>, LabError> {
        connections(&self.a)
    }

    /// The new path, then the break. The times: `new_added` when the new addresses and
    /// their routes were in place (before the rest), `started` when the old endpoints
    /// began to go (after every connection had its new subflow), `old_removed` when the
    /// old addresses were gone, `routes_replaced` when the main table's default routes
    /// pointed at the new subnet.
    fn make_before_break(
        &mut self,
        topology: &Topology,
        from: Subnet,
        to: Subnet,
    ) -> Result<MoveTimes, LabError> {
        self.a.ip_batch(&(to.add_addresses() + &table_routes(to)))?;
        let new_added = SystemTime::now();
        let asked = Instant::now();
        self.a.ip_batch(&add_endpoints(to))?;
        if self.wait_for_subflows_from(to, SUBFLOW_TIMEOUT)? {
            self.subflow_waits.push(asked.elapsed());
        } else {
            self.late_subflows += 1;
            tracing::warn!(
                "make-before-break: no subflow from {to:?} within {SUBFLOW_TIMEOUT:?}; breaking anyway"
            );
        }
        let started = SystemTime::now();
        self.a.ip_batch(&remove_endpoints(from))?;
        self.a.ip_batch(&from.remove_addresses())?;
        let old_removed = SystemTime::now();
        topology.record_a_subnet(to);
        self.a.ip_batch(&to.default_routes())?;
        let routes_replaced = SystemTime::now();
        Ok(MoveTimes {
            from,
            to,
            started,
            old_removed,
            new_added,
            routes_replaced,
        })
    }

    /// The break, then the new path: `started` when the old addresses began to go,
    /// `old_removed` when they were gone, `new_added` when their endpoints were deleted
    /// and the new addresses added, `routes_replaced` when the routes and the new
    /// endpoints were in place (the path manager's MP_JOIN follows at once).
    fn break_before_make(
        &mut self,
        topology: &Topology,
        from: Subnet,
        to: Subnet,
    ) -> Result<MoveTimes, LabError> {
        let closing = connections(&self.a)?.iter().filter(|c| c.closing()).count();
        self.closing_at_moves += closing as u32;
        let started = SystemTime::now();
        self.a.ip_batch(&from.remove_addresses())?;
        let old_removed = SystemTime::now();
        self.a.ip_batch(&(remove_endpoints(from) + &to.add_addresses()))?;
        let new_added = SystemTime::now();
        topology.record_a_subnet(to);
        // The routes before the endpoints: the path manager sends the MP_JOIN SYN as soon
        // as an endpoint exists, and a SYN that finds no route is not tried again.
        self.a
            .ip_batch(&(table_routes(to) + &to.default_routes() + &add_endpoints(to)))?;
        let routes_replaced = SystemTime::now();
        Ok(MoveTimes {
            from,
            to,
            started,
            old_removed,
            new_added,
            routes_replaced,
        })
    }

    /// Waits until every established Multipath TCP connection of A has an established
    /// subflow from A's address on `subnet` (in its family); false if the time ran out.
    /// Closing connections are counted, not waited for: the kernel opens no subflow for
    /// a connection that is not established (`__mptcp_subflow_connect`).
    fn wait_for_subflows_from(&mut self, subnet: Subnet, timeout: Duration) -> Result<bool, LabError> {
        let deadline = Instant::now() + timeout;
        let mut first = true;
        loop {
            let connections = connections(&self.a)?;
            self.observe(&connections);
            if first {
                let closing = connections.iter().filter(|c| c.closing()).count();
                self.closing_at_moves += closing as u32;
                first = false;
            }
            let ready = connections
                .iter()
                .filter(|c| c.established() && !c.fallback)
                .all(|c| {
                    let family = family_of(c.peer.ip());
                    c.subflows
                        .iter()
                        .any(|s| s.established() && s.local.ip() == subnet.a().get(family))
                });
            if ready {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }

    fn observe(&mut self, connections: &[MptcpConnection]) {
        for c in connections {
            let established = c.subflows.iter().filter(|s| s.established()).count();
            self.max_subflows = self.max_subflows.max(established);
        }
    }

    /// Removes what [`Mptcp::start`] added (endpoints, rules, tables) and restores the
    /// limits; keeps going past failures and returns the first.
    fn clean_up(&mut self) -> Result<(), LabError> {
        let mut first = None;
        let mut keep = |r: Result<(), LabError>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        keep(self.a.ip(&["mptcp", "endpoint", "flush"]).map(drop));
        for family in Family::BOTH {
            for subnet in [Subnet::One, Subnet::Two] {
                // Absent if the set-up failed before it: that is not an error here.
                let _ = ip_batch_family(
                    &self.a,
                    family,
                    &format!(
                        "rule del from {} table {}\n",
                        subnet.a().get(family),
                        table(subnet)
                    ),
                );
                keep(
                    ip_batch_family(&self.a, family, &format!("route flush table {}\n", table(subnet)))
                        .map(drop),
                );
            }
        }
        for (ns, before) in std::mem::take(&mut self.limits_before) {
            keep(restore_limits(&ns, &before));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Carrier for Mptcp {
    fn label(&self) -> String {
        match self.how {
            MptcpMove::MakeBeforeBreak => "MPTCP make-before-break".into(),
            MptcpMove::BreakBeforeMake => "MPTCP break-before-make".into(),
        }
    }

    fn b_endpoint(&self, topology: &Topology, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(topology.b_address(family), port)
    }

    fn tcp_protocol(&self) -> i32 {
        IPPROTO_MPTCP
    }

    fn wrap_command(&self) -> Vec<String> {
        vec!["mptcpize".into(), "run".into()]
    }

    /// Every subflow goes to B's address and port, whichever address of A it leaves from.
    fn wire_filter(&self, topology: &Topology, family: Family, port: u16) -> PacketFilter {
        PacketFilter::to(Protocol::Tcp, self.b_endpoint(topology, family, port))
    }

    /// Waits for an established connection of A's to `port` that is Multipath TCP (B's
    /// key received, no fallback) with an established subflow. A fallback is an error:
    /// such a connection cannot survive a move.
    fn wait_ready(&mut self, _topology: &Topology, port: u16) -> Result<(), LabError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let all = connections(&self.a)?;
            self.observe(&all);
            let to_port: Vec<&MptcpConnection> = all
                .iter()
                .filter(|c| c.peer.port() == port && c.established())
                .collect();
            if let Some(c) = to_port.iter().find(|c| c.fallback) {
                self.fallbacks_seen += 1;
                return Err(LabError::Invalid(format!(
                    "the connection {} -> {} fell back to plain TCP",
                    c.local, c.peer
                )));
            }
            let ready = !to_port.is_empty()
                && to_port
                    .iter()
                    .all(|c| c.remote_key && c.subflows.iter().any(MptcpSubflow::established));
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tcp = self
                    .a
                    .exec(&["ss", "-tnH", "dport", "=", &format!(":{port}")])?
                    .stdout;
                return Err(LabError::Invalid(format!(
                    "no Multipath TCP connection to port {port} with a subflow within \
                     {READY_TIMEOUT:?}; A's Multipath TCP connections: {all:?}; its TCP sockets \
                     to that port: {:?}",
                    tcp.trim()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn move_a(&mut self, topology: &Topology) -> Result<MoveTimes, LabError> {
        if self.stopped {
            return Err(LabError::Invalid("Multipath TCP was stopped".into()));
        }
        let from = topology.a_subnet();
        let to = from.other();
        let times = match self.how {
            MptcpMove::MakeBeforeBreak => self.make_before_break(topology, from, to)?,
            MptcpMove::BreakBeforeMake => self.break_before_make(topology, from, to)?,
        };
        self.moves += 1;
        Ok(times)
    }

    fn stop(&mut self, _topology: &Topology) -> Result<(), LabError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.counters_end = match (MptcpCounters::read(&self.a), MptcpCounters::read(&self.b)) {
            (Ok(a), Ok(b)) => Some([a, b]),
            _ => None,
        };
        self.clean_up()
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        match self.counters() {
            Ok([a, b]) => {
                let fallbacks = a.fallbacks() + b.fallbacks() + u64::from(self.fallbacks_seen);
                notes.push(if fallbacks == 0 {
                    format!(
                        "Multipath TCP throughout: {} connection(s) opened with MP_CAPABLE, \
                         no fallback to TCP",
                        a.get("MPCapableSYNACKRX")
                    )
                } else {
                    format!("{fallbacks} fallback(s) to plain TCP (see the counters)")
                });
                notes.push(format!("A's MPTcpExt counters: {}", a.nonzero()));
                notes.push(format!("B's MPTcpExt counters: {}", b.nonzero()));
            }
            Err(e) => notes.push(format!("no MPTcpExt counters: {e}")),
        }
        notes.push(format!(
            "{} move(s); at most {} established subflow(s) on one connection",
            self.moves, self.max_subflows
        ));
        if !self.subflow_waits.is_empty() {
            let mut waits = self.subflow_waits.clone();
            waits.sort();
            notes.push(format!(
                "make-before-break: the new subflow was up {:.1} ms (median; max {:.1} ms) \
                 after its endpoint was added",
                waits[waits.len() / 2].as_secs_f64() * 1e3,
                waits[waits.len() - 1].as_secs_f64() * 1e3
            ));
        }
        if self.closing_at_moves > 0 {
            notes.push(format!(
                "{} connection(s) were closing at a move (an end had shut its sending \
                 side): the kernel opens no subflow for a connection that is not established, \
                 so they had no path after it",
                self.closing_at_moves
            ));
        }
        if self.late_subflows > 0 {
            notes.push(format!(
                "make-before-break: {} move(s) broke the old path without a new subflow \
                 (none within {SUBFLOW_TIMEOUT:?})",
                self.late_subflows
            ));
        }
        notes
    }
}

impl Drop for Mptcp {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(e) = self.clean_up()
        {
            // The namespaces may be gone already: nothing is left to clean then.
            tracing::debug!("Multipath TCP clean-up on drop: {e}");
        }
    }
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// `ip -n NS -4|-6 -batch -`: for the commands that take their family from the command
/// line (`ip rule`, `ip route flush`).
fn ip_batch_family(ns: &Ns, family: Family, commands: &str) -> Result<(), LabError> {
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    run_checked(
        "ip",
        &["-n", ns.name(), flag, "-batch", "-"],
        Some(commands.as_bytes()),
        DEFAULT_COMMAND_TIMEOUT,
    )
    .map(drop)
}

/// Sets the limits `ip mptcp limits show` printed before ("add_addr_accepted 0
/// subflows 2").
fn restore_limits(ns: &Ns, shown: &str) -> Result<(), LabError> {
    let words: Vec<&str> = shown.split_whitespace().collect();
    let value = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1].to_owned());
    let (Some(subflows), Some(accepted)) = (value("subflows"), value("add_addr_accepted")) else {
        return Err(LabError::Invalid(format!(
            "unexpected `ip mptcp limits show`: {shown:?}"
        )));
    };
    ns.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflow",
        &subflows,
        "add_addr_accepted",
        &accepted,
    ])
    .map(drop)
}

// ---------------------------------------------------------------------------------------
// What the kernel says

/// The `MPTcpExt` MIB counters of one namespace (`/proc/net/netstat`, what `nstat`
/// shows), by name without the prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MptcpCounters(pub BTreeMap<String, u64>);

impl MptcpCounters {
    /// Reads the namespace's counters (from a thread inside it: `/proc/thread-self/net`
    /// is that thread's namespace's, `/proc/net` the process's).
    pub fn read(ns: &Ns) -> Result<MptcpCounters, LabError> {
        let text = ns
            .run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))?
            .map_err(|e| LabError::io(format!("reading /proc/net/netstat of {}", ns.name()), e))?;
        Ok(MptcpCounters::parse(&text))
    }

    /// Parses `/proc/net/netstat`: pairs of lines, names then values, each starting with
    /// the group (`MPTcpExt:`).
    pub fn parse(netstat: &str) -> MptcpCounters {
        let mut counters = BTreeMap::new();
        let lines: Vec<&str> = netstat.lines().collect();
        for pair in lines.windows(2) {
            let (Some(names), Some(values)) = (
                pair[0].strip_prefix("MPTcpExt:"),
                pair[1].strip_prefix("MPTcpExt:"),
            ) else {
                continue;
            };
            // The names line has no digits-only words; the values line only those.
            if names.split_whitespace().any(|w| w.parse::<u64>().is_ok()) {
                continue;
            }
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                if let Ok(v) = value.parse() {
                    counters.insert(name.to_owned(), v);
                }
            }
        }
        MptcpCounters(counters)
    }

    /// One counter (0 if this kernel has no such counter).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// What counted between `earlier` and these.
    pub fn since(&self, earlier: &MptcpCounters) -> MptcpCounters {
        MptcpCounters(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(earlier.get(k))))
                .collect(),
        )
    }

    /// The sum of the [`FALLBACK_COUNTERS`].
    pub fn fallbacks(&self) -> u64 {
        FALLBACK_COUNTERS.iter().map(|c| self.get(c)).sum()
    }

    /// The counters above zero, `Name=value` separated by spaces ("none" if none). The
    /// gauge `MPCurrEstab` (connections open now) is left out: it is no count of events.
    pub fn nonzero(&self) -> String {
        let list: Vec<String> = self
            .0
            .iter()
            .filter(|(k, v)| **v > 0 && k.as_str() != "MPCurrEstab")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(" ")
        }
    }
}

/// One Multipath TCP connection of a host, as `ss -M` shows it, with its subflows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MptcpConnection {
    /// `ESTAB`, `SYN-SENT`, ...
    pub state: String,
    /// Its initial subflow's addresses.
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The connection's local token (hex), which its subflows carry too.
    pub token: Option<String>,
    /// Fell back to plain TCP.
    pub fallback: bool,
    /// The peer's key arrived: the MP_CAPABLE handshake completed.
    pub remote_key: bool,
    pub subflows: Vec<MptcpSubflow>,
}

impl MptcpConnection {
    pub fn established(&self) -> bool {
        self.state == "ESTAB"
    }

    /// One end has shut its sending side and the connection is not closed yet.
    pub fn closing(&self) -> bool {
        matches!(
            self.state.as_str(),
            "FIN-WAIT-1" | "FIN-WAIT-2" | "CLOSE-WAIT" | "CLOSING" | "LAST-ACK"
        )
    }
}

/// One TCP subflow of a Multipath TCP connection, as `ss -ti` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MptcpSubflow {
    pub state: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl MptcpSubflow {
    pub fn established(&self) -> bool {
        self.state == "ESTAB"
    }
}

/// A host's Multipath TCP connections (`ss -MniH`) with their subflows (`ss -tniH`,
/// matched by token).
fn connections(ns: &Ns) -> Result<Vec<MptcpConnection>, LabError> {
    let msk = ns.exec(&["ss", "-MniH"])?.stdout;
    let tcp = ns.exec(&["ss", "-tniH"])?.stdout;
    Ok(join_subflows(&msk, &tcp))
}

fn join_subflows(msk: &str, tcp: &str) -> Vec<MptcpConnection> {
    let subflows: Vec<(Option<String>, MptcpSubflow)> = parse_ss(tcp)
        .into_iter()
        .filter(|s| s.info.contains("tcp-ulp-mptcp"))
        .map(|s| {
            (
                subflow_token(&s.info),
                MptcpSubflow {
                    state: s.state,
                    local: s.local,
                    peer: s.peer,
                },
            )
        })
        .collect();
    parse_ss(msk)
        .into_iter()
        .map(|s| {
            let token = word_value(&s.info, "token:").map(str::to_owned);
            let flags: Vec<&str> = s.info.split_whitespace().collect();
            MptcpConnection {
                subflows: subflows
                    .iter()
                    .filter(|(t, _)| t.is_some() && *t == token)
                    .map(|(_, sf)| sf.clone())
                    .collect(),
                fallback: flags.contains(&"fallback"),
                remote_key: flags.contains(&"remote_key"),
                token,
                state: s.state,
                local: s.local,
                peer: s.peer,
            }
        })
        .collect()
}

/// One socket of `ss -niH` output: its line, and the indented lines after it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SsSocket {
    state: String,
    local: SocketAddr,
    peer: SocketAddr,
    info: String,
}

/// Parses `ss -{t,M}niH` (no header, state column present): sockets whose addresses do
/// not parse (listeners' `*`) are skipped.
fn parse_ss(output: &str) -> Vec<SsSocket> {
    let mut sockets: Vec<Option<SsSocket>> = Vec::new();
    for line in output.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(Some(last)) = sockets.last_mut() {
                last.info.push(' ');
                last.info.push_str(line.trim());
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let socket = match fields.as_slice() {
            [state, _recv_q, _send_q, local, peer, ..] => match (ss_address(local), ss_address(peer)) {
                (Some(local), Some(peer)) => Some(SsSocket {
                    state: (*state).to_owned(),
                    local,
                    peer,
                    info: String::new(),
                }),
                _ => None,
            },
            _ => None,
        };
        sockets.push(socket);
    }
    sockets.into_iter().flatten().collect()
}

/// `10.201.2.2%a2:33893`, `[fd00:201:1::2]:47226`, `[fd00:201:2::2]%a2:34097`.
fn ss_address(s: &str) -> Option<SocketAddr> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.split('%').next()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(SocketAddr::new(host.parse().ok()?, port.parse().ok()?))
}

/// The value after `key` in a line of words (`token:1f0dac92` -> `1f0dac92`).
fn word_value<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// A subflow's connection token: ss prints the subflow's
/// `token:REMOTE(id:N)/LOCAL(id:M)` after `tcp-ulp-mptcp`, and LOCAL is the token `ss
/// -M` shows for the connection.
fn subflow_token(info: &str) -> Option<String> {
    let (_, ulp) = info.split_once("tcp-ulp-mptcp")?;
    let value = word_value(ulp, "token:")?;
    let (_, local) = value.split_once('/')?;
    Some(local.split('(').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSK: &str = "ESTAB 0      0      10.201.1.2:44542 10.201.3.2:5001\n\
        \t subflows:1 subflows_max:8 add_addr_accepted_max:8 remote_key token:1f0dac92 write_seq:d58e snd_una:d58e rcv_nxt:fab1\n\
        ESTAB 0      0      [fd00:201:1::2]:47226 [fd00:201:3::2]:5002\n\
        \t fallback subflows_max:8 token:81bd8168 write_seq:9f51\n";
    const TCP: &str = "ESTAB 0      0      10.201.2.2%a2:33893 10.201.3.2:5001\n\
        \t bbr wscale:10,10 rto:204 tcp-ulp-mptcp flags:Jjecv token:b485cc1b(id:0)/1f0dac92(id:3) seq:fab1 sfseq:1\n\
        FIN-WAIT-1 0      0      10.201.1.2:44542 10.201.3.2:5001\n\
        \t bbr wscale:10,10 tcp-ulp-mptcp flags:Mmec token:0000(id:0)/1f0dac92(id:0) seq:fab1\n\
        ESTAB 0      0      [fd00:201:2::2]%a2:34097 [fd00:201:3::2]:5002\n\
        \t cubic wscale:7,7 rto:204\n";

    #[test]
    fn ss_output_gives_connections_with_their_subflows_and_flags() {
        let c = join_subflows(MSK, TCP);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].local, "10.201.1.2:44542".parse().unwrap());
        assert_eq!(c[0].peer, "10.201.3.2:5001".parse().unwrap());
        assert_eq!(c[0].token.as_deref(), Some("1f0dac92"));
        assert!(c[0].established() && c[0].remote_key && !c[0].fallback);
        assert_eq!(c[0].subflows.len(), 2);
        assert_eq!(c[0].subflows[0].local, "10.201.2.2:33893".parse().unwrap());
        assert!(c[0].subflows[0].established());
        assert_eq!(c[0].subflows[1].state, "FIN-WAIT-1");
        // A plain TCP socket (no MPTCP ULP) is nobody's subflow.
        assert_eq!(c[1].peer, "[fd00:201:3::2]:5002".parse().unwrap());
        assert!(c[1].fallback && !c[1].remote_key);
        assert!(c[1].subflows.is_empty());
    }

    #[test]
    fn ss_addresses_parse_with_scopes_and_brackets_and_listeners_are_skipped() {
        assert_eq!(
            ss_address("[fd00:201:2::2]%a2:34097"),
            Some("[fd00:201:2::2]:34097".parse().unwrap())
        );
        assert_eq!(
            ss_address("10.201.2.2%a2:1"),
            Some("10.201.2.2:1".parse().unwrap())
        );
        assert_eq!(ss_address("0.0.0.0:*"), None);
        assert_eq!(ss_address("*:*"), None);
        assert!(parse_ss("LISTEN 0 1 10.201.3.2:5001 0.0.0.0:*\n\t info\n").is_empty());
        assert!(parse_ss("").is_empty());
        assert!(parse_ss("garbage\n\t more\n").is_empty());
    }

    #[test]
    fn counters_parse_from_netstat_and_subtract() {
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv\nTcpExt: 0 1\n\
                       MPTcpExt: MPCapableSYNRX MPCapableSYNTX DssFallback MPCurrEstab\n\
                       MPTcpExt: 1 2 0 1\n";
        let before = MptcpCounters::parse(netstat);
        assert_eq!(before.get("MPCapableSYNTX"), 2);
        assert_eq!(before.get("SyncookiesRecv"), 0, "other groups are not read");
        assert_eq!(before.get("NoSuchCounter"), 0);
        let after = MptcpCounters::parse(
            "MPTcpExt: MPCapableSYNRX MPCapableSYNTX DssFallback MPCurrEstab\nMPTcpExt: 1 5 1 1\n",
        );
        let delta = after.since(&before);
        assert_eq!(delta.get("MPCapableSYNTX"), 3);
        assert_eq!(delta.fallbacks(), 1);
        assert_eq!(delta.nonzero(), "DssFallback=1 MPCapableSYNTX=3");
        assert_eq!(MptcpCounters::default().nonzero(), "none");
    }

    #[test]
    fn moves_script_the_path_manager_with_fixed_endpoint_ids() {
        assert_eq!(
            add_endpoints(Subnet::Two),
            "mptcp endpoint add 10.201.2.2 id 3 dev a2 subflow\n\
             mptcp endpoint add fd00:201:2::2 id 4 dev a2 subflow\n"
        );
        assert_eq!(
            remove_endpoints(Subnet::One),
            "mptcp endpoint delete id 1\nmptcp endpoint delete id 2\n"
        );
        assert!(table_routes(Subnet::One).contains("via 10.201.1.1 dev a1 table 201"));
        assert!(table_routes(Subnet::One).contains("via fd00:201:1::1 dev a1 table 201"));
    }
}
