//! Peers (hosts that run roam and registered with us) and the reliable exchanges with
//! them: registrations, updates and terminations, each retransmitted with exponential
//! back-off and a bounded number of attempts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use roam_wire::NodeId;

use super::replay::ReplayWindow;
use crate::time::Instant;
use crate::translate::Tuple;

/// A host that runs roam and that we share flows with.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: NodeId,
    /// Where its control channel is now.
    pub control: SocketAddr,
    /// Its addresses as we know them: flows to these addresses are its flows.
    pub addrs: BTreeSet<IpAddr>,
    /// Its own address as it reported it (seed 000 ¶0071).
    pub reported: Option<SocketAddr>,
    /// Seed 000 ¶0106: reported address differs from the apparent source.
    pub behind_nat: bool,
    pub capabilities: u32,
    /// Our flows with this peer, by original tuple.
    pub flows: BTreeSet<Tuple>,
    /// Smoothed round-trip time of the control channel (RFC 6298 SRTT, alpha 1/8).
    pub srtt: Option<Duration>,
    pub(crate) replay: ReplayWindow,
    /// Next sequence number for a request we send.
    pub(crate) next_seq: u16,
    /// Sequence number of the newest update from this peer that we applied: an older
    /// one arriving late (a retransmission overtaken by a second move) must not undo it.
    pub(crate) last_update_seq: Option<u16>,
    /// Our outstanding update (flows we moved, not yet confirmed).
    pub(crate) update: Option<Exchange>,
    /// Our outstanding termination.
    pub(crate) termination: Option<Exchange>,
    /// Set when flows of this peer moved and the update must be (re)built.
    pub(crate) update_needed: bool,
    /// Flows to name in the next update even if they did not move (Update-Request).
    pub(crate) refresh: BTreeSet<Tuple>,
    /// When the last move with this peer completed, and how long the exchange took.
    pub last_move: Option<(Instant, Duration)>,
}

impl Peer {
    pub(crate) fn new(id: NodeId, control: SocketAddr, first_seq: u16) -> Peer {
        Peer {
            id,
            control,
            addrs: BTreeSet::from([control.ip()]),
            reported: None,
            behind_nat: false,
            capabilities: 0,
            flows: BTreeSet::new(),
            srtt: None,
            replay: ReplayWindow::default(),
            next_seq: first_seq,
            last_update_seq: None,
            update: None,
            termination: None,
            update_needed: false,
            refresh: BTreeSet::new(),
            last_move: None,
        }
    }

    pub(crate) fn take_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    pub(crate) fn rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    pub(crate) fn next_timeout(&self) -> impl Iterator<Item = Instant> + '_ {
        [&self.update, &self.termination]
            .into_iter()
            .flatten()
            .map(|e| e.next)
    }

    /// Whether an update from this peer with `seq` is older than one already applied.
    pub(crate) fn update_is_stale(&self, seq: u16) -> bool {
        self.last_update_seq
            .is_some_and(|last| super::seq_newer(last, seq))
    }
}

/// A request awaiting its reply.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    pub seq: u16,
    /// The flows (by original tuple) it names that are not yet acknowledged.
    pub flows: BTreeSet<Tuple>,
    /// How many flows it named at first.
    pub total: usize,
    pub started: Instant,
    pub attempts: u32,
    pub rto: Duration,
    pub next: Instant,
}

impl Exchange {
    pub fn new(seq: u16, flows: BTreeSet<Tuple>, now: Instant, rto: Duration) -> Exchange {
        Exchange {
            seq,
            total: flows.len(),
            flows,
            started: now,
            attempts: 1,
            rto,
            next: now + rto,
        }
    }

    /// Schedules the next retransmission (exponential back-off, RFC 6298 §5.5).
    pub fn back_off(&mut self, now: Instant, max_rto: Duration) {
        self.attempts += 1;
        self.rto = (self.rto * 2).min(max_rto);
        self.next = now + self.rto;
    }
}

/// A registration (seed 001 FIG. 3 step 302) to a remote address, to learn whether the
/// host there runs roam and who it is.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    /// The local address to send from (the flow's current local address).
    pub from: IpAddr,
    pub state: ProbeState,
}

#[derive(Clone, Debug)]
pub(crate) enum ProbeState {
    Pending {
        seq: u16,
        first_sent: Instant,
        exchange: Exchange,
    },
    /// Unanswered (seed 000 FIG. 21 step 2112: "not VC enhanced"): retry after `until`.
    NotCapable { until: Instant },
}

impl Probe {
    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            ProbeState::Pending { exchange, .. } => Some(exchange.next),
            ProbeState::NotCapable { until } => Some(*until),
        }
    }
}

/// Peers by id, looked up by address.
pub(crate) fn peer_at(peers: &BTreeMap<NodeId, Peer>, addr: IpAddr) -> Option<NodeId> {
    peers.values().find(|p| p.addrs.contains(&addr)).map(|p| p.id)
}
