//! The sans-IO endpoint: one per host, the whole of roam's control plane.
//!
//! It keeps the peer and flow tables (seed 000 FIG. 6: connection management and peer
//! negotiation), decides when a local address change affects a flow (seed 000 FIG. 17),
//! tells the peer (Connection Update, seed 000 ¶0059; or Migration Request, seed 001;
//! or Address Change, seed 003), retransmits with exponential back-off until it is
//! acknowledged, applies the peer's updates, and says which translation entries a data
//! plane must install or remove.
//!
//! # Driving it
//!
//! The endpoint never reads a clock, opens a socket or draws randomness of its own
//! (its RNG is handed in at construction). Its methods fall in four groups:
//!
//! - **getters**: [`Endpoint::config`], [`Endpoint::counters`], [`Endpoint::flows`],
//!   [`Endpoint::peers`], [`Endpoint::local_addresses`];
//! - **input**: [`Endpoint::handle`] with an [`Input`] (a received control datagram, a
//!   local address added or removed, a flow opened or closed, a translation conflict
//!   found by the data plane, a timeout, an Update-Request to send);
//! - **outputs**, to drain after every input, in this order:
//!   [`Endpoint::poll_dataplane`] (translation-table changes and nudges: apply them before
//!   sending anything, so the data plane is ready when the peer answers),
//!   [`Endpoint::poll_transmit`] (control datagrams to send), [`Endpoint::poll_event`]
//!   (what happened, for people and logs);
//! - **timer**: [`Endpoint::poll_timeout`] says when to call `handle(now,
//!   Input::Timeout)` next (`None`: nothing pending).

mod control;
mod flow;
mod peer;
pub mod replay;
mod secure;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use roam_wire::{DEFAULT_CONTROL_PORT, Message, NodeId};
use serde::Serialize;

pub use flow::{Flow, FlowPeer};
pub use peer::Peer;

use crate::counters::Counters;
use crate::security::{CookieJar, PublicKey, RateLimiter, Session, StaticKey, Trust};
use crate::time::Instant;
use crate::translate::{FlowMapping, TableChange, Tuple};
use peer::{Initiation, Probe, Response};

/// Which message a moving host sends to its peers. All three are understood on receipt;
/// this chooses what this host sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MoveMessage {
    /// Seed 000: one Connection Update naming each flow; answered by Update-Ack.
    #[default]
    ConnectionUpdate,
    /// Seed 001: Migration Request with migration extensions; answered by Migration Reply.
    MigrationRequest,
    /// Seed 003: one Address Change per original address (old and new address, every
    /// flow from the old one); answered by Migration Completed.
    AddressChange,
}

