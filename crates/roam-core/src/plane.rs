//! The userspace data plane's packet logic, free of I/O: a data plane that sees each
//! packet of a translated flow (the simulator's, between a smoltcp stack and its link;
//! roam-linux's TUN plane, between the kernel's stack and a TUN device) pushes it
//! through [`PacketPlane`], and obeys the endpoint's commands through it.
//!
//! What it does with a packet, beyond [`crate::translate::translate`]:
//! - **hold** (seed 001 FIG. 3 step 305): egress packets of a flow whose move is not
//!   confirmed are queued (at most [`HOLD_LIMIT`]) and leave, translated, in order,
//!   once the entry is released;
//! - **return routability**: to an address that has not echoed its challenge, at most
//!   the endpoint's cap and three times what came from it (RFC 9000 §8.1); the rest
//!   waits for room or validation;
//! - **drain** (seed 001 FIG. 4 step 404): for [`DRAIN`] after a flow's entry changed,
//!   what still arrives under its previous current tuple is translated too;
//! - **conflicts** (seed 000 ¶0067-¶0069) are reported, for the endpoint to resolve;
//! - **nudge** and **resend** after a move, from what it saw of the flow;
//! - **tunnel mode** ([`PacketPlane::new_tunnel`]; seed 002 FIG. 3A, seed 003's
//!   transition tunnel): a moved flow's egress packet is not rewritten but wrapped whole
//!   in UDP from the entry's current local address to its current remote address
//!   ([`crate::tunnel`]); a tunnelled datagram from the wire is unwrapped
//!   ([`PacketPlane::unwrap`]) only if its outer addresses are the current ones of the
//!   entry whose original tuple the inner packet carries. Hold, budgets, drain, resend
//!   and nudges work as in translate mode.
//!
//! It never reads a clock: the caller sets the time ([`PacketPlane::set_now`]) before
//! pushing packets or commands, and collects what they produced from
//! [`PacketPlane::to_wire`], [`PacketPlane::to_stack`] and [`PacketPlane::heard`].

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::endpoint::{DataPlane, DataPlaneCommand};
use crate::time::Instant;
use crate::translate::{
    Direction, FlowMapping, PacketError, PacketFlow, Protocol, Side, TableChange, TableError,
    TranslationTable, Tuple, Verdict, packet_flow, translate,
};
use crate::tunnel::{self, TunnelCounters, UnwrapError};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use serde::Serialize;

/// How many packets of moving flows the data plane queues (seed 001 FIG. 3 step 305)
/// before it drops and lets TCP retransmit.
pub const HOLD_LIMIT: usize = 2048;

/// How long, and how many bytes per flow, of its recent TCP data packets the data
/// plane keeps for [`DataPlaneCommand::Resend`]: more than a round trip plus the
/// longest outage worth repairing this way (longer ones end in a retransmission
/// timeout, which resends everything anyway).
const RESEND_KEEP: Duration = Duration::from_millis(500);

/// How long the old path drains after a flow's entry changed (seed 001 FIG. 4 step
/// 404: the peer keeps receiving what the mover sent before it moved): longer than
/// any path's delay. For that long, packets under the entry's previous current tuple
/// are still translated, and a UDP datagram under its original tuple is taken for the
/// mover's rather than a new conversation from whoever holds that address now.
pub const DRAIN: Duration = Duration::from_secs(2);
const RESEND_BYTES: usize = 2 << 20;

/// Duplicate ACKs a nudge elicits. smoltcp, like RFC 5681, starts fast retransmit on
/// the third duplicate; the first ACK after a move is often not a duplicate (it
/// acknowledges data that crossed the old path), hence four.
const NUDGE_SEGMENTS: usize = 4;

/// What the data plane did, by reason.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlaneCounters {
    /// Moved flows' packets sent under their current addresses (rewritten; in tunnel
    /// mode, wrapped), and received from them (rewritten back; unwrapped).
    pub egress_translated: u64,
    pub ingress_translated: u64,
    pub held: u64,
    pub released: u64,
    pub hold_overflow: u64,
    pub conflicts: u64,
    /// Conflicting packets that cannot start a flow (not a SYN, not UDP): dropped.
    pub conflict_drops: u64,
    /// Packets that arrived under a moved flow's original tuple and were taken for the
    /// old path draining: delivered as they are.
    pub drained: u64,
    pub nudges: u64,
    /// Packets sent again after the peer's move (the old path had lost them).
    pub resent: u64,
    /// Packets held back because their destination had not proven it receives there
    /// (return routability), and of those, dropped when it never did or the queue was full.
    pub budget_held: u64,
    pub budget_dropped: u64,
    pub table_errors: u64,
    /// Packets that did not parse, by reason.
    pub malformed: BTreeMap<&'static str, u64>,
    /// Tunnel mode: wrapped, unwrapped, overhead, refusals by reason.
    pub tunnel: TunnelCounters,
}

/// What the last TCP segments from the peer said, per flow (original tuple): enough to
/// forge a segment the local stack answers with an ACK.
#[derive(Clone, Copy, Debug)]
struct TcpSeen {
    /// The end of the peer's highest segment seen.
    seq_end: u32,
    /// The peer's highest cumulative acknowledgment of our data.
    peer_ack: Option<u32>,
    window: u16,
}

/// Outcome of pushing a packet through.
#[derive(Debug)]
pub enum Verdicts {
    /// Pass it on (translated or not).
    Forward(Vec<u8>),
    /// Queued until the flow is released.
    Held,
    Dropped,
    /// The endpoint must resolve this conflict; then push the packet again.
    Conflict(Tuple, Vec<u8>),
}

/// Recent TCP data packets of one flow, in original form, with when they left.
#[derive(Default)]
struct Recent {
    packets: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    /// The highest acknowledgment number the local stack has sent on this flow.
    ack: Option<u32>,
}

/// What may still go to an address that has not echoed its challenge.
struct Budget {
    cap: u64,
    received: u64,
    sent: u64,
    /// Translated packets waiting for room (or for validation).
    held: VecDeque<Vec<u8>>,
}

impl Budget {
    fn fits(&self, len: usize) -> bool {
        self.sent + len as u64 <= self.cap.min(self.received.saturating_mul(3))
    }
}

