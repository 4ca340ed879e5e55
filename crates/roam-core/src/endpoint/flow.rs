//! Flows and what happens to them when local addresses come and go (seed 000 FIG. 17).

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::peer::{Probe, peer_at};
use super::{ConflictDirection, DataPlaneCommand, Endpoint, Event};
use crate::time::Instant;
use crate::translate::{FlowMapping, Protocol, TableChange, Tuple};

/// Who is at the other end of a flow, as far as roam is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "peer", rename_all = "snake_case")]
pub enum FlowPeer {
    /// A registration to the remote address is in progress.
    Probing,
    /// A roam peer.
    Peer(#[serde(serialize_with = "ser_node")] roam_wire::NodeId),
    /// The remote host does not run roam (seed 000 FIG. 21): the flow is left alone.
    NotRoam,
    /// Both ends are this host: nothing to do.
    Local,
}

fn ser_node<S: serde::Serializer>(id: &roam_wire::NodeId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

/// One entry of the local connection translation table (seed 000 ¶0047), with the
/// state of its migration.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    /// What the local stack sees; never changes (seed 000 ¶0048).
    pub original: Tuple,
    /// What is on the wire now.
    pub current: Tuple,
    /// The tuple on the wire when the flow began: it names the flow to the peer. It is
    /// `original` except for flows remapped to resolve a conflict.
    pub wire_key: Tuple,
    pub peer: FlowPeer,
    /// Since when the flow has been without a confirmed path: it lost its local
    /// address (or moved) and the peer has not yet confirmed the new one.
    pub moving_since: Option<Instant>,
    /// The local address vanished with no replacement yet.
    pub orphaned: bool,
    /// Created by a conflict remap (seed 000 ¶0069).
    pub remapped: bool,
    /// The peer moved this flow to an address that has not yet echoed a challenge:
    /// that address, and the current tuple to go back to if it never does.
    pub validating: Option<(IpAddr, Tuple)>,
    /// The peer moved this flow and its nudge waits for the sign that the peer has
    /// released its hold: an answer from the flow's current remote address (see
    /// [`DeferredNudge`]).
    #[serde(skip)]
    pub(crate) nudge_deferred: Option<DeferredNudge>,
    pub opened_at: Instant,
    /// Completed moves of this flow (ours and the peer's).
    pub moves: u32,
    /// What the data plane has for this flow (`None`: no entry).
    #[serde(skip)]
    pub(crate) installed: Option<FlowMapping>,
}

impl Flow {
    fn new(original: Tuple, current: Tuple, now: Instant) -> Flow {
        Flow {
            original,
            current,
            wire_key: current,
            peer: FlowPeer::Probing,
            moving_since: None,
            orphaned: false,
            remapped: false,
            validating: None,
            nudge_deferred: None,
            opened_at: now,
            moves: 0,
            installed: None,
        }
    }

    /// A flow whose entry the data plane kept across a restart.
    pub(crate) fn restored(m: FlowMapping, now: Instant) -> Flow {
        let mut f = Flow::new(m.original, m.current, now);
        // Its wire key cannot be known again: a remapped flow's is lost (the daemon
        // persists flows to avoid that).
        f.wire_key = m.original;
        f
    }

    /// Whether roam can do anything for this flow.
    fn managed(&self) -> bool {
        matches!(self.peer, FlowPeer::Peer(_) | FlowPeer::Probing)
    }
}

/// A nudge for a flow the peer moved, sent once the peer answers a challenge at the
/// flow's new address.
///
/// The mover holds the flow's egress until our acknowledgment reaches it (seed 001
/// FIG. 3 step 305), and a data plane that cannot queue (the kernel's) drops what the
/// held flow sends. A nudge sent as we apply the move reaches the mover's stack a few
/// microseconds after our acknowledgment, before its daemon has released the hold: its
/// TCP answers with data that the hold drops, then sits in its retransmission timer
/// (200 ms at least), and the peer's stack will not answer a second nudge for 500 ms
/// (`tcp_invalid_ratelimit`). The challenge goes after the acknowledgment, so the
/// mover answers it once it has released (roamd applies a step's data-plane changes
/// before it sends that step's datagrams), and the nudge then finds its sender free to
/// send. (If the acknowledgment is lost and the challenge is not, the answer comes
/// early and so does the nudge: no worse than nudging on applying the move.)
///
/// Where the answer must come from is the flow's current remote address: a newer move
/// by the peer replaces the nudge, and whatever else changes that address (a
/// termination, a path that failed) drops it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeferredNudge {
    /// The outage the peer reported, and when we applied its move: when the answer
    /// comes the flow has been without a path for `outage + (now - applied)`.
    pub outage: std::time::Duration,
    pub applied: Instant,
}