/// An endpoint's configuration. Durations bound every retry loop; rates and sizes bound
/// what a flood can cost.
#[derive(Clone, Debug)]
pub struct Config {
    /// This host's long-term key. Its identifier cookie (seed 001 FIG. 5) derives from it.
    pub identity: StaticKey,
    /// Whose keys this host accepts (docs/SECURITY.md).
    pub trust: Trust,
    /// UDP port of the control channel, here and (by default) at peers.
    pub control_port: u16,
    /// What this host sends when it moves.
    pub move_message: MoveMessage,
    /// First retransmission timeout when no round-trip time has been measured yet.
    pub initial_rto: Duration,
    /// Bounds of the retransmission timeout (which is three smoothed RTTs).
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// Transmissions of an update before the move is declared failed.
    pub max_update_attempts: u32,
    /// Transmissions of a handshake before the remote host is taken for one that does
    /// not run roam (seed 000 FIG. 21), or a rekey is given up.
    pub max_handshake_attempts: u32,
    /// How long a host that did not answer a handshake is left alone before a new flow
    /// to it tries again.
    pub not_capable_ttl: Duration,
    /// How long a flow must have been without a working path before roam makes its
    /// TCP sender retransmit at once (a nudge). Shorter outages end before a
    /// retransmission timeout (Linux's minimum is 200 ms, RFC 6298's 1 s), and a nudge
    /// then only causes a spurious retransmission and a smaller congestion window.
    pub nudge_after: Duration,
    /// How long after answering the peer's path challenge the mover nudges its own TCP
    /// (whose ACK makes the peer's sender retransmit): the peer lifts its
    /// return-routability budget for our new address when the answer arrives, and its
    /// data plane needs a moment to commit that (an nftables transaction: 3 ms, more on
    /// a loaded host). The ACK, sent this much after the answer on the same path, then
    /// finds the budget gone instead of having the retransmission it asks for dropped
    /// (and the sender back in its timeout). See `OwnNudge` in flow.rs.
    pub nudge_settle: Duration,
    /// Upper bound on flows remapped to resolve conflicts (seed 000 ¶0069), so that a
    /// flood of colliding packets cannot grow the table without bound.
    pub max_remapped_flows: usize,
    /// A session is replaced by a new handshake after this long...
    pub rekey_after: Duration,
    /// ...or after sealing this many messages.
    pub rekey_after_messages: u64,
    /// A replaced session still opens what was in flight for this long, then it is gone.
    pub rekey_grace: Duration,
    /// Return routability: what roam sends to a peer's new address before it has
    /// echoed a challenge is at most this many bytes, and never more than three times
    /// what came from that address (QUIC's anti-amplification limit, RFC 9000 §8).
    pub unvalidated_budget: u64,
    /// Path challenges sent to an address a peer moved flows to before it is given up
    /// (a new address: its flows go back; a proven one: their nudges are dropped).
    pub max_path_challenges: u32,
    /// Handshake messages accepted per second from one source address (burst twice).
    pub handshakes_per_second: f64,
    /// Updates accepted per second from one peer (burst twice).
    pub updates_per_second: f64,
    /// Beyond this many handshake initiations in one second, this host is under load
    /// and demands a cookie (a round trip proving the source address) before spending
    /// any Diffie-Hellman.
    pub cookie_threshold: u32,
    /// Handshakes this host answered and awaits the last message of; the oldest is
    /// forgotten beyond this.
    pub max_pending_handshakes: usize,
    /// Whether this host's data plane queues a held flow's packets (the simulator's and
    /// the TUN plane's) rather than dropping them (the kernel's): announced to peers as
    /// the `HOLDS_PACKETS` capability (seed 000 ¶0071), which must be true of the plane.
    pub holds_packets: bool,
}

impl Config {
    pub fn new(identity: StaticKey, trust: Trust) -> Config {
        Config {
            identity,
            trust,
            control_port: DEFAULT_CONTROL_PORT,
            move_message: MoveMessage::default(),
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(1),
            max_update_attempts: 16,
            max_handshake_attempts: 5,
            not_capable_ttl: Duration::from_secs(60),
            max_remapped_flows: 4096,
            nudge_after: Duration::from_millis(200),
            nudge_settle: Duration::from_millis(10),
            rekey_after: Duration::from_secs(120),
            rekey_after_messages: 1 << 20,
            rekey_grace: Duration::from_secs(10),
            unvalidated_budget: 16 * 1024,
            max_path_challenges: 8,
            handshakes_per_second: 10.0,
            updates_per_second: 100.0,
            cookie_threshold: 64,
            max_pending_handshakes: 256,
            holds_packets: true,
        }
    }
}