/// The packet logic of a userspace data plane. See the module documentation.
pub struct PacketPlane {
    table: TranslationTable,
    /// When each flow entry (by original tuple) last changed.
    changed_at: BTreeMap<Tuple, Instant>,
    /// Entries' previous current tuples while the old path drains: translated on
    /// ingress only, until the time given (by original tuple).
    draining: TranslationTable,
    drain_until: BTreeMap<Tuple, Instant>,
    budgets: BTreeMap<IpAddr, Budget>,
    /// Bytes received from unvalidated addresses since the endpoint last heard of them.
    pub heard: BTreeMap<IpAddr, u64>,
    held: VecDeque<(Tuple, Vec<u8>)>,
    tcp: BTreeMap<Tuple, TcpSeen>,
    recent: BTreeMap<Tuple, Recent>,
    now: Instant,
    /// Tunnel mode's UDP port (here and at peers); `None`: translate mode.
    tunnel: Option<u16>,
    /// The next outer IPv4 identification (tunnel mode).
    ident: u16,
    /// Where tunnel mode translates a copy of each packet to learn its outer addresses
    /// (kept: no allocation per packet).
    scratch: Vec<u8>,
    /// Packets the last `apply` released (to the wire) or forged (to the stack).
    pub to_wire: Vec<Vec<u8>>,
    pub to_stack: Vec<Vec<u8>>,
    pub counters: PlaneCounters,
}

impl PacketPlane {
    pub fn new(hash_seed: u64) -> PacketPlane {
        PacketPlane {
            table: TranslationTable::new(hash_seed),
            changed_at: BTreeMap::new(),
            draining: TranslationTable::new(hash_seed ^ 1),
            drain_until: BTreeMap::new(),
            budgets: BTreeMap::new(),
            heard: BTreeMap::new(),
            held: VecDeque::new(),
            tcp: BTreeMap::new(),
            recent: BTreeMap::new(),
            now: Instant::ZERO,
            tunnel: None,
            ident: 0,
            scratch: Vec::new(),
            to_wire: Vec::new(),
            to_stack: Vec::new(),
            counters: PlaneCounters::default(),
        }
    }

    /// A plane in tunnel mode: moved flows' packets leave wrapped in UDP datagrams
    /// between `port` at this host's current address and `port` at the peer's
    /// ([`crate::tunnel`]), whole outer packets in [`Verdicts::Forward`] and `to_wire`.
    pub fn new_tunnel(hash_seed: u64, port: u16) -> PacketPlane {
        PacketPlane {
            tunnel: Some(port),
            ..PacketPlane::new(hash_seed)
        }
    }

    /// Tunnel mode's port, or `None` in translate mode.
    pub fn tunnel_port(&self) -> Option<u16> {
        self.tunnel
    }

    pub fn table(&self) -> &TranslationTable {
        &self.table
    }

    /// The drain aliases still alive: each maps a flow's original tuple to a current
    /// tuple it had before its last change, translated on ingress only.
    pub fn draining(&self) -> Vec<FlowMapping> {
        self.draining.flows()
    }

    /// The time set last.
    pub fn now(&self) -> Instant {
        self.now
    }

    fn malformed(&mut self, e: &PacketError) {
        *self.counters.malformed.entry(e.reason()).or_default() += 1;
    }

    /// Sets the clock for what follows (the data plane is driven, never reads time).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Keeps a copy of a TCP packet carrying data, for a later resend.
    fn remember(&mut self, pkt: &[u8]) {
        let Ok(s) = SlicedPacket::from_ip(pkt) else { return };
        let Some(TransportSlice::Tcp(tcp)) = &s.transport else {
            return;
        };
        let Ok(PacketFlow::Transport(t)) = packet_flow(Direction::Egress, pkt) else {
            return;
        };
        let r = self.recent.entry(t).or_default();
        if tcp.ack() {
            let a = tcp.acknowledgment_number();
            if r.ack.is_none_or(|old| serial_gt(a, old)) {
                r.ack = Some(a);
            }
        }
        if tcp.payload().is_empty() && !tcp.fin() {
            return;
        }
        r.bytes += pkt.len();
        r.packets.push_back((self.now, pkt.to_vec()));
        while let Some((at, p)) = r.packets.front() {
            if self.now - *at <= RESEND_KEEP && r.bytes <= RESEND_BYTES {
                break;
            }
            r.bytes -= p.len();
            r.packets.pop_front();
        }
    }

    /// A packet from the local stack on its way to the wire.
    pub fn egress(&mut self, pkt: Vec<u8>) -> Verdicts {
        self.remember(&pkt);
        self.translate_egress(pkt)
    }

    fn translate_egress(&mut self, mut pkt: Vec<u8>) -> Verdicts {
        let verdict = match self.tunnel {
            None => translate(&self.table, Direction::Egress, &mut pkt),
            Some(port) => match self.wrap(&mut pkt, port) {
                Ok(v) => Ok(v),
                Err(None) => return Verdicts::Dropped,
                Err(Some(e)) => Err(e),
            },
        };
        match verdict {
            Ok(Verdict::Translated) => {
                self.counters.egress_translated += 1;
                let inner_at = match self.tunnel {
                    Some(_) => tunnel::overhead(pkt.first().is_some_and(|b| b >> 4 == 6)),
                    None => 0,
                };
                self.within_budget(pkt, true, inner_at)
            }
            Ok(Verdict::Untouched) => self.within_budget(pkt, false, 0),
            Ok(Verdict::Hold) => {
                if self.held.len() >= HOLD_LIMIT {
                    self.counters.hold_overflow += 1;
                    return Verdicts::Dropped;
                }
                match packet_flow(Direction::Egress, &pkt) {
                    Ok(PacketFlow::Transport(t) | PacketFlow::IcmpError(t)) => {
                        self.counters.held += 1;
                        self.held.push_back((t, pkt));
                        Verdicts::Held
                    }
                    _ => Verdicts::Dropped,
                }
            }
            Ok(Verdict::Conflict(t)) => self.conflict(t, pkt),
            Err(e) => {
                self.malformed(&e);
                Verdicts::Dropped
            }
        }
    }

