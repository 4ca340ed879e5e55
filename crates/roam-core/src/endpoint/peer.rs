//! Peers (hosts that run roam and registered with us) and the reliable exchanges with
//! them: registrations, updates and terminations, each retransmitted with exponential
//! back-off and a bounded number of attempts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use roam_wire::NodeId;

use crate::security::{Initiator, PublicKey, Responder};
use crate::time::Instant;
use crate::translate::Tuple;

/// A host that runs roam and that we share flows with.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: NodeId,
    /// Its long-term key, authenticated by the handshake.
    pub public_key: PublicKey,
    /// Our index of the session we seal for it with (the newest).
    pub session: Option<u32>,
    /// Addresses it has used and whether each has proven it receives there (return
    /// routability).
    pub paths: BTreeMap<IpAddr, Path>,
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
    /// Next sequence number for a request we send.
    pub(crate) next_seq: u16,
    /// Next sequence number for an update: updates count on their own, so the peer's
    /// serial comparison (RFC 1982) of two of them never spans more than 2^15 sends.
    pub(crate) next_update_seq: u16,
    /// The newest update from this peer that we applied: the establishment time of the
    /// session it came in, and its sequence number. An older one arriving late (a
    /// retransmission overtaken by a second move, or from before a rekey) must not undo
    /// it. Sequence numbers compare within one session only (an update under a newer
    /// session is newer whatever its number).
    pub(crate) last_update: Option<(Instant, u16)>,
    /// Further datagrams of `last_update` admitted (a move of many flows takes many:
    /// they are one update, not a flood of them; see `Endpoint::admit_update`).
    pub(crate) update_datagrams: usize,
    /// Answers to `last_update` that did not fit the return-routability budget of the
    /// address they go to: sent once it echoes its challenge (or the handshake proves
    /// it), dropped when a newer update supersedes them. Without this, a move of
    /// thousands of flows fills the budget with a dozen answers and the rest wait for
    /// the mover's retransmissions (each one refused again until the echo).
    pub(crate) owed: Vec<Owed>,
    /// The address of the peer's most recently challenged (by `challenge_path`). A
    /// challenge still out to it is this move's: further datagrams of the move leave it
    /// alone, where a move elsewhere and back starts over with a new token.
    pub(crate) challenged: Option<IpAddr>,
    /// Our outstanding update (flows we moved, not yet confirmed).
    pub(crate) update: Option<Exchange>,
    /// The sequence number of our last update that was answered in full: a late
    /// answer to another copy of it is a duplicate, not an unexpected reply.
    pub(crate) completed_update: Option<u16>,
    /// The same for our last termination.
    pub(crate) completed_termination: Option<u16>,
    /// Our outstanding termination.
    pub(crate) termination: Option<Exchange>,
    /// Set when flows of this peer moved and the update must be (re)built.
    pub(crate) update_needed: bool,
    /// Flows to name in the next update even if they did not move (Update-Request).
    pub(crate) refresh: BTreeSet<Tuple>,
    /// When the last move with this peer completed, and how long the exchange took.
    pub last_move: Option<(Instant, Duration)>,
    /// When to renew the session (a rekey), or try again after a failed attempt.
    pub(crate) next_rekey: Instant,
    /// As the initiator of the current session: our Handshake Finish, until the peer
    /// shows it has the session (a message sealed under it arrives). Each sealed
    /// message goes with a copy, so a lost Finish costs no handshake.
    pub(crate) unconfirmed_finish: Option<Vec<u8>>,
}

impl Peer {
    pub(crate) fn new(id: NodeId, public_key: PublicKey, control: SocketAddr, first_seq: u16) -> Peer {
        Peer {
            id,
            public_key,
            session: None,
            paths: BTreeMap::from([(control.ip(), Path::validated())]),
            control,
            addrs: BTreeSet::from([control.ip()]),
            reported: None,
            behind_nat: false,
            capabilities: 0,
            flows: BTreeSet::new(),
            srtt: None,
            next_seq: first_seq,
            next_update_seq: first_seq,
            last_update: None,
            update_datagrams: 0,
            owed: Vec::new(),
            challenged: None,
            update: None,
            completed_update: None,
            completed_termination: None,
            termination: None,
            update_needed: false,
            refresh: BTreeSet::new(),
            last_move: None,
            next_rekey: Instant::ZERO,
            unconfirmed_finish: None,
        }
    }

    pub(crate) fn take_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    pub(crate) fn take_update_seq(&mut self) -> u16 {
        let s = self.next_update_seq;
        self.next_update_seq = self.next_update_seq.wrapping_add(1);
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
            .chain(
                self.paths
                    .values()
                    .filter_map(|p| p.challenge.as_ref().map(|c| c.exchange.next)),
            )
    }

    /// Whether an update with `seq`, in a session established at `session`, is older
    /// than one already applied.
    pub(crate) fn update_is_stale(&self, session: Instant, seq: u16) -> bool {
        match self.last_update {
            None => false,
            Some((s, last)) if s == session => super::seq_newer(last, seq),
            Some((s, _)) => session < s,
        }
    }

    pub(crate) fn path(&mut self, addr: IpAddr) -> &mut Path {
        self.paths.entry(addr).or_insert_with(Path::unvalidated)
    }