/// What the driver tells the endpoint.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// A UDP datagram arrived on the control port: `local` is the address and port it
    /// was sent to, `remote` its apparent source.
    Datagram {
        local: SocketAddr,
        remote: SocketAddr,
        payload: &'a [u8],
    },
    /// An address became usable on this host (netlink RTM_NEWADDR, a DHCP lease).
    AddressAdded(IpAddr),
    /// An address stopped being usable for new traffic (removed, or deprecated as in
    /// seed 003). Flows using it must move.
    AddressRemoved(IpAddr),
    /// The local stack has a flow (sock_diag, or the data plane saw its first packet),
    /// named by its original tuple.
    FlowOpened(Tuple),
    /// The flow ended.
    FlowClosed(Tuple),
    /// The data plane found a packet whose tuple collides with a translated flow
    /// (seed 000 ¶0067-¶0069). `tuple` is from this host's point of view.
    Conflict {
        direction: ConflictDirection,
        tuple: Tuple,
    },
    /// Ask `peer` for a Connection Update (seed 000 ¶0059, ¶0091): sent when this host
    /// learns (e.g. from a rendezvous Notify) that the peer moved without telling it.
    RequestUpdate { peer: NodeId, at: SocketAddr },
    /// At start-up, a translation entry the data plane already has (the daemon
    /// restarted; the kernel kept its entries): the flow is known with its current
    /// tuple, and its peer will be found again by a handshake.
    Restore(FlowMapping),
    /// The data plane received `bytes` from `from`, an address the endpoint said was
    /// unvalidated ([`DataPlaneCommand::Unvalidated`]): traffic from an address raises
    /// what may be sent there (three times what came), control messages included.
    Heard { from: IpAddr, bytes: u64 },
    /// The host's default routes changed (netlink RTM_NEWROUTE/RTM_DELROUTE). A DHCP client
    /// adds the new address a moment before the new default route, so an update sent
    /// at once can leave by the old route (with the new source address, which the old
    /// network drops; or, from a socket bound to the new device, with no route there,
    /// as if the peer were on that link: Linux then asks ARP for the peer's address
    /// and the datagram waits in vain) and be lost: what is outstanding goes again,
    /// now, instead of a retransmission timeout later.
    RoutesChanged,
    /// The time returned by [`Endpoint::poll_timeout`] has come.
    Timeout,
}

/// Where a conflicting packet was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictDirection {
    /// From the wire: its tuple is a translated flow's original (a new host at a moved
    /// peer's old address and port). The new flow gets a fresh original remote port.
    Ingress,
    /// From the local stack: its tuple is a translated flow's current tuple. The new
    /// flow gets a fresh current local port.
    Egress,
}

/// A control datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Source address and port (the control port on one of this host's addresses).
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// What a data plane must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataPlaneCommand {
    /// Change the translation table.
    Table(TableChange),
    /// The path of a TCP flow is confirmed at its new addresses: make the local stack
    /// send its current ACK to the peer (one ACK: the peer's acknowledgments may have
    /// gone to the old address, and a sender without news waits for its retransmission
    /// timeout). With `fast_retransmit` (the outage lasted at least
    /// [`Config::nudge_after`], so the peer's sender is likely in back-off) make it
    /// enough duplicate ACKs to start the peer's fast retransmit (RFC 5681 §3.2).
    Nudge { original: Tuple, fast_retransmit: bool },
    /// The TCP flow's peer has moved: what the local stack sent it and it has not
    /// acknowledged was probably lost at its old address. A data plane that keeps
    /// recent packets sends them again, now translated to the new address (duplicates
    /// are harmless to TCP); the kernel's, which keeps none, makes the local stack
    /// resend them itself (the nftables plane's retransmission kick, roam-linux
    /// `nft.rs`: a path-MTU decrease of one byte, which retransmits the outstanding
    /// full-sized segments at once).
    Resend { original: Tuple },
    /// Return routability: `remote` has not echoed a challenge yet. Send it at most
    /// `cap` bytes, and never more than three times what arrives from it (RFC 9000
    /// §8.1), holding the rest, until `Validated` or `Unreachable`. `received`: what
    /// already came from it (the update that named it), so the answer can go at once.
    Unvalidated { remote: IpAddr, cap: u64, received: u64 },
    /// `remote` proved it receives (it echoed its challenge, or completed a handshake):
    /// no more limit; send what was held.
    Validated { remote: IpAddr },
    /// `remote` never echoed: drop what was held for it (its flows went back).
    Unreachable { remote: IpAddr },
}

/// A data plane: whatever rewrites packets for real (the kernel, a TUN device, the
/// simulator). It obeys the endpoint's commands; the endpoint never touches it.
pub trait DataPlane {
    type Error: std::error::Error;
    /// Carries out one command. An error leaves the data plane as it was.
    fn apply(&mut self, command: &DataPlaneCommand) -> Result<(), Self::Error>;
}