    /// Tunnel mode's egress: the verdict translate mode would give, and on
    /// `Translated` the packet wrapped between the addresses translate mode would have
    /// written (translated on a copy: the same decisions, hold and conflicts included,
    /// for flow and address entries alike). `Err(None)`: it could not be wrapped
    /// (counted).
    fn wrap(&mut self, pkt: &mut Vec<u8>, port: u16) -> Result<Verdict, Option<PacketError>> {
        self.scratch.clear();
        self.scratch.extend_from_slice(pkt);
        let v = translate(&self.table, Direction::Egress, &mut self.scratch).map_err(Some)?;
        if v != Verdict::Translated {
            return Ok(v);
        }
        let (src, dst) = ip_addrs(&self.scratch).expect("a translated packet has addresses");
        self.ident = self.ident.wrapping_add(1);
        let before = pkt.len();
        if let Err(e) = tunnel::wrap(pkt, src, dst, port, self.ident) {
            tracing::debug!(len = before, "cannot wrap: {e}");
            self.counters.tunnel.wrap_refused += 1;
            return Err(None);
        }
        self.counters.tunnel.wrapped += 1;
        self.counters.tunnel.overhead_bytes += (pkt.len() - before) as u64;
        Ok(Verdict::Translated)
    }

    /// A tunnelled datagram from the wire: `payload` arrived in UDP from `src` to `dst`
    /// on the tunnel port. Accepted, and handed back as the inner packet to
    /// give to the stack ([`Verdicts::Forward`], unchanged), only if it is a TCP or UDP
    /// packet of the outer family ([`tunnel::inner_flow`]) and the table has an entry
    /// whose original tuple is the inner packet's and whose current tuple's addresses
    /// are the outer ones (the peer's as source, ours as destination): the check
    /// translate mode's table makes when it looks a packet up by its current tuple. For
    /// [`DRAIN`] after an entry changed, its previous current addresses are accepted
    /// too (the old path draining). Anything else is dropped and counted by reason
    /// ([`TunnelCounters::dropped`]); nothing else changes.
    ///
    /// The outer addresses are taken as they came: an IPv4-mapped IPv6 address is an
    /// IPv6 address here (the inner packet's family must be the outer one), and never
    /// a table's.
    pub fn unwrap(&mut self, src: IpAddr, dst: IpAddr, payload: Vec<u8>) -> Verdicts {
        let checked = tunnel::inner_flow(src, dst, &payload).and_then(|t| self.accept(&t, src, dst));
        match checked {
            Ok(drained) => {
                if drained {
                    self.counters.drained += 1;
                }
                self.counters.ingress_translated += 1;
                self.counters.tunnel.unwrapped += 1;
                // What came from the peer's address raises its budget (return
                // routability), outer headers included: they crossed the path too.
                self.credit(src, payload.len() + tunnel::overhead(src.is_ipv6()));
                self.observe_tcp(&payload);
                Verdicts::Forward(payload)
            }
            Err(e) => {
                tracing::trace!(%src, %dst, "tunnelled datagram refused: {e}");
                *self.counters.tunnel.dropped.of(&e) += 1;
                Verdicts::Dropped
            }
        }
    }

    /// The acceptance rule of [`PacketPlane::unwrap`] for an inner packet of flow `t`
    /// (this host's view) that came from `src` to `dst`: `Ok(true)` if it matched a
    /// drain alias only.
    fn accept(&mut self, t: &Tuple, src: IpAddr, dst: IpAddr) -> Result<bool, UnwrapError> {
        let matches = |(local, remote): (IpAddr, IpAddr)| {
            if remote != src {
                Err(UnwrapError::WrongSource)
            } else if local != dst {
                Err(UnwrapError::WrongDestination)
            } else {
                Ok(false)
            }
        };
        let verdict = tunnel_ends(&self.table, t).map_or(Err(UnwrapError::UnknownFlow), matches);
        if verdict.is_ok() || self.drain_until.is_empty() {
            return verdict;
        }
        self.expire_drains();
        match self.draining.flow_by_original(t) {
            Some(m) if matches((m.current.local.ip(), m.current.remote.ip())).is_ok() => Ok(true),
            _ => verdict,
        }
    }

    /// Return routability (RFC 9000 §8.1 in spirit): to an address that has not echoed
    /// its challenge, at most `cap` and three times what came from it; the rest waits.
    /// Only moved flows' packets (`translated`) wait: anything else to that address
    /// (the endpoint's own control messages, which it budgets itself) counts against
    /// the budget but is never held behind data. `inner_at`: where the packet the stack
    /// sent starts (past tunnel mode's outer headers), to tell a bare acknowledgment.
    fn within_budget(&mut self, pkt: Vec<u8>, translated: bool, inner_at: usize) -> Verdicts {
        let Some((_, dst)) = ip_addrs(&pkt) else {
            return Verdicts::Forward(pkt);
        };
        let Some(b) = self.budgets.get_mut(&dst) else {
            return Verdicts::Forward(pkt);
        };
        if !translated {
            b.sent += pkt.len() as u64;
            return Verdicts::Forward(pkt);
        }
        // A bare TCP acknowledgment amplifies nothing (at most one per segment that
        // came in): within the cap it goes at once, so the peer's sender is not
        // stalled for the round trip the validation takes. Beyond, it is dropped (a
        // later one says as much).
        if is_bare_ack(&pkt[inner_at..]) {
            if b.sent + pkt.len() as u64 > b.cap {
                self.counters.budget_dropped += 1;
                return Verdicts::Dropped;
            }
            b.sent += pkt.len() as u64;
            return Verdicts::Forward(pkt);
        }
        if b.held.is_empty() && b.fits(pkt.len()) {
            b.sent += pkt.len() as u64;
            return Verdicts::Forward(pkt);
        }
        if b.held.len() >= HOLD_LIMIT {
            self.counters.budget_dropped += 1;
            return Verdicts::Dropped;
        }
        self.counters.budget_held += 1;
        b.held.push_back(pkt);
        Verdicts::Held
    }

    /// What came from `src` raises its budget: send what now fits.
    fn credit(&mut self, src: IpAddr, len: usize) {
        let Some(b) = self.budgets.get_mut(&src) else {
            return;
        };
        b.received += len as u64;
        *self.heard.entry(src).or_default() += len as u64;
        while b.held.front().is_some_and(|p| b.fits(p.len())) {
            let p = b.held.pop_front().expect("checked");
            b.sent += p.len() as u64;
            self.to_wire.push(p);
        }
    }