    pub(crate) fn is_validated(&self, addr: IpAddr) -> bool {
        self.paths.get(&addr).is_some_and(|p| p.validated)
    }
}

/// A sealed message held back by an address's budget (see `Peer::owed`).
#[derive(Clone, Debug)]
pub(crate) struct Owed {
    pub src: IpAddr,
    pub dst: SocketAddr,
    pub msg: roam_wire::Message,
}

/// Copies of one request sent because the routes changed, at most.
pub(crate) const MAX_ROUTE_RESENDS: u8 = 2;

/// A request awaiting its reply.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    pub seq: u16,
    /// The flows (by original tuple) it names that are not yet acknowledged.
    pub flows: BTreeSet<Tuple>,
    /// How many flows it named at first, and how many of them the peer refused (or
    /// never confirmed).
    pub total: usize,
    pub failed: usize,
    pub started: Instant,
    pub attempts: u32,
    pub rto: Duration,
    pub next: Instant,
    /// Copies sent because the routes changed ([`super::Input::RoutesChanged`]): not
    /// attempts (no back-off), but bounded.
    pub route_resends: u8,
}

impl Exchange {
    pub fn new(seq: u16, flows: BTreeSet<Tuple>, now: Instant, rto: Duration) -> Exchange {
        Exchange {
            seq,
            total: flows.len(),
            failed: 0,
            flows,
            started: now,
            attempts: 1,
            rto,
            next: now + rto,
            route_resends: 0,
        }
    }

    /// Whether another copy may go because the routes changed (at most
    /// [`MAX_ROUTE_RESENDS`] per exchange: a host whose routes churn must not turn that
    /// into a flood); counts it.
    pub fn route_resend(&mut self) -> bool {
        let ok = self.route_resends < MAX_ROUTE_RESENDS;
        self.route_resends += u8::from(ok);
        ok
    }

    /// Schedules the next retransmission (exponential back-off, RFC 6298 §5.5).
    pub fn back_off(&mut self, now: Instant, max_rto: Duration) {
        self.attempts += 1;
        self.rto = (self.rto * 2).min(max_rto);
        self.next = now + self.rto;
    }
}

/// A registration (seed 001 FIG. 3 step 302, done as a handshake) to a remote address,
/// to learn whether the host there runs roam and who it is.
#[derive(Clone, Debug)]
pub(crate) enum Probe {
    /// A handshake to it is in progress (in `initiating`).
    Pending,
    /// Unanswered (seed 000 FIG. 21 step 2112: "not VC enhanced"): retry after `until`.
    NotCapable { until: Instant },
}

impl Probe {
    pub fn next_timeout(&self) -> Option<Instant> {
        match self {
            Probe::Pending => None,
            Probe::NotCapable { until } => Some(*until),
        }
    }
}

/// A handshake this host started.
pub(crate) struct Initiation {
    pub state: Option<Initiator>,
    /// The encoded Handshake Init, sent again on timeout (with the cookie, if any).
    pub sequence: u16,
    pub noise: Vec<u8>,
    pub cookie: Option<[u8; 16]>,
    pub from: IpAddr,
    pub to: SocketAddr,
    /// The peer this rekeys with; `None` for a first contact (a probe).
    pub rekey_of: Option<NodeId>,
    pub exchange: Exchange,
}

/// A handshake this host answered, awaiting its last message.
pub(crate) struct Response {
    pub state: Responder,
    pub remote: SocketAddr,
    pub local: IpAddr,
    pub their_index: u32,
    /// The Handshake Response, sent again (with fresh timestamps) for a
    /// retransmitted Init.
    pub message: roam_wire::Message,
    pub created: Instant,
}

/// What this host knows of one of a peer's addresses (return routability).
#[derive(Clone, Debug)]
pub struct Path {
    /// It has shown it receives what is sent there (a handshake with it completed, or
    /// it echoed a challenge).
    pub validated: bool,
    /// Control bytes received from and sent to it while unvalidated.
    pub received: u64,
    pub sent: u64,
    pub(crate) challenge: Option<Challenge>,
    /// The token of the last challenge echoed from here (a second echo of it is a
    /// duplicate, not an unexpected reply).
    pub(crate) answered: Option<[u8; 16]>,
}

#[derive(Clone, Debug)]
pub(crate) struct Challenge {
    pub token: [u8; 16],
    pub port: u16,
    pub exchange: Exchange,
}

impl Path {
    pub(crate) fn validated() -> Path {
        Path {
            validated: true,
            received: 0,
            sent: 0,
            challenge: None,
            answered: None,
        }
    }

    pub(crate) fn unvalidated() -> Path {
        Path {
            validated: false,
            received: 0,
            sent: 0,
            challenge: None,
            answered: None,
        }
    }

    /// Whether `len` more bytes may be sent there under `cap` and three times what came.
    pub(crate) fn may_send(&self, len: usize, cap: u64) -> bool {
        self.validated || self.sent + len as u64 <= cap.min(self.received.saturating_mul(3))
    }
}

/// Peers by id, looked up by address.
pub(crate) fn peer_at(peers: &BTreeMap<NodeId, Peer>, addr: IpAddr) -> Option<NodeId> {
    peers.values().find(|p| p.addrs.contains(&addr)).map(|p| p.id)
}