/// The mover's own nudge for a flow whose move the peer confirmed, waiting for the
/// peer to be able to take what it starts.
///
/// The nudge makes our TCP send its current ACK, which (for data the peer sends us)
/// makes the peer's sender retransmit what the move lost. But the peer sends to our new
/// address under a return-routability budget (RFC 9000 §8-§9) until we answer its path
/// challenge, and a retransmitted window is far over it: nudged at the confirmation, the
/// peer's retransmission is dropped by its own data plane and its sender falls back to
/// its timeout (measured in the lab: 230-390 ms gaps for streams towards the mover,
/// against ~60 ms for streams from it). So the nudge waits for the challenge: it goes
/// [`Config::nudge_settle`](super::Config::nudge_settle) after our answer (the ACK then
/// arrives that long after the answer, once the peer has lifted the budget), or at
/// `due` if no challenge comes (lost, or a peer that does not challenge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwnNudge {
    /// How long the flow had been without a path when the move was confirmed.
    pub outage: std::time::Duration,
    pub confirmed: Instant,
    pub due: Instant,
}

/// Ports handed out by remaps: the IANA dynamic range (RFC 6335 §6).
const REMAP_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

impl Endpoint {
    pub(super) fn flow_opened(&mut self, now: Instant, t: Tuple) {
        if self.flows.contains_key(&t) || !t.is_consistent() {
            return;
        }
        if self.by_current.contains_key(&t) {
            // The new flow's tuple is already on the wire for a moved flow (seed 000
            // ¶0069, the current side): it gets another local port on the wire.
            self.resolve_conflict(now, ConflictDirection::Egress, t);
            return;
        }
        self.insert_flow(Flow::new(t, t, now));
        self.associate(now, t);
    }

    pub(super) fn flow_closed(&mut self, now: Instant, t: Tuple) {
        let Some(flow) = self.flows.remove(&t) else {
            return;
        };
        self.unindex(&flow);
        if flow.remapped {
            self.remapped_flows = self.remapped_flows.saturating_sub(1);
        }
        if let FlowPeer::Peer(p) = flow.peer
            && let Some(peer) = self.peers.get_mut(&p)
        {
            peer.flows.remove(&t);
            peer.refresh.remove(&t);
            // (A termination's exchange holds wire keys of flows already gone: the
            // peer must still hear of those.)
            if let Some(ex) = &mut peer.update
                && ex.flows.remove(&t)
            {
                ex.total -= 1;
            }
            // The last flow an update waited for closed: the rest are confirmed.
            self.finish_update_if_done(now, p);
        }
        if flow.installed.is_some() {
            self.install(TableChange::RemoveFlow { original: t });
            // Seed 003: tell the peer, so it drops its translation too instead of
            // keeping it until its own socket goes.
            if let FlowPeer::Peer(p) = flow.peer {
                self.terminate(now, p, vec![flow.wire_key]);
            }
        }
    }

    pub(super) fn insert_flow(&mut self, flow: Flow) {
        self.by_current.insert(flow.current, flow.original);
        self.by_wire_key
            .entry(flow.wire_key)
            .or_default()
            .insert(flow.original);
        self.flows.insert(flow.original, flow);
    }

    fn unindex(&mut self, flow: &Flow) {
        if self.by_current.get(&flow.current) == Some(&flow.original) {
            self.by_current.remove(&flow.current);
        }
        if let Some(set) = self.by_wire_key.get_mut(&flow.wire_key) {
            set.remove(&flow.original);
            if set.is_empty() {
                self.by_wire_key.remove(&flow.wire_key);
            }
        }
    }

    /// Changes a flow's current tuple, keeping the index true.
    pub(super) fn set_current(&mut self, original: &Tuple, current: Tuple) {
        let Some(flow) = self.flows.get_mut(original) else {
            return;
        };
        let old = std::mem::replace(&mut flow.current, current);
        if self.by_current.get(&old) == Some(original) {
            self.by_current.remove(&old);
        }
        self.by_current.insert(current, *original);
    }