    /// A packet from the wire on its way to the local stack.
    pub fn ingress(&mut self, mut pkt: Vec<u8>) -> Verdicts {
        if let Some((src, _)) = ip_addrs(&pkt) {
            self.credit(src, pkt.len());
        }
        match translate(&self.table, Direction::Ingress, &mut pkt) {
            Ok(v @ (Verdict::Translated | Verdict::Untouched | Verdict::Hold)) => {
                if matches!(v, Verdict::Translated) {
                    self.counters.ingress_translated += 1;
                } else if !self.drain_until.is_empty() {
                    self.expire_drains();
                    if translate(&self.draining, Direction::Ingress, &mut pkt) == Ok(Verdict::Translated) {
                        self.counters.drained += 1;
                    }
                }
                self.observe_tcp(&pkt);
                Verdicts::Forward(pkt)
            }
            Ok(Verdict::Conflict(t)) => self.ingress_conflict(t, pkt),
            Err(e) => {
                self.malformed(&e);
                Verdicts::Dropped
            }
        }
    }

    /// Forgets the drain aliases whose time has passed (also done as packets arrive).
    pub fn expire_drains(&mut self) {
        let now = self.now;
        let done: Vec<Tuple> = self
            .drain_until
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(o, _)| *o)
            .collect();
        for original in done {
            self.drain_until.remove(&original);
            let _ = self.draining.apply(&TableChange::RemoveFlow { original });
        }
    }

    /// The (original, current) tuple `change` is about to replace, if it replaces one
    /// that is neither the original nor the new current.
    fn previous_current(&self, change: &TableChange) -> Option<(Tuple, Tuple)> {
        let (original, next) = match change {
            TableChange::InstallFlow(m) => (m.original, Some(m.current)),
            TableChange::RemoveFlow { original } => (*original, None),
            _ => return None,
        };
        let prev = self.table.flow_by_original(&original)?.current;
        (Some(prev) != next && prev != original).then_some((original, prev))
    }

    /// An entry changed: while the old path drains, what arrives under its previous
    /// current tuple is still the flow's.
    fn keep_draining(&mut self, original: Tuple, prev: Tuple) {
        let _ = self.draining.apply(&TableChange::RemoveFlow { original });
        let alias = TableChange::InstallFlow(FlowMapping {
            original,
            current: prev,
            hold: false,
        });
        // An alias that clashes with another one still draining is left out.
        if self.draining.apply(&alias).is_ok() {
            self.drain_until.insert(original, self.now + DRAIN);
        }
    }

    /// A packet under a moved flow's original tuple: the old path draining, or a new
    /// conversation from whoever holds the peer's old address now (seed 000 ¶0067).
    /// A TCP SYN is the latter; any other TCP segment is taken for the former (a third
    /// host could not get into the connection without its sequence numbers); a UDP
    /// datagram is the former shortly after the move, the latter afterwards.
    fn ingress_conflict(&mut self, t: Tuple, pkt: Vec<u8>) -> Verdicts {
        let draining = match SlicedPacket::from_ip(&pkt).ok().and_then(|s| s.transport) {
            Some(TransportSlice::Tcp(tcp)) => !tcp.syn() || tcp.ack(),
            Some(TransportSlice::Udp(_)) => self.changed_at.get(&t).is_some_and(|at| self.now - *at <= DRAIN),
            _ => false,
        };
        if draining {
            self.counters.drained += 1;
            self.observe_tcp(&pkt);
            return Verdicts::Forward(pkt);
        }
        self.conflict(t, pkt)
    }

    /// Seed 000 ¶0069: only a packet that can open a connection (a TCP SYN, any UDP
    /// datagram) earns a remap; anything else colliding is a stray and is dropped, so
    /// that stray packets cannot fill the table.
    fn conflict(&mut self, t: Tuple, pkt: Vec<u8>) -> Verdicts {
        let opens = match SlicedPacket::from_ip(&pkt).ok().and_then(|s| s.transport) {
            Some(TransportSlice::Tcp(tcp)) => tcp.syn() && !tcp.ack(),
            Some(TransportSlice::Udp(_)) => true,
            _ => false,
        };
        if opens {
            self.counters.conflicts += 1;
            Verdicts::Conflict(t, pkt)
        } else {
            self.counters.conflict_drops += 1;
            Verdicts::Dropped
        }
    }

    fn observe_tcp(&mut self, pkt: &[u8]) {
        let Ok(s) = SlicedPacket::from_ip(pkt) else { return };
        let (Some(net), Some(TransportSlice::Tcp(tcp))) = (s.net.as_ref(), s.transport) else {
            return;
        };
        let (src, dst): (IpAddr, IpAddr) = match net {
            etherparse::NetSlice::Ipv4(v4) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            ),
            etherparse::NetSlice::Ipv6(v6) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            ),
            _ => return,
        };
        let key = Tuple::new(
            Protocol::Tcp,
            SocketAddr::new(dst, tcp.destination_port()),
            SocketAddr::new(src, tcp.source_port()),
        );
        if tcp.rst() {
            self.tcp.remove(&key);
            return;
        }
        let len = tcp.payload().len() as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin());
        let end = tcp.sequence_number().wrapping_add(len);
        let seen = self.tcp.entry(key).or_insert(TcpSeen {
            seq_end: end,
            peer_ack: None,
            window: tcp.window_size(),
        });
        if serial_gt(end, seen.seq_end) {
            seen.seq_end = end;
        }
        if tcp.ack() {
            let a = tcp.acknowledgment_number();
            if seen.peer_ack.is_none_or(|old| serial_gt(a, old)) {
                seen.peer_ack = Some(a);
            }
        }
        seen.window = tcp.window_size();
    }

    /// Forges segments that the local stack must answer with an ACK (RFC 9293 §3.10.7.4:
    /// an unacceptable segment elicits an ACK): one byte far behind the stack's receive
    /// window, with an acknowledgment number it accepts. Each ACK it sends is a duplicate
    /// ACK at the peer, whose sender then retransmits at once instead of waiting out its
    /// back-off. Segments carrying data are exempt from the stacks' rate limits on such
    /// ACKs (Linux's `tcp_oow_rate_limited`, smoltcp's challenge ACK timer).
    fn nudge(&mut self, flow: &Tuple, fast_retransmit: bool) {
        let Some(seen) = self.tcp.get(flow).copied() else {
            tracing::debug!(%flow, "nudge: nothing seen from the peer yet");
            return;
        };
        let Some(ack) = seen.peer_ack else { return };
        tracing::debug!(%flow, ?seen, "nudge");
        // A quarter of the sequence space behind the peer's highest segment: no receive
        // window reaches that far (at most 2^30 - 1 bytes with window scaling, RFC 7323
        // §2.3), so the byte is never taken for data. (A byte at the first sequence
        // number seen would be, when that was a bare ACK: it is the receiver's next
        // expected byte.)
        let seq = seen.seq_end.wrapping_sub(1 << 30);
        let segments = if fast_retransmit { NUDGE_SEGMENTS } else { 1 };
        for _ in 0..segments {
            let builder = match (flow.remote.ip(), flow.local.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
                _ => return,
            };
            let b = builder
                .tcp(flow.remote.port(), flow.local.port(), seq, seen.window)
                .ack(ack);
            let mut out = Vec::with_capacity(b.size(1));
            if b.write(&mut out, &[0]).is_ok() {
                self.to_stack.push(out);
            }
        }
        self.counters.nudges += 1;
    }

    /// Sends every held packet whose flow is no longer held, in order.
    fn release(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (t, pkt) in held {
            match self.table.flow_by_original(&t) {
                Some(m) if m.hold => self.held.push_back((t, pkt)),
                _ => {
                    self.counters.released += 1;
                    if let Verdicts::Forward(p) = self.translate_egress(pkt) {
                        self.to_wire.push(p);
                    }
                }
            }
        }
    }

    /// Sends again, to the flow's new current tuple, every remembered segment the peer
    /// has not acknowledged: go-back-N from the last cumulative ACK seen.
    ///
    /// Each copy carries the stack's latest acknowledgment, as a retransmission by the
    /// stack itself would: a receiver may discard a segment whose ACK field is older
    /// than what it has since had acknowledged (smoltcp does), data and all.
    fn resend(&mut self, flow: &Tuple) {
        let Some(r) = self.recent.get(flow) else { return };
        let acked = self.tcp.get(flow).and_then(|s| s.peer_ack);
        let latest = r.ack;
        let again: Vec<Vec<u8>> = r
            .packets
            .iter()
            .filter(|(_, p)| match (acked, segment_end(p)) {
                (Some(a), Some(end)) => serial_gt(end, a),
                _ => true,
            })
            .map(|(_, p)| {
                let mut p = p.clone();
                if let Some(a) = latest {
                    set_ack(&mut p, a);
                }
                p
            })
            .collect();
        tracing::debug!(%flow, n = again.len(), ?acked, "resend");
        for p in again {
            if let Verdicts::Forward(p) = self.translate_egress(p) {
                self.counters.resent += 1;
                self.to_wire.push(p);
            }
        }
    }

    /// Forgets per-flow state of a closed flow.
    pub fn forget(&mut self, flow: &Tuple) {
        self.tcp.remove(flow);
        self.recent.remove(flow);
    }
}