/// Something that happened, for people, logs and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PeerRegistered {
        peer: NodeId,
        control: SocketAddr,
        rtt: Option<Duration>,
        /// Seed 000 ¶0106: its own address differs from the datagram's source.
        behind_nat: bool,
    },
    /// No roam peer at this address (the handshake went unanswered, or presented a
    /// key this host does not trust): flows to it are left alone.
    PeerNotCapable { addr: IpAddr },
    /// This host moved some flows and told the peer.
    MoveStarted {
        peer: NodeId,
        flows: usize,
        to: IpAddr,
        seq: u16,
    },
    /// The peer confirmed. `elapsed` runs from the first transmission to the ack.
    MoveCompleted {
        peer: NodeId,
        flows: usize,
        elapsed: Duration,
        retransmits: u32,
    },
    /// The peer never confirmed (or refused): these flows could not be moved.
    MoveFailed {
        peer: NodeId,
        flows: Vec<Tuple>,
        reason: &'static str,
    },
    /// The peer moved and this host applied it: the flows go to `to` now (if that
    /// address has not proven itself yet, only within its budget until it does).
    PeerMoved { peer: NodeId, flows: usize, to: IpAddr },
    /// A flow lost its local address and has no roam peer to move it with.
    FlowStranded { flow: Tuple, reason: &'static str },
    /// A conflict was resolved by remapping.
    ConflictResolved { original: Tuple, current: Tuple },
    /// The peer tore down these flows' translation (seed 003 termination).
    FlowsTerminated { peer: NodeId, flows: usize },
    /// A handshake presented a key the trust policy refuses.
    KeyRejected { key: PublicKey, from: SocketAddr },
    /// Trust on first use accepted a key it had not seen.
    KeyLearned { key: PublicKey, peer: NodeId },
    /// A new session replaced the peer's previous one (rotation or restart).
    SessionRekeyed { peer: NodeId },
    /// A peer's new address echoed its challenge.
    PathValidated { peer: NodeId, addr: IpAddr },
    /// A peer's new address never echoed its challenge: its flows went back.
    PathFailed {
        peer: NodeId,
        addr: IpAddr,
        flows: usize,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PeerRegistered {
                peer,
                control,
                rtt,
                behind_nat,
            } => {
                write!(f, "peer {peer} registered at {control}")?;
                if let Some(rtt) = rtt {
                    write!(f, ", rtt {:.1}ms", rtt.as_secs_f64() * 1e3)?;
                }
                if *behind_nat {
                    write!(f, ", behind NAT")?;
                }
                Ok(())
            }
            Event::PeerNotCapable { addr } => {
                write!(f, "no roam peer at {addr} (no answer, or a key not trusted)")
            }
            Event::MoveStarted { peer, flows, to, seq } => write!(
                f,
                "moving {flows} flow(s) with peer {peer} to {to} (update #{seq})"
            ),
            Event::MoveCompleted {
                peer,
                flows,
                elapsed,
                retransmits,
            } => write!(
                f,
                "peer {peer} confirmed {flows} flow(s) after {:.1}ms, {retransmits} retransmission(s)",
                elapsed.as_secs_f64() * 1e3
            ),
            Event::MoveFailed { peer, flows, reason } => write!(
                f,
                "moving {} flow(s) with peer {peer} failed: {reason}",
                flows.len()
            ),
            Event::PeerMoved { peer, flows, to } => {
                write!(f, "peer {peer} moved {flows} flow(s) to {to}")
            }
            Event::FlowStranded { flow, reason } => write!(f, "flow {flow} stranded: {reason}"),
            Event::ConflictResolved { original, current } => {
                write!(f, "conflict resolved: {current} is now {original} locally")
            }
            Event::FlowsTerminated { peer, flows } => {
                write!(f, "peer {peer} terminated {flows} flow(s)")
            }
            Event::KeyRejected { key, from } => write!(f, "refused untrusted key {key} from {from}"),
            Event::KeyLearned { key, peer } => {
                write!(f, "trusted key {key} of peer {peer} on first use")
            }
            Event::SessionRekeyed { peer } => write!(f, "new session with peer {peer}"),
            Event::PathValidated { peer, addr } => write!(f, "peer {peer} answered at {addr}"),
            Event::PathFailed { peer, addr, flows } => write!(
                f,
                "peer {peer} never answered at {addr}: {flows} flow(s) went back"
            ),
        }
    }
}