    /// Whether `t` is the current tuple of a flow other than `original`: installing it
    /// would break the one-to-one relation of seed 000 ¶0069.
    pub(super) fn current_taken(&self, t: &Tuple, original: &Tuple) -> bool {
        self.by_current.get(t).is_some_and(|o| o != original)
    }

    /// Finds who is at the flow's remote address: a known peer, a registration in
    /// progress, or nobody (then starts a registration, seed 001 FIG. 3 step 302).
    pub(super) fn associate(&mut self, now: Instant, original: Tuple) {
        let Some(flow) = self.flows.get(&original) else {
            return;
        };
        let remote = flow.current.remote.ip();
        let local = flow.current.local.ip();
        let peer = if remote.is_loopback() || self.addresses.contains_key(&remote) {
            FlowPeer::Local
        } else if let Some(p) = peer_at(&self.peers, remote) {
            self.peers.get_mut(&p).map(|peer| peer.flows.insert(original));
            FlowPeer::Peer(p)
        } else {
            match self.probes.get(&remote) {
                Some(Probe::Pending) => FlowPeer::Probing,
                Some(Probe::NotCapable { until }) if now < *until => {
                    self.counters.flows_without_peer += 1;
                    FlowPeer::NotRoam
                }
                // We are answering a handshake from there (the far end started one
                // as it opened the flow): wait for it rather than cross it with ours.
                _ if self.responding.values().any(|r| r.remote.ip() == remote) => {
                    self.probes.insert(remote, Probe::Pending);
                    FlowPeer::Probing
                }
                _ => {
                    self.start_probe(now, local, remote);
                    FlowPeer::Probing
                }
            }
        };
        if let Some(f) = self.flows.get_mut(&original) {
            f.peer = peer;
        }
    }

    /// Attaches every unattached flow at `addr` to `peer` (after a registration).
    pub(super) fn adopt_flows(&mut self, peer: roam_wire::NodeId, addr: IpAddr) {
        let adopt: Vec<Tuple> = self
            .flows
            .values()
            .filter(|f| {
                f.current.remote.ip() == addr && matches!(f.peer, FlowPeer::Probing | FlowPeer::NotRoam)
            })
            .map(|f| f.original)
            .collect();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        for t in adopt {
            p.flows.insert(t);
            if let Some(f) = self.flows.get_mut(&t) {
                f.peer = FlowPeer::Peer(peer);
                // A flow that moved while its peer was unknown is told now.
                if f.moving_since.is_some() {
                    p.update_needed = true;
                }
            }
        }
    }

    pub(super) fn address_added(&mut self, now: Instant, addr: IpAddr) {
        self.addresses.insert(addr, now);
        let orphans: Vec<Tuple> = self
            .flows
            .values()
            .filter(|f| f.orphaned && f.current.local.is_ipv4() == addr.is_ipv4())
            .map(|f| f.original)
            .collect();
        for o in orphans {
            self.move_flow(now, o, addr);
        }
    }

    /// Seed 000 FIG. 17: the local attachment point changed; every flow on the old
    /// address gets a new current tuple and its peer is told.
    pub(super) fn address_removed(&mut self, now: Instant, addr: IpAddr) {
        self.addresses.remove(&addr);
        let affected: Vec<Tuple> = self
            .flows
            .values()
            .filter(|f| f.current.local.ip() == addr && f.peer != FlowPeer::Local)
            .map(|f| f.original)
            .collect();
        let replacement = self.newest_address(addr.is_ipv4());
        for o in affected {
            match replacement {
                Some(r) => self.move_flow(now, o, r),
                None => {
                    // Wait for an address of this family (DHCP in progress): hold the
                    // flow's packets meanwhile rather than send them from nowhere. The
                    // outage has begun: it counts from now.
                    if let Some(f) = self.flows.get_mut(&o) {
                        f.orphaned = true;
                        if f.managed() {
                            f.moving_since.get_or_insert(now);
                        }
                    }
                    self.sync_entry(&o);
                }
            }
        }
    }

    pub(super) fn newest_address(&self, ipv4: bool) -> Option<IpAddr> {
        self.addresses
            .iter()
            .filter(|(a, _)| a.is_ipv4() == ipv4)
            .max_by_key(|(a, t)| (**t, **a))
            .map(|(a, _)| *a)
    }