impl DataPlane for PacketPlane {
    type Error = TableError;

    fn apply(&mut self, command: &DataPlaneCommand) -> Result<(), TableError> {
        match command {
            DataPlaneCommand::Table(change) => {
                let prev = self.previous_current(change);
                if let Err(e) = self.table.apply(change) {
                    self.counters.table_errors += 1;
                    return Err(e);
                }
                if let Some((original, prev)) = prev {
                    self.keep_draining(original, prev);
                }
                match change {
                    TableChange::InstallFlow(m) => {
                        self.changed_at.insert(m.original, self.now);
                    }
                    TableChange::RemoveFlow { original } => {
                        self.changed_at.remove(original);
                    }
                    _ => {}
                }
                self.release();
            }
            DataPlaneCommand::Nudge {
                original,
                fast_retransmit,
            } => self.nudge(original, *fast_retransmit),
            DataPlaneCommand::Resend { original } => self.resend(original),
            DataPlaneCommand::Unvalidated {
                remote,
                cap,
                received,
            } => {
                self.budgets.entry(*remote).or_insert(Budget {
                    cap: *cap,
                    received: *received,
                    sent: 0,
                    held: VecDeque::new(),
                });
            }
            DataPlaneCommand::Validated { remote } => {
                if let Some(b) = self.budgets.remove(remote) {
                    self.to_wire.extend(b.held);
                }
            }
            DataPlaneCommand::Unreachable { remote } => {
                if let Some(b) = self.budgets.remove(remote) {
                    self.counters.budget_dropped += b.held.len() as u64;
                }
            }
        }
        Ok(())
    }
}

/// The addresses (local, remote) of the tunnel that carries flow `t` (this host's view,
/// original tuple) as the table has it: a flow entry's current tuple's, else the address
/// entries' for either end (the other kept). `None`: no entry concerns the flow.
fn tunnel_ends(table: &TranslationTable, t: &Tuple) -> Option<(IpAddr, IpAddr)> {
    if let Some(m) = table.flow_by_original(t) {
        return Some((m.current.local.ip(), m.current.remote.ip()));
    }
    if !table.has_addresses() {
        return None;
    }
    let local = table.address_current(Side::Local, t.local.ip());
    let remote = table.address_current(Side::Remote, t.remote.ip());
    (local.is_some() || remote.is_some())
        .then(|| (local.unwrap_or(t.local.ip()), remote.unwrap_or(t.remote.ip())))
}

/// A packet's source and destination addresses (IPv4 or IPv6 header), if it has them.
/// Shared by every userspace data plane and the simulator's links.
pub fn ip_addrs(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let s: [u8; 4] = pkt[12..16].try_into().ok()?;
            let d: [u8; 4] = pkt[16..20].try_into().ok()?;
            Some((Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into()))
        }
        6 if pkt.len() >= 40 => {
            let s: [u8; 16] = pkt[8..24].try_into().ok()?;
            let d: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some((Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into()))
        }
        _ => None,
    }
}

