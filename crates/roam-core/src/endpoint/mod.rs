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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use roam_wire::{AuthKey, DEFAULT_CONTROL_PORT, NodeId};
use serde::Serialize;

pub use flow::{Flow, FlowPeer};
pub use peer::Peer;

use crate::counters::Counters;
use crate::time::Instant;
use crate::translate::{TableChange, Tuple};
use peer::Probe;

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

/// An endpoint's configuration. Durations bound every retry loop.
#[derive(Clone, Debug)]
pub struct Config {
    /// This host's identifier cookie (seed 001 FIG. 5).
    pub node_id: NodeId,
    /// The key that authenticates every control message (HMAC-SHA-256), named by `spi`.
    /// A pre-shared key until the security layer's key exchange replaces it.
    pub psk: [u8; 32],
    pub spi: u32,
    /// UDP port of the control channel, here and (by default) at peers.
    pub control_port: u16,
    /// What this host sends when it moves.
    pub move_message: MoveMessage,
    /// First retransmission timeout when no round-trip time has been measured yet.
    pub initial_rto: Duration,
    /// Bounds of the retransmission timeout (which is twice the smoothed RTT).
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// Transmissions of an update before the move is declared failed.
    pub max_update_attempts: u32,
    /// Transmissions of a registration before the remote host is taken for one that
    /// does not run roam (seed 000 FIG. 21).
    pub max_registration_attempts: u32,
    /// How long a host that did not answer registration is left alone before a new
    /// flow to it tries again.
    pub not_capable_ttl: Duration,
    /// First Replay Protect ID; later ones increase by one. The daemon derives it from
    /// the wall clock so that IDs keep increasing across restarts.
    pub replay_base: u64,
    /// How long a flow must have been without a working path before roam makes its
    /// TCP sender retransmit at once (a nudge). Shorter outages end before a
    /// retransmission timeout (Linux's minimum is 200 ms, RFC 6298's 1 s), and a nudge
    /// then only causes a spurious retransmission and a smaller congestion window.
    pub nudge_after: Duration,
    /// Upper bound on flows remapped to resolve conflicts (seed 000 ¶0069), so that a
    /// flood of colliding packets cannot grow the table without bound.
    pub max_remapped_flows: usize,
}

impl Config {
    pub fn new(node_id: NodeId, psk: [u8; 32]) -> Config {
        Config {
            node_id,
            psk,
            spi: 1,
            control_port: DEFAULT_CONTROL_PORT,
            move_message: MoveMessage::default(),
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(1),
            max_update_attempts: 16,
            max_registration_attempts: 5,
            not_capable_ttl: Duration::from_secs(60),
            replay_base: 1,
            max_remapped_flows: 4096,
            nudge_after: Duration::from_millis(200),
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
    /// timeout). With `fast_retransmit` (the outage lasted longer than
    /// [`Config::nudge_after`], so the peer's sender is likely in back-off) make it
    /// enough duplicate ACKs to start the peer's fast retransmit (RFC 5681 §3.2).
    Nudge { original: Tuple, fast_retransmit: bool },
    /// The TCP flow's peer has moved: what the local stack sent it and it has not
    /// acknowledged was probably lost at its old address. A data plane that keeps
    /// recent packets sends them again, now translated to the new address (duplicates
    /// are harmless to TCP); one that does not (the kernel's) ignores this and leaves
    /// the recovery to the stack's SACK and RACK-TLP.
    Resend { original: Tuple },
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
    /// Registration went unanswered: flows to this address are left alone.
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
    /// The peer moved and this host applied it.
    PeerMoved {
        peer: NodeId,
        flows: usize,
        to: SocketAddr,
    },
    /// A flow lost its local address and has no roam peer to move it with.
    FlowStranded { flow: Tuple, reason: &'static str },
    /// A conflict was resolved by remapping.
    ConflictResolved { original: Tuple, current: Tuple },
    /// The peer tore down these flows' translation (seed 003 termination).
    FlowsTerminated { peer: NodeId, flows: usize },
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
            Event::PeerNotCapable { addr } => write!(f, "{addr} does not run roam"),
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
        }
    }
}

/// roam's control plane for one host. See the module documentation for how to drive it.
pub struct Endpoint {
    config: Config,
    key: AuthKey,
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
    /// Registrations in progress or failed, by remote address.
    probes: BTreeMap<IpAddr, Probe>,
    next_replay_id: u64,
    remapped_flows: usize,
    transmits: VecDeque<Transmit>,
    dataplane: VecDeque<DataPlaneCommand>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Endpoint {
    /// `rng` supplies every random choice (initial sequence numbers, remap ports); pass a
    /// seeded one for reproducible runs.
    pub fn new(config: Config, rng: Box<dyn RngCore + Send>) -> Endpoint {
        let key = AuthKey::new(config.spi, config.psk);
        let next_replay_id = config.replay_base;
        Endpoint {
            config,
            key,
            rng,
            addresses: BTreeMap::new(),
            flows: BTreeMap::new(),
            by_current: BTreeMap::new(),
            by_wire_key: BTreeMap::new(),
            peers: BTreeMap::new(),
            probes: BTreeMap::new(),
            next_replay_id,
            remapped_flows: 0,
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
        self.config.node_id
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
        peers.chain(probes).min()
    }

    fn on_timeout(&mut self, now: Instant) {
        self.probe_timeouts(now);
        self.update_timeouts(now);
    }

    // ---- helpers shared by the submodules ----

    fn next_replay_id(&mut self) -> u64 {
        let id = self.next_replay_id;
        self.next_replay_id = self.next_replay_id.wrapping_add(1);
        id
    }

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