/// roam's control plane for one host. See the module documentation for how to drive it.
pub struct Endpoint {
    config: Config,
    node_id: NodeId,
    rng: Box<dyn RngCore + Send>,
    /// Usable local addresses and when each was added (the newest is preferred).
    addresses: BTreeMap<IpAddr, Instant>,
    /// Flows by original tuple.
    flows: BTreeMap<Tuple, Flow>,
    /// Index: current tuple -> original tuple (one-to-one, seed 000 ¶0069).
    by_current: BTreeMap<Tuple, Tuple>,
    /// Index: wire key -> original tuples (more than one only across peers).
    by_wire_key: BTreeMap<Tuple, BTreeSet<Tuple>>,
    peers: BTreeMap<NodeId, Peer>,
    /// Registrations (first handshakes) in progress or failed, by remote address.
    probes: BTreeMap<IpAddr, Probe>,
    /// Sessions by our index (the SPI of messages to us).
    sessions: BTreeMap<u32, Session>,
    /// Handshakes we started, by our index.
    initiating: BTreeMap<u32, Initiation>,
    /// Handshakes we answered, by our index.
    responding: BTreeMap<u32, Response>,
    /// Our handshakes that ended (completed, or dropped because the peer's completed
    /// first): a late or repeated answer to one is expected, not an attack. Bounded.
    superseded: std::collections::VecDeque<u32>,
    handshake_limiter: RateLimiter<IpAddr>,
    update_limiter: RateLimiter<NodeId>,
    cookies: CookieJar,
    /// Handshake initiations seen in the current second (load detection).
    load: (Instant, u32),
    remapped_flows: usize,
    /// Our own flows' nudges, waiting for the peer to prove it can take the traffic
    /// they start (see `OwnNudge`).
    own_nudges: BTreeMap<Tuple, flow::OwnNudge>,
    transmits: VecDeque<Transmit>,
    dataplane: VecDeque<DataPlaneCommand>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Endpoint {
    /// `rng` supplies every random choice (initial sequence numbers, remap ports); pass a
    /// seeded one for reproducible runs.
    pub fn new(config: Config, mut rng: Box<dyn RngCore + Send>) -> Endpoint {
        let node_id = config.identity.public().node_id();
        let cookies = CookieJar::new(rng.as_mut(), Instant::ZERO);
        let handshake_limiter = RateLimiter::new(
            config.handshakes_per_second,
            config.handshakes_per_second * 2.0,
            4096,
        );
        let update_limiter =
            RateLimiter::new(config.updates_per_second, config.updates_per_second * 2.0, 4096);
        Endpoint {
            config,
            node_id,
            rng,
            addresses: BTreeMap::new(),
            flows: BTreeMap::new(),
            by_current: BTreeMap::new(),
            by_wire_key: BTreeMap::new(),
            peers: BTreeMap::new(),
            probes: BTreeMap::new(),
            sessions: BTreeMap::new(),
            initiating: BTreeMap::new(),
            responding: BTreeMap::new(),
            superseded: std::collections::VecDeque::new(),
            handshake_limiter,
            update_limiter,
            cookies,
            load: (Instant::ZERO, 0),
            remapped_flows: 0,
            own_nudges: BTreeMap::new(),
            transmits: VecDeque::new(),
            dataplane: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    // ---- getters ----

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
    pub fn public_key(&self) -> PublicKey {
        self.config.identity.public()
    }
    /// Sessions (current and retiring), by our index.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Flows in order of their original tuple.
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }
    pub fn flow(&self, original: &Tuple) -> Option<&Flow> {
        self.flows.get(original)
    }
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }
    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// Seals a message of the caller's choosing for `peer` under the current session
    /// (the session's counter advances), without sending it; `None` without a session.
    /// For tools and tests: the simulator's malicious peer is a host that uses its own
    /// keys to say what it likes. The host's own keys are all it can use.
    pub fn seal_for(&mut self, peer: NodeId, msg: &Message) -> Option<Vec<u8>> {
        let index = self.peers.get(&peer)?.session?;
        self.sessions.get_mut(&index)?.seal(msg.clone()).ok()
    }

    /// Takes the sequence number the next update to `peer` would have (for a message
    /// built for [`Endpoint::seal_for`]).
    pub fn take_update_sequence(&mut self, peer: NodeId) -> Option<u16> {
        Some(self.peers.get_mut(&peer)?.take_update_seq())
    }
    pub fn local_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.keys().copied()
    }