/// A TCP segment with no data and no SYN or FIN: an acknowledgment only.
fn is_bare_ack(pkt: &[u8]) -> bool {
    let Ok(s) = SlicedPacket::from_ip(pkt) else {
        return false;
    };
    matches!(&s.transport, Some(TransportSlice::Tcp(t)) if t.payload().is_empty() && !t.syn() && !t.fin() && !t.rst())
}

/// Rewrites a TCP segment's acknowledgment number (if it has the ACK flag), keeping its
/// checksum right (RFC 1624).
fn set_ack(pkt: &mut [u8], ack: u32) {
    let off = {
        let Ok(s) = SlicedPacket::from_ip(pkt) else { return };
        let Some(TransportSlice::Tcp(tcp)) = &s.transport else {
            return;
        };
        if !tcp.ack() {
            return;
        }
        // The TCP slice runs to the end of the packet.
        pkt.len() - tcp.slice().len()
    };
    let old: [u8; 4] = pkt[off + 8..off + 12]
        .try_into()
        .expect("a TCP header has 20 bytes");
    let new = ack.to_be_bytes();
    let hc = u16::from_be_bytes([pkt[off + 16], pkt[off + 17]]);
    let hc = crate::translate::checksum::update(hc, &old, &new);
    pkt[off + 8..off + 12].copy_from_slice(&new);
    pkt[off + 16..off + 18].copy_from_slice(&hc.to_be_bytes());
}

/// The sequence number just past a TCP segment (data and FIN).
fn segment_end(pkt: &[u8]) -> Option<u32> {
    let s = SlicedPacket::from_ip(pkt).ok()?;
    let Some(TransportSlice::Tcp(t)) = s.transport else {
        return None;
    };
    Some(
        t.sequence_number()
            .wrapping_add(t.payload().len() as u32 + u32::from(t.fin())),
    )
}