    fn move_flow(&mut self, now: Instant, original: Tuple, new_ip: IpAddr) {
        let Some(flow) = self.flows.get(&original) else {
            return;
        };
        if !flow.managed() {
            let reason = match flow.peer {
                FlowPeer::NotRoam => "the remote host does not run roam",
                _ => "no peer",
            };
            self.counters.flows_stranded += 1;
            self.events.push_back(Event::FlowStranded {
                flow: original,
                reason,
            });
            if let Some(f) = self.flows.get_mut(&original) {
                f.orphaned = false;
            }
            return;
        }
        if flow.current.local.ip() == new_ip && !flow.orphaned {
            return;
        }
        let mut cand = Tuple {
            local: SocketAddr::new(new_ip, flow.current.local.port()),
            ..flow.current
        };
        if self.current_taken(&cand, &original) {
            match self.free_port(|p| Tuple {
                local: SocketAddr::new(new_ip, p),
                ..cand
            }) {
                Some(t) => cand = t,
                None => {
                    self.counters.flows_stranded += 1;
                    self.events.push_back(Event::FlowStranded {
                        flow: original,
                        reason: "no free port on the new address",
                    });
                    return;
                }
            }
        }
        self.set_current(&original, cand);
        let peer = if let Some(f) = self.flows.get_mut(&original) {
            f.orphaned = false;
            f.moving_since.get_or_insert(now);
            f.peer
        } else {
            return;
        };
        if let FlowPeer::Peer(p) = peer
            && let Some(peer) = self.peers.get_mut(&p)
        {
            peer.update_needed = true;
        }
        self.sync_entry(&original);
    }

    /// A random port for which `make(port)` is nobody's current tuple (bounded tries).
    fn free_port(&mut self, make: impl Fn(u16) -> Tuple) -> Option<Tuple> {
        let span = u32::from(REMAP_PORTS.end() - REMAP_PORTS.start()) + 1;
        for _ in 0..64 {
            let port = REMAP_PORTS.start() + (self.rng.next_u32() % span) as u16;
            let t = make(port);
            if !self.by_current.contains_key(&t) && !self.flows.contains_key(&t) {
                return Some(t);
            }
        }
        None
    }

    /// Seed 000 ¶0067-¶0069: keep two connections apart when a tuple is reused.
    pub(super) fn resolve_conflict(&mut self, now: Instant, dir: ConflictDirection, tuple: Tuple) {
        if self.remapped_flows >= self.config.max_remapped_flows {
            self.counters.conflicts_refused += 1;
            return;
        }
        let flow = match dir {
            // The packet came from the wire under a tuple that is a translated flow's
            // original. Seed 000 ¶0069 reattaches the new connection to another local
            // port; a listening socket would not accept that, so roam gives the new
            // connection another *remote* port instead, as a NAT would. The local stack
            // sees the newcomer at (its address, a fresh port); the wire is untouched.
            ConflictDirection::Ingress => {
                if self.by_current.contains_key(&tuple) || !self.flows.contains_key(&tuple) {
                    return; // not (or no longer) a conflict
                }
                let Some(original) = self.free_port(|p| Tuple {
                    remote: SocketAddr::new(tuple.remote.ip(), p),
                    ..tuple
                }) else {
                    self.counters.conflicts_refused += 1;
                    return;
                };
                Flow::new(original, tuple, now)
            }
            // The local stack opened a flow whose tuple is already on the wire for a
            // moved flow: give the new one another local port on the wire.
            ConflictDirection::Egress => {
                if self.flows.contains_key(&tuple) || !self.by_current.contains_key(&tuple) {
                    return;
                }
                let Some(current) = self.free_port(|p| Tuple {
                    local: SocketAddr::new(tuple.local.ip(), p),
                    ..tuple
                }) else {
                    self.counters.conflicts_refused += 1;
                    return;
                };
                Flow::new(tuple, current, now)
            }
        };
        let (original, current) = (flow.original, flow.current);
        self.insert_flow(Flow {
            remapped: true,
            ..flow
        });
        self.remapped_flows += 1;
        self.counters.conflicts_resolved += 1;
        self.events
            .push_back(Event::ConflictResolved { original, current });
        self.sync_entry(&original);
        self.associate(now, original);
    }