    // ---- input ----

    /// Feeds one input. Drain the `poll_*` outputs afterwards.
    pub fn handle(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                local,
                remote,
                payload,
            } => self.handle_datagram(now, local, remote, payload),
            Input::AddressAdded(addr) => self.address_added(now, addr),
            Input::AddressRemoved(addr) => self.address_removed(now, addr),
            Input::FlowOpened(t) => self.flow_opened(now, t),
            Input::FlowClosed(t) => self.flow_closed(now, t),
            Input::Conflict { direction, tuple } => self.resolve_conflict(now, direction, tuple),
            Input::RequestUpdate { peer, at } => self.request_update(now, peer, at),
            Input::Restore(m) => self.restore(now, m),
            Input::Heard { from, bytes } => {
                for p in self.peers.values_mut() {
                    if let Some(path) = p.paths.get_mut(&from).filter(|p| !p.validated) {
                        path.received = path.received.saturating_add(bytes);
                    }
                }
            }
            Input::RoutesChanged => self.routes_changed(now),
            Input::Timeout => self.on_timeout(now),
        }
        self.flush_updates(now);
    }

    // ---- outputs ----

    pub fn poll_dataplane(&mut self) -> Option<DataPlaneCommand> {
        self.dataplane.pop_front()
    }
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- timer ----

    /// The earliest time at which [`Input::Timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.values().flat_map(|p| p.next_timeout());
        let probes = self.probes.values().filter_map(|p| p.next_timeout());
        let handshakes = self.initiating.values().map(|i| i.exchange.next).chain(
            self.responding
                .values()
                .map(|r| r.created + secure::RESPONDER_WAIT),
        );
        let sessions = self.sessions.values().map(|s| self.session_deadline(s));
        let nudges = self.own_nudges.values().map(|n| n.due);
        peers
            .chain(probes)
            .chain(handshakes)
            .chain(sessions)
            .chain(nudges)
            .min()
    }

    fn on_timeout(&mut self, now: Instant) {
        self.responder_timeouts(now);
        self.probe_timeouts(now);
        self.handshake_timeouts(now);
        self.session_timeouts(now);
        self.update_timeouts(now);
        self.path_timeouts(now);
        self.own_nudge_timeouts(now);
    }

    // ---- helpers shared by the submodules ----

    fn install(&mut self, change: TableChange) {
        self.dataplane.push_back(DataPlaneCommand::Table(change));
    }

    /// Retransmission timeout for a peer: three smoothed RTTs (RFC 6298's SRTT + 4
    /// RTTVAR with the initial RTTVAR of SRTT/2), clamped; the initial value before any
    /// sample. roam's bounds are smaller than RFC 6298's since control messages are
    /// tiny and a move is latency-critical.
    fn rto_for(&self, rtt: Option<Duration>) -> Duration {
        match rtt {
            Some(rtt) => (rtt * 3).clamp(self.config.min_rto, self.config.max_rto),
            None => self.config.initial_rto,
        }
    }
}

/// Serial-number comparison for 16-bit sequence numbers (RFC 1982): is `a` newer than `b`?
pub(crate) fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests;