/// RFC 1982 serial-number comparison for TCP sequence numbers.
fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }

    fn installed() -> (PacketPlane, FlowMapping) {
        let mut dp = PacketPlane::new(1);
        let m = FlowMapping {
            original: tcp("10.0.1.10:40000", "10.0.3.11:5001"),
            current: tcp("10.0.2.10:40000", "10.0.3.11:5001"),
            hold: false,
        };
        dp.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(m)))
            .unwrap();
        (dp, m)
    }

    #[test]
    fn malformed_packets_are_counted_by_reason_and_change_nothing() {
        let (mut dp, m) = installed();
        for junk in [
            vec![],
            vec![0x45],
            vec![0x70; 40],
            vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        ] {
            assert!(matches!(dp.ingress(junk.clone()), Verdicts::Dropped));
            assert!(matches!(dp.egress(junk), Verdicts::Dropped));
        }
        let c = &dp.counters.malformed;
        assert_eq!(c.values().sum::<u64>(), 8, "{c:?}");
        assert!(
            c.contains_key("empty") && c.contains_key("bad_ip_version"),
            "{c:?}"
        );
        assert_eq!(dp.table().flows(), vec![m]);
    }

    #[test]
    fn held_packets_leave_in_order_once_released() {
        let (mut dp, m) = installed();
        dp.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
            hold: true,
            ..m
        })))
        .unwrap();
        let mut sent = Vec::new();
        for seq in 0..3u32 {
            let mut p = Vec::new();
            PacketBuilder::ipv4([10, 0, 1, 10], [10, 0, 3, 11], 64)
                .tcp(40000, 5001, seq, 100)
                .write(&mut p, b"x")
                .unwrap();
            assert!(matches!(dp.egress(p.clone()), Verdicts::Held));
            sent.push(p);
        }
        dp.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(m)))
            .unwrap();
        assert_eq!(dp.to_wire.len(), 3);
        for (i, p) in dp.to_wire.iter().enumerate() {
            let s = SlicedPacket::from_ip(p).unwrap();
            let Some(TransportSlice::Tcp(t)) = s.transport else {
                panic!()
            };
            assert_eq!(t.sequence_number(), i as u32, "in order");
            assert_eq!(&p[12..16], &[10, 0, 2, 10], "translated on release");
        }
    }

    #[test]
    fn a_nudge_makes_the_stack_answer_with_acks_only_after_seeing_the_peer() {
        let (mut dp, m) = installed();
        // Nothing seen from the peer yet: nothing to forge.
        dp.apply(&DataPlaneCommand::Nudge {
            original: m.original,
            fast_retransmit: true,
        })
        .unwrap();
        assert!(dp.to_stack.is_empty());
        let mut p = Vec::new();
        PacketBuilder::ipv4([10, 0, 3, 11], [10, 0, 2, 10], 64)
            .tcp(5001, 40000, 500, 100)
            .ack(77)
            .write(&mut p, b"hi")
            .unwrap();
        assert!(matches!(dp.ingress(p), Verdicts::Forward(_)));
        dp.apply(&DataPlaneCommand::Nudge {
            original: m.original,
            fast_retransmit: false,
        })
        .unwrap();
        assert_eq!(dp.to_stack.len(), 1);
        dp.to_stack.clear();
        dp.apply(&DataPlaneCommand::Nudge {
            original: m.original,
            fast_retransmit: true,
        })
        .unwrap();
        assert_eq!(dp.to_stack.len(), NUDGE_SEGMENTS);
        // Each is an out-of-window data segment from the peer carrying an acceptable ACK.
        let s = SlicedPacket::from_ip(&dp.to_stack[0]).unwrap();
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!()
        };
        assert_eq!((t.source_port(), t.destination_port()), (5001, 40000));
        assert_eq!(t.acknowledgment_number(), 77);
        // Far behind what the peer sent (500 and 2 bytes): never taken for data, even
        // where the peer had sent nothing but acknowledgments.
        assert_eq!(t.sequence_number(), 502u32.wrapping_sub(1 << 30));
        assert_eq!(t.payload().len(), 1);
    }

    // ---- tunnel mode ----

    /// A's plane (moved from 10.0.1.10 to 10.0.2.10) and B's (10.0.3.11), both in
    /// tunnel mode with mirrored entries for one TCP flow.
    fn tunnel_pair() -> (PacketPlane, PacketPlane, FlowMapping) {
        let (mut a, mut b) = (PacketPlane::new_tunnel(1, 4792), PacketPlane::new_tunnel(2, 4792));
        let m = FlowMapping {
            original: tcp("10.0.1.10:40000", "10.0.3.11:5001"),
            current: tcp("10.0.2.10:40000", "10.0.3.11:5001"),
            hold: false,
        };
        a.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(m)))
            .unwrap();
        b.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
            original: m.original.reversed(),
            current: m.current.reversed(),
            hold: false,
        })))
        .unwrap();
        (a, b, m)
    }

    /// A segment of the flow in original form, from A (`from_a`) or from B.
    fn segment(from_a: bool, seq: u32, data: &[u8]) -> Vec<u8> {
        let (s, d, sp, dp) = if from_a {
            ([10, 0, 1, 10], [10, 0, 3, 11], 40000, 5001)
        } else {
            ([10, 0, 3, 11], [10, 0, 1, 10], 5001, 40000)
        };
        let mut p = Vec::new();
        PacketBuilder::ipv4(s, d, 64)
            .tcp(sp, dp, seq, 100)
            .ack(1)
            .write(&mut p, data)
            .unwrap();
        p
    }

    /// What the socket at the far end hands roamd: (outer source, outer destination,
    /// UDP payload).
    fn datagram(outer: &[u8]) -> (IpAddr, IpAddr, Vec<u8>) {
        let s = SlicedPacket::from_ip(outer).unwrap();
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            panic!("not UDP: {outer:02x?}")
        };
        assert_eq!((u.source_port(), u.destination_port()), (4792, 4792));
        let (src, dst) = ip_addrs(outer).unwrap();
        (src, dst, u.payload().to_vec())
    }

    #[test]
    fn tunnel_mode_wraps_from_the_current_addresses_and_the_peer_unwraps_the_packet_unchanged() {
        let (mut a, mut b, _) = tunnel_pair();
        let inner = segment(true, 9, b"payload");
        let Verdicts::Forward(outer) = a.egress(inner.clone()) else {
            panic!("forwarded")
        };
        assert_eq!(outer.len(), inner.len() + tunnel::OVERHEAD_V4);
        let (src, dst, payload) = datagram(&outer);
        assert_eq!(
            (src, dst),
            ("10.0.2.10".parse().unwrap(), "10.0.3.11".parse().unwrap())
        );
        assert_eq!(payload, inner, "the inner packet is not rewritten");
        let Verdicts::Forward(got) = b.unwrap(src, dst, payload) else {
            panic!("accepted")
        };
        assert_eq!(got, inner);
        // And back: B's answer leaves from B to A's current address.
        let answer = segment(false, 1, b"ok");
        let Verdicts::Forward(outer) = b.egress(answer.clone()) else {
            panic!()
        };
        let (src, dst, payload) = datagram(&outer);
        assert_eq!(dst, "10.0.2.10".parse::<IpAddr>().unwrap());
        assert!(matches!(a.unwrap(src, dst, payload), Verdicts::Forward(p) if p == answer));
        for (p, host) in [(&a, "A"), (&b, "B")] {
            let t = &p.counters.tunnel;
            assert_eq!(
                (t.wrapped, t.unwrapped, t.dropped.total()),
                (1, 1, 0),
                "{host}: {t:?}"
            );
            assert_eq!(t.overhead_bytes, tunnel::OVERHEAD_V4 as u64);
            assert_eq!(
                (p.counters.egress_translated, p.counters.ingress_translated),
                (1, 1)
            );
        }
        // Successive packets get successive IPv4 identifications.
        let Verdicts::Forward(o1) = a.egress(segment(true, 16, b"x")) else {
            panic!()
        };
        let Verdicts::Forward(o2) = a.egress(segment(true, 17, b"y")) else {
            panic!()
        };
        let id = |p: &[u8]| u16::from_be_bytes([p[4], p[5]]);
        assert_eq!(id(&o2), id(&o1).wrapping_add(1));
    }

    #[test]
    fn packets_without_an_entry_leave_as_they_are_in_tunnel_mode() {
        let mut a = PacketPlane::new_tunnel(1, 4792);
        let p = segment(true, 1, b"z");
        assert!(matches!(a.egress(p.clone()), Verdicts::Forward(q) if q == p));
        assert_eq!(a.counters.tunnel.wrapped, 0);
    }

    #[test]
    fn each_refused_datagram_is_counted_under_its_reason_and_changes_nothing() {
        let (_, mut b, m) = tunnel_pair();
        let a2: IpAddr = "10.0.2.10".parse().unwrap();
        let b_addr: IpAddr = "10.0.3.11".parse().unwrap();
        let good = segment(true, 1, b"data");
        let mut other_flow = Vec::new();
        PacketBuilder::ipv4([10, 0, 1, 10], [10, 0, 3, 11], 64)
            .tcp(40001, 5001, 1, 100)
            .write(&mut other_flow, b"")
            .unwrap();
        let mut long = good.clone();
        long.push(0);
        let mut ping = Vec::new();
        PacketBuilder::ipv4([10, 0, 1, 10], [10, 0, 3, 11], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut ping, b"")
            .unwrap();
        let cases: Vec<(IpAddr, IpAddr, Vec<u8>, &str)> = vec![
            (a2, b_addr, vec![], "empty"),
            (a2, b_addr, vec![0x80; 20], "not_ip"),
            (
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                good.clone(),
                "family_mismatch",
            ),
            (a2, b_addr, long, "length_mismatch"),
            (a2, b_addr, good[..22].to_vec(), "length_mismatch"),
            (a2, b_addr, vec![0x45, 0, 0, 4], "malformed"),
            (a2, b_addr, ping, "not_transport"),
            (a2, b_addr, other_flow, "unknown_flow"),
            ("10.0.9.9".parse().unwrap(), b_addr, good.clone(), "wrong_source"),
            // The original source is not the current one either: a packet that could
            // have come directly is no tunnel's.
            ("10.0.1.10".parse().unwrap(), b_addr, good.clone(), "wrong_source"),
            (
                a2,
                "10.0.3.99".parse().unwrap(),
                good.clone(),
                "wrong_destination",
            ),
        ];
        for (i, (src, dst, payload, reason)) in cases.into_iter().enumerate() {
            let before = serde_json::to_value(&b.counters.tunnel.dropped).unwrap();
            assert!(
                matches!(b.unwrap(src, dst, payload), Verdicts::Dropped),
                "{reason}"
            );
            let after = serde_json::to_value(&b.counters.tunnel.dropped).unwrap();
            assert_eq!(
                after[reason].as_u64().unwrap(),
                before[reason].as_u64().unwrap() + 1,
                "case {i}: {reason}: {after}"
            );
            assert_eq!(
                b.counters.tunnel.dropped.total(),
                i as u64 + 1,
                "one counter per datagram"
            );
        }
        assert_eq!(b.counters.tunnel.unwrapped, 0);
        assert_eq!(b.counters.ingress_translated, 0);
        assert!(b.heard.is_empty());
        assert_eq!(b.table().flows().len(), 1);
        assert_eq!(
            b.table()
                .flow_by_original(&m.original.reversed())
                .unwrap()
                .current,
            m.current.reversed()
        );
    }

    #[test]
    fn a_held_flow_waits_in_tunnel_mode_and_leaves_wrapped_once_released() {
        let (mut a, _, m) = tunnel_pair();
        a.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
            hold: true,
            ..m
        })))
        .unwrap();
        for seq in 0..3 {
            assert!(matches!(a.egress(segment(true, seq, b"h")), Verdicts::Held));
        }
        a.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(m)))
            .unwrap();
        assert_eq!(a.to_wire.len(), 3);
        for (i, o) in a.to_wire.iter().enumerate() {
            let (src, _, inner) = datagram(o);
            assert_eq!(src, "10.0.2.10".parse::<IpAddr>().unwrap());
            assert_eq!(inner, segment(true, i as u32, b"h"), "in order, unchanged");
        }
    }

    #[test]
    fn the_old_path_drains_into_the_tunnel_for_a_while_after_the_peer_moves_again() {
        let (_, mut b, m) = tunnel_pair();
        b.set_now(Instant::from_nanos(1_000_000_000));
        // A moves again, to 10.0.4.10: B's entry follows.
        b.apply(&DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
            original: m.original.reversed(),
            current: tcp("10.0.3.11:5001", "10.0.4.10:40000"),
            hold: false,
        })))
        .unwrap();
        let (a2, b_addr) = ("10.0.2.10".parse().unwrap(), "10.0.3.11".parse().unwrap());
        // What A sent from 10.0.2.10 before its move still arrives.
        assert!(matches!(
            b.unwrap(a2, b_addr, segment(true, 1, b"late")),
            Verdicts::Forward(_)
        ));
        assert_eq!(b.counters.drained, 1);
        assert!(matches!(
            b.unwrap("10.0.4.10".parse().unwrap(), b_addr, segment(true, 2, b"new")),
            Verdicts::Forward(_)
        ));
        b.set_now(Instant::from_nanos(1_000_000_000) + DRAIN + Duration::from_millis(1));
        assert!(matches!(
            b.unwrap(a2, b_addr, segment(true, 3, b"stale")),
            Verdicts::Dropped
        ));
        assert_eq!(b.counters.tunnel.dropped.wrong_source, 1);
    }

    #[test]
    fn address_entries_tunnel_every_flow_of_the_address() {
        let mut a = PacketPlane::new_tunnel(1, 4792);
        a.apply(&DataPlaneCommand::Table(TableChange::InstallAddress(
            crate::translate::AddressMapping {
                side: Side::Local,
                original: "10.0.1.10".parse().unwrap(),
                current: "10.0.2.10".parse().unwrap(),
            },
        )))
        .unwrap();
        let Verdicts::Forward(outer) = a.egress(segment(true, 1, b"a")) else {
            panic!()
        };
        let (src, dst, _) = datagram(&outer);
        assert_eq!(
            (src, dst),
            ("10.0.2.10".parse().unwrap(), "10.0.3.11".parse().unwrap())
        );
        // The peer's side: its remote address entry accepts from the current address.
        let mut b = PacketPlane::new_tunnel(2, 4792);
        b.apply(&DataPlaneCommand::Table(TableChange::InstallAddress(
            crate::translate::AddressMapping {
                side: Side::Remote,
                original: "10.0.1.10".parse().unwrap(),
                current: "10.0.2.10".parse().unwrap(),
            },
        )))
        .unwrap();
        assert!(matches!(
            b.unwrap(src, dst, segment(true, 1, b"a")),
            Verdicts::Forward(_)
        ));
        assert!(matches!(
            b.unwrap("10.0.1.10".parse().unwrap(), dst, segment(true, 1, b"a")),
            Verdicts::Dropped
        ));
    }

    #[test]
    fn budgets_count_the_outer_bytes_and_let_bare_acks_through_in_tunnel_mode() {
        let (mut a, _, _) = tunnel_pair();
        let b_addr: IpAddr = "10.0.3.11".parse().unwrap();
        a.apply(&DataPlaneCommand::Unvalidated {
            remote: b_addr,
            cap: 16 << 10,
            received: 100,
        })
        .unwrap();
        // 300 bytes of budget: a bare ACK goes (exempt), data waits.
        assert!(matches!(a.egress(segment(true, 1, b"")), Verdicts::Forward(_)));
        assert!(matches!(a.egress(segment(true, 1, &[7; 400])), Verdicts::Held));
        assert_eq!(a.counters.budget_held, 1);
        a.apply(&DataPlaneCommand::Validated { remote: b_addr }).unwrap();
        assert_eq!(a.to_wire.len(), 1);
        let (_, _, inner) = datagram(&a.to_wire[0]);
        assert_eq!(inner, segment(true, 1, &[7; 400]));
    }

    #[test]
    fn unwrapped_datagrams_raise_the_budget_of_their_source() {
        let (_, mut b, _) = tunnel_pair();
        let a2: IpAddr = "10.0.2.10".parse().unwrap();
        b.apply(&DataPlaneCommand::Unvalidated {
            remote: a2,
            cap: 16 << 10,
            received: 0,
        })
        .unwrap();
        let inner = segment(true, 1, b"hello");
        let n = inner.len() + tunnel::OVERHEAD_V4;
        assert!(matches!(
            b.unwrap(a2, "10.0.3.11".parse().unwrap(), inner),
            Verdicts::Forward(_)
        ));
        assert_eq!(b.heard.get(&a2), Some(&(n as u64)));
    }
}