    /// Brings the data plane's entry for a flow in line with the flow's state. The
    /// entry is derived, never kept by hand: hold while a move is unconfirmed (seed 001
    /// FIG. 3 step 305), translate while current differs from original, nothing
    /// otherwise.
    pub(super) fn sync_entry(&mut self, original: &Tuple) {
        let Some(flow) = self.flows.get_mut(original) else {
            return;
        };
        let hold = flow.moving_since.is_some() || (flow.orphaned && flow.managed());
        let desired = (hold || flow.current != flow.original).then_some(FlowMapping {
            original: flow.original,
            current: flow.current,
            hold,
        });
        if desired == flow.installed {
            return;
        }
        flow.installed = desired;
        let change = match desired {
            Some(m) => TableChange::InstallFlow(m),
            None => TableChange::RemoveFlow { original: *original },
        };
        self.install(change);
    }

    /// Our move of `original` was confirmed after an outage of `outage`: its nudge waits
    /// for the peer's path challenge (see [`OwnNudge`]), at most one retransmission
    /// timeout of the peer's.
    pub(super) fn defer_own_nudge(&mut self, now: Instant, original: &Tuple, outage: std::time::Duration) {
        let Some(f) = self.flows.get(original) else { return };
        if original.protocol != Protocol::Tcp {
            return;
        }
        let rtt = match f.peer {
            FlowPeer::Peer(p) => self.peers.get(&p).and_then(|p| p.srtt),
            _ => None,
        };
        let due = now + self.rto_for(rtt) + self.config.nudge_settle;
        self.own_nudges.insert(
            *original,
            OwnNudge {
                outage,
                confirmed: now,
                due,
            },
        );
    }

    /// We answered a path challenge from `remote` at our address `local`: the own
    /// nudges of flows on that path go once the peer has had time to lift its budget.
    pub(super) fn challenge_answered(&mut self, now: Instant, local: IpAddr, remote: IpAddr) {
        let settle = now + self.config.nudge_settle;
        for (o, n) in self.own_nudges.iter_mut() {
            if let Some(f) = self.flows.get(o)
                && f.current.local.ip() == local
                && f.current.remote.ip() == remote
            {
                n.due = n.due.min(settle);
            }
        }
    }

    /// Own nudges whose time has come; those of flows that closed or moved again
    /// meanwhile are dropped (a newer move brings its own).
    pub(super) fn own_nudge_timeouts(&mut self, now: Instant) {
        let due: Vec<(Tuple, OwnNudge)> = self
            .own_nudges
            .iter()
            .filter(|(_, n)| n.due <= now)
            .map(|(o, n)| (*o, *n))
            .collect();
        for (o, n) in due {
            self.own_nudges.remove(&o);
            if self.flows.get(&o).is_some_and(|f| f.moving_since.is_none()) {
                self.nudge(&o, n.outage + (now - n.confirmed));
            }
        }
    }

    /// The path of a TCP flow works again after an outage of `outage`: ask the data
    /// plane to bring the peer's sender up to date, and to end its back-off if it has
    /// likely begun (MISSION: "kick the sender").
    pub(super) fn nudge(&mut self, original: &Tuple, outage: std::time::Duration) {
        if original.protocol == Protocol::Tcp {
            self.dataplane.push_back(DataPlaneCommand::Nudge {
                original: *original,
                fast_retransmit: outage >= self.config.nudge_after,
            });
        }
    }

    /// Flows of `peer` the peer names by `wire_key` (from our point of view).
    pub(super) fn flows_by_wire_key(&self, peer: roam_wire::NodeId, key: &Tuple) -> Vec<Tuple> {
        self.by_wire_key
            .get(key)
            .into_iter()
            .flatten()
            .filter(|o| self.flows.get(o).is_some_and(|f| f.peer == FlowPeer::Peer(peer)))
            .copied()
            .collect()
    }

    /// Seed 001 FIG. 3 step 302: register with whoever is at `remote`, by a handshake.
    pub(super) fn start_probe(&mut self, now: Instant, from: IpAddr, remote: IpAddr) {
        let to = SocketAddr::new(remote, self.config.control_port);
        if self.start_handshake(now, from, to, None).is_some() {
            self.probes.insert(remote, Probe::Pending);
        }
    }
}
