//! Control messages: what the endpoint sends, and what it does with what it receives.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use roam_wire::{
    DecodeError, Extension, Frame, Header, Locator, LocatorRole, MAX_DATAGRAM_LEN, Message, MessageType,
    Migration, MigrationStatus, NodeId, Opaque, ProtoFlags, ReplyCode,
};
use tracing::{debug, trace};

use super::flow::{DeferredNudge, FlowPeer};
use super::peer::{Exchange, Probe};
use super::{DataPlaneCommand, Endpoint, Event, MoveMessage};
use crate::time::Instant;
use crate::translate::{Protocol, Tuple};

/// Fewest migrations a full update datagram carries: [`MAX_DATAGRAM_LEN`] over an IPv6
/// migration extension (60 bytes and its header), rounded down for the message header.
const MIN_MIGRATIONS_PER_DATAGRAM: usize = 16;

/// Which flows of a peer a migration (or address change) names, from our point of view.
#[derive(Clone, Copy, Debug)]
struct Selector {
    protocols: ProtoFlags,
    /// The peer's original endpoint (port 0: any).
    remote: SocketAddr,
    /// Our original endpoint (unspecified address / port 0: any).
    local: SocketAddr,
    /// Where the peer is now (port 0: keep each flow's port).
    new_remote: SocketAddr,
}

impl Selector {
    fn from_migration(m: &Migration) -> Selector {
        Selector {
            protocols: m.protocols(),
            remote: m.original(),
            local: m.peer(),
            new_remote: m.new_endpoint(),
        }
    }

    /// The single flow it names, if it names exactly one.
    fn exact_key(&self) -> Option<Tuple> {
        let protocol = match self.protocols {
            ProtoFlags::TCP => Protocol::Tcp,
            ProtoFlags::UDP => Protocol::Udp,
            _ => return None,
        };
        if self.remote.port() == 0 || self.local.port() == 0 || self.local.ip().is_unspecified() {
            return None;
        }
        Some(Tuple::new(protocol, self.local, self.remote))
    }

    fn matches(&self, wire_key: &Tuple) -> bool {
        self.protocols.covers(wire_key.protocol.ip_number())
            && wire_key.remote.ip() == self.remote.ip()
            && (self.remote.port() == 0 || wire_key.remote.port() == self.remote.port())
            && (self.local.ip().is_unspecified() || wire_key.local.ip() == self.local.ip())
            && (self.local.port() == 0 || wire_key.local.port() == self.local.port())
    }
}

fn proto_flag(p: Protocol) -> ProtoFlags {
    match p {
        Protocol::Tcp => ProtoFlags::TCP,
        Protocol::Udp => ProtoFlags::UDP,
    }
}

fn reply_type(t: MessageType) -> MessageType {
    match t {
        MessageType::MigrationRequest => MessageType::MigrationReply,
        MessageType::AddressChange => MessageType::MigrationCompleted,
        MessageType::Termination => MessageType::TerminationAck,
        MessageType::RegistrationRequest => MessageType::RegistrationReply,
        _ => MessageType::ConnectionUpdateAck,
    }
}

impl Endpoint {
    // ---- receiving ----

    pub(super) fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        payload: &[u8],
    ) {
        let frame = match Frame::parse(payload) {
            Ok(f) => f,
            Err(e) => {
                self.count_decode_error(&e);
                debug!(%remote, reason = e.reason(), "dropping control datagram: {e}");
                return;
            }
        };
        if frame.header().sender == self.node_id {
            self.counters.drop_unexpected_reply += 1;
            return;
        }
        if !frame.is_sealed() {
            self.on_handshake(now, local, remote, &frame);
            return;
        }
        let Some((msg, session)) = self.open_sealed(now, &frame, remote, payload.len()) else {
            return;
        };
        let h = msg.header;
        trace!(%remote, kind = %h.msg_type, seq = h.sequence, "control message");
        use MessageType::*;
        if matches!(
            h.msg_type,
            ConnectionUpdate | MigrationRequest | AddressChange | ConnectionUpdateRequest
        ) && !self.admit_update(now, &h, session)
        {
            self.counters.drop_rate_limited += 1;
            return;
        }
        match h.msg_type {
            ConnectionUpdate | MigrationRequest | AddressChange => {
                self.on_update(now, local, remote, &msg, session)
            }
            ConnectionUpdateAck | MigrationReply | MigrationCompleted => self.on_update_ack(now, &msg),
            ConnectionUpdateRequest => self.on_update_request(remote, &msg),
            Termination => self.on_termination(local, remote, &msg),
            TerminationAck => self.on_termination_ack(now, &msg),
            PathChallenge => self.on_path_challenge(now, local, remote, &msg),
            PathResponse => self.on_path_response(now, remote, &msg),
            // Registration is the handshake now; Subscribe, Publish and Notify are for
            // the rendezvous service.
            RegistrationRequest | RegistrationReply | Subscribe | Publish | Notify => {
                self.counters.drop_unsupported += 1;
                return;
            }
            HandshakeInit | HandshakeResponse | HandshakeFinish | CookieReply => {
                unreachable!("handshake messages are never sealed (Frame::parse refuses them)")
            }
        }
        self.counters.messages_accepted += 1;
    }

    /// The update rate limit counts updates, not datagrams. A datagram of the update
    /// applied last (same session, same sequence number) is a further part of that one
    /// (a move of 10,000 flows takes some 300 datagrams: the mover splits it to fit
    /// [`MAX_DATAGRAM_LEN`]) and passes without a token, up to what naming every flow
    /// shared with the peer takes, for each transmission the mover may make. Anything
    /// else, the first datagram of an update included, takes a token.
    fn admit_update(&mut self, now: Instant, h: &Header, session: Instant) -> bool {
        if matches!(
            h.msg_type,
            MessageType::ConnectionUpdate | MessageType::MigrationRequest | MessageType::AddressChange
        ) && let Some(p) = self.peers.get_mut(&h.sender)
            && p.last_update == Some((session, h.sequence))
        {
            let per_copy = p.flows.len().div_ceil(MIN_MIGRATIONS_PER_DATAGRAM) + 1;
            let cap = per_copy * self.config.max_update_attempts as usize;
            if p.update_datagrams < cap {
                p.update_datagrams += 1;
                return true;
            }
        }
        self.update_limiter.allow(h.sender, now)
    }

    fn count_decode_error(&mut self, e: &DecodeError) {
        if e.is_authentication_failure() {
            self.counters.drop_bad_auth += 1;
        } else {
            self.counters.drop_malformed += 1;
        }
    }

    /// Seed 000 ¶0062-¶0064 (Connection Update), seed 001 FIG. 4 (Migration Request),
    /// seed 003 (Address Change): the peer moved; update our current tuples and answer.
    fn on_update(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &Message,
        session: Instant,
    ) {
        let h = msg.header;
        let peer_id = h.sender;
        let stale = self.peers[&peer_id].update_is_stale(session, h.sequence);
        let selectors: Vec<(Option<Migration>, Selector)> = match h.msg_type {
            MessageType::AddressChange => {
                let (Some(old), Some(new)) = (msg.locator(LocatorRole::Old), msg.locator(LocatorRole::New))
                else {
                    return;
                };
                vec![(
                    None,
                    Selector {
                        protocols: ProtoFlags::ALL,
                        remote: SocketAddr::new(old.addr().ip(), 0),
                        local: SocketAddr::new(unspecified(old.addr().ip()), 0),
                        new_remote: SocketAddr::new(new.addr().ip(), 0),
                    },
                )]
            }
            _ => msg
                .migrations()
                .map(|m| (Some(*m), Selector::from_migration(m)))
                .collect(),
        };
        let outage = std::time::Duration::from_millis(u64::from(msg.outage_ms().unwrap_or(0)));
        let mut moved = 0usize;
        let mut statuses = Vec::with_capacity(selectors.len());
        let mut left = BTreeSet::new();
        let mut moved_to = None;
        let mut challenges = BTreeMap::new();
        for (_, sel) in &selectors {
            let status = if stale {
                self.counters.migrations_stale += 1;
                MigrationStatus::Stale
            } else {
                let (applied, status) =
                    self.apply_selector(now, peer_id, sel, outage, remote, &mut challenges);
                moved += applied;
                if applied > 0 {
                    moved_to.get_or_insert(sel.new_remote.ip());
                    if sel.remote.ip() != sel.new_remote.ip() {
                        left.insert(sel.remote.ip());
                    }
                }
                status
            };
            statuses.push(status);
        }
        if !stale {
            // Which addresses are the peer's (and so whose new flows are its flows)
            // changes only by proof: a handshake, or an echoed challenge. An update
            // can only give up an address, and only one its flows actually left.
            let still_used: BTreeSet<IpAddr> = self.peers[&peer_id]
                .flows
                .iter()
                .filter_map(|o| self.flows.get(o))
                .map(|f| f.current.remote.ip())
                .collect();
            let p = self.peers.get_mut(&peer_id).expect("sender is a peer");
            if p.last_update != Some((session, h.sequence)) {
                // A newer update: answers still owed to an older one are moot (the
                // mover drops answers to a superseded update).
                p.update_datagrams = 0;
                p.owed.clear();
            }
            p.last_update = Some((session, h.sequence));
            // Control goes to the update's source once that address has proven it
            // receives there (return routability); until then, to where it was.
            if p.is_validated(remote.ip()) {
                p.control = remote;
            }
            for a in left.difference(&still_used) {
                p.addrs.remove(a);
            }
            // The peer moved: our own outstanding requests went to its old address.
            // Send them again, now, to where it is (simultaneous moves, seed 000 ¶0078).
            // Not for a duplicate: each resend costs an attempt.
            if moved > 0 {
                for ex in [&mut p.update, &mut p.termination].into_iter().flatten() {
                    ex.next = now;
                }
            }
            if let Some(to) = moved_to {
                self.events.push_back(Event::PeerMoved {
                    peer: peer_id,
                    flows: moved,
                    to,
                });
            }
        }
        // Answer, also to a duplicate: the first answer may have been lost.
        let mut rh = self.header(reply_type(h.msg_type), h.sequence);
        let mut reply = Message::new(rh);
        if h.msg_type == MessageType::AddressChange {
            let all_ok = statuses.iter().all(|s| *s == MigrationStatus::Ok);
            rh.flags = if all_ok {
                ReplyCode::Accepted
            } else if stale {
                ReplyCode::Denied
            } else {
                ReplyCode::Unknown
            } as u8;
            reply.header = rh;
            for role in [LocatorRole::Old, LocatorRole::New] {
                if let Some(l) = msg.locator(role) {
                    reply = reply.with(Extension::Locator(*l));
                }
            }
        } else {
            for ((m, _), status) in selectors.iter().zip(statuses) {
                if let Some(m) = m {
                    reply = reply.with(Extension::Migration(m.with_status(status)));
                }
            }
        }
        self.send_or_owe(peer_id, local.ip(), remote, reply);
        // The challenges go after the answer, never before: the mover answers a
        // challenge at once, and its answer is our sign that it has released the
        // flows it held (it releases on our answer), so that the deferred nudges
        // (`DeferredNudge`) find its sender free. One per address, however many flows
        // went there.
        for (addr, port) in challenges {
            self.challenge_path(now, peer_id, addr, port);
        }
    }

    /// Applies one selector to a peer's flows: (flows changed, status to report).
    /// `outage`: how long the mover says its flows have been without a path; `from`:
    /// where the update came from. The peer's addresses to challenge once the answer
    /// has gone are added to `challenges` (with the port to send to).
    fn apply_selector(
        &mut self,
        now: Instant,
        peer: NodeId,
        sel: &Selector,
        outage: Duration,
        from: SocketAddr,
        challenges: &mut BTreeMap<IpAddr, u16>,
    ) -> (usize, MigrationStatus) {
        let targets: Vec<Tuple> = match sel.exact_key() {
            Some(key) => self.flows_by_wire_key(peer, &key),
            None => self.peers[&peer]
                .flows
                .iter()
                .filter(|o| self.flows.get(o).is_some_and(|f| sel.matches(&f.wire_key)))
                .copied()
                .collect(),
        };
        if targets.is_empty() {
            // Flows with the update's source that no peer has yet (the peer moved
            // back to where they began, before any session knew that address as
            // theirs): once the source echoes a challenge they are the peer's, and a
            // retransmission of the update finds them. Until then: not applied, not
            // refused.
            let unclaimed = self.flows.values().any(|f| {
                matches!(f.peer, FlowPeer::Probing | FlowPeer::NotRoam)
                    && f.current.remote.ip() == from.ip()
                    && sel.matches(&f.wire_key)
            });
            if unclaimed && !self.peers.get(&peer).is_some_and(|p| p.is_validated(from.ip())) {
                challenges.insert(from.ip(), from.port());
                return (0, MigrationStatus::Stale);
            }
            self.counters.migrations_unknown_flow += 1;
            return (0, MigrationStatus::UnknownFlow);
        }
        let mut changed = 0;
        let mut status = MigrationStatus::Ok;
        for o in targets {
            let Some(flow) = self.flows.get(&o) else { continue };
            let port = match sel.new_remote.port() {
                0 => flow.current.remote.port(),
                p => p,
            };
            let new_remote = SocketAddr::new(sel.new_remote.ip(), port);
            if new_remote.is_ipv4() != flow.original.remote.is_ipv4() {
                // roam translates addresses, not families (that would be NAT64).
                self.counters.migrations_refused += 1;
                status = MigrationStatus::Refused;
                continue;
            }
            let cand = Tuple {
                remote: new_remote,
                ..flow.current
            };
            if cand == flow.current {
                continue; // a duplicate: already applied
            }
            if self.current_taken(&cand, &o) {
                self.counters.migrations_refused += 1;
                status = MigrationStatus::Refused;
                continue;
            }
            let prev = flow.current;
            let unproven = !self
                .peers
                .get(&peer)
                .is_some_and(|p| p.is_validated(new_remote.ip()));
            self.set_current(&o, cand);
            if let Some(f) = self.flows.get_mut(&o) {
                f.moves += 1;
                // Return routability: until the new address echoes a challenge, the data
                // plane sends it at most a small budget; if it never does, the flow
                // goes back to `prev`.
                if unproven {
                    let back = f.validating.map(|(_, p)| p).unwrap_or(prev);
                    f.validating = Some((new_remote.ip(), back));
                } else {
                    f.validating = None;
                }
                // A TCP flow's nudge waits for the peer's answer to the challenge
                // below (`DeferredNudge`); a newer move replaces an older one's.
                f.nudge_deferred =
                    (o.protocol == Protocol::Tcp).then_some(DeferredNudge { outage, applied: now });
            }
            // Every new address of the peer's is challenged, proven before or not (RFC
            // 9000 §9: a peer's address change is validated every time). A proven one
            // keeps its standing: the challenge only tells us when the peer is there.
            let port = if from.ip() == new_remote.ip() {
                from.port()
            } else {
                self.peers
                    .get(&peer)
                    .map_or(self.config.control_port, |p| p.control.port())
            };
            challenges.insert(new_remote.ip(), port);
            self.sync_entry(&o);
            // Resending into an unproven path's budget would only fill it: the
            // resend waits for the echo (`on_path_response`).
            if o.protocol == Protocol::Tcp && !unproven {
                self.dataplane.push_back(DataPlaneCommand::Resend { original: o });
            }
            self.counters.migrations_applied += 1;
            changed += 1;
        }
        (changed, status)
    }

    /// The peer confirmed (or refused) our update.
    fn on_update_ack(&mut self, now: Instant, msg: &Message) {
        let h = msg.header;
        let peer_id = h.sender;
        let p = &self.peers[&peer_id];
        if p.update.as_ref().is_none_or(|ex| ex.seq != h.sequence) && p.completed_update == Some(h.sequence) {
            // The answer to a second copy of an update already answered (sent again
            // when the routes changed, or crossed with its retransmission).
            self.counters.duplicate_replies += 1;
            return;
        }
        let Some(ex) = p.update.as_ref() else {
            self.counters.drop_unexpected_reply += 1;
            return;
        };
        if ex.seq != h.sequence {
            // An answer to an update a newer one superseded.
            self.counters.drop_unexpected_reply += 1;
            return;
        }
        let mut confirmed = Vec::new();
        let mut refused = Vec::new();
        if h.msg_type == MessageType::MigrationCompleted {
            let (Some(old), Some(new)) = (msg.locator(LocatorRole::Old), msg.locator(LocatorRole::New))
            else {
                return;
            };
            let ok = ReplyCode::from_u8(h.flags) == Some(ReplyCode::Accepted);
            for o in &ex.flows {
                let Some(f) = self.flows.get(o) else { continue };
                if f.wire_key.local.ip() == old.addr().ip() && f.current.local.ip() == new.addr().ip() {
                    if ok { confirmed.push(*o) } else { refused.push(*o) }
                }
            }
        } else {
            for m in msg.migrations() {
                // Our migrations name one flow each (`migration_of`): found by its key,
                // not by a scan of every pending flow (an answer to a move of 10,000
                // flows is some 300 datagrams).
                let named = Selector {
                    protocols: m.protocols(),
                    remote: m.peer(),
                    local: m.original(),
                    new_remote: m.new_endpoint(),
                };
                let candidates: Vec<Tuple> = match named.exact_key() {
                    Some(key) => self
                        .flows_by_wire_key(peer_id, &key)
                        .into_iter()
                        .filter(|o| ex.flows.contains(o))
                        .collect(),
                    None => ex.flows.iter().copied().collect(),
                };
                for o in &candidates {
                    let Some(f) = self.flows.get(o) else { continue };
                    if f.wire_key.local == m.original()
                        && f.wire_key.remote == m.peer()
                        && proto_flag(f.original.protocol) == m.protocols()
                        // An ack naming an address we have since left is for an older move.
                        && f.current.local == m.new_endpoint()
                    {
                        match m.status() {
                            MigrationStatus::Ok => confirmed.push(*o),
                            MigrationStatus::Stale => {}
                            MigrationStatus::UnknownFlow | MigrationStatus::Refused => refused.push(*o),
                        }
                    }
                }
            }
        }
        for o in &confirmed {
            self.confirm_flow(now, o);
        }
        if !refused.is_empty() {
            self.fail_flows(peer_id, refused, "refused by the peer");
        }
        self.finish_update_if_done(now, peer_id);
    }

    fn confirm_flow(&mut self, now: Instant, o: &Tuple) {
        let Some(f) = self.flows.get_mut(o) else { return };
        let since = f.moving_since.take();
        let was_moving = since.is_some();
        if was_moving {
            f.moves += 1;
            self.counters.flows_moved += 1;
        }
        if let FlowPeer::Peer(p) = f.peer
            && let Some(ex) = self.peers.get_mut(&p).and_then(|p| p.update.as_mut())
        {
            ex.flows.remove(o);
        }
        self.sync_entry(o);
        if let Some(t) = since {
            self.defer_own_nudge(now, o, now - t);
        }
    }

    /// Gives up on moving these flows with `peer`. Their translation is released
    /// (not held any more): the peer may have applied the update and lost only its
    /// answers, and a held flow would never send again.
    fn fail_flows(&mut self, peer: NodeId, flows: Vec<Tuple>, reason: &'static str) {
        for o in &flows {
            if let Some(f) = self.flows.get_mut(o) {
                f.moving_since = None;
            }
            if let Some(ex) = self.peers.get_mut(&peer).and_then(|p| p.update.as_mut())
                && ex.flows.remove(o)
            {
                ex.failed += 1;
            }
            self.sync_entry(o);
        }
        self.counters.flows_move_failed += flows.len() as u64;
        self.events.push_back(Event::MoveFailed { peer, flows, reason });
    }

    pub(super) fn finish_update_if_done(&mut self, now: Instant, peer_id: NodeId) {
        let Some(p) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(ex) = p.update.as_ref() else { return };
        if !ex.flows.is_empty() {
            return;
        }
        let elapsed = now - ex.started;
        let confirmed = ex.total - ex.failed;
        // Karn: an answer to one of several copies is no round-trip sample.
        let sample = ex.attempts == 1 && ex.route_resends == 0 && confirmed > 0;
        let ev = Event::MoveCompleted {
            peer: peer_id,
            flows: confirmed,
            elapsed,
            retransmits: ex.attempts - 1,
        };
        p.completed_update = Some(ex.seq);
        p.update = None;
        if sample {
            p.rtt_sample(elapsed);
        }
        // All refused: MoveFailed said so already.
        if confirmed > 0 {
            p.last_move = Some((now, elapsed));
            self.events.push_back(ev);
        }
    }

    /// Seed 000 ¶0091: a peer asks for our current attachment point.
    fn on_update_request(&mut self, remote: SocketAddr, msg: &Message) {
        let peer_id = msg.header.sender;
        let named: Vec<Selector> = msg.migrations().map(Selector::from_migration).collect();
        let p = self.peers.get_mut(&peer_id).expect("sender is a peer");
        // As for an update: control moves only to an address that has proven itself.
        if p.is_validated(remote.ip()) {
            p.control = remote;
        }
        let flows: Vec<Tuple> = p
            .flows
            .iter()
            .filter(|o| {
                named.is_empty()
                    || self
                        .flows
                        .get(o)
                        .is_some_and(|f| named.iter().any(|s| s.matches(&f.wire_key)))
            })
            .copied()
            .collect();
        p.refresh.extend(flows);
        p.update_needed = true;
        self.counters.update_requests_answered += 1;
    }

    fn on_termination(&mut self, local: SocketAddr, remote: SocketAddr, msg: &Message) {
        let peer_id = msg.header.sender;
        let sels: Vec<Selector> = msg.migrations().map(Selector::from_migration).collect();
        let targets: Vec<Tuple> = self.peers[&peer_id]
            .flows
            .iter()
            .filter(|o| {
                sels.is_empty()
                    || self
                        .flows
                        .get(o)
                        .is_some_and(|f| sels.iter().any(|s| s.matches(&f.wire_key)))
            })
            .copied()
            .collect();
        let mut n = 0;
        for o in targets {
            let Some(f) = self.flows.get(&o) else { continue };
            // The peer dropped its translation: it uses the tuple it knew the flow by
            // (our wire key) again. Not if that tuple is another flow's now, or if it
            // holds an address of ours that is gone (nothing could leave from there).
            let back = f.wire_key;
            if (f.current == back && f.moving_since.is_none())
                || self.current_taken(&back, &o)
                || !self.addresses.contains_key(&back.local.ip())
            {
                continue;
            }
            if let Some(f) = self.flows.get_mut(&o) {
                f.moving_since = None;
                f.validating = None;
                f.nudge_deferred = None;
            }
            self.set_current(&o, back);
            self.sync_entry(&o);
            n += 1;
        }
        self.counters.terminations_applied += n as u64;
        if n > 0 {
            self.events.push_back(Event::FlowsTerminated {
                peer: peer_id,
                flows: n,
            });
        }
        let mut reply = Message::new(self.header(MessageType::TerminationAck, msg.header.sequence));
        for m in msg.migrations() {
            reply = reply.with(Extension::Migration(*m));
        }
        self.send_sealed(peer_id, local.ip(), remote, reply);
    }

    fn on_termination_ack(&mut self, now: Instant, msg: &Message) {
        let p = self.peers.get_mut(&msg.header.sender).expect("sender is a peer");
        match p.termination.take_if(|ex| ex.seq == msg.header.sequence) {
            Some(ex) => {
                p.completed_termination = Some(ex.seq);
                // Karn's rule: only an exchange sent once is a round-trip sample.
                if ex.attempts == 1 && ex.route_resends == 0 {
                    p.rtt_sample(now - ex.started);
                }
            }
            None if p.completed_termination == Some(msg.header.sequence) => {
                self.counters.duplicate_replies += 1
            }
            None => self.counters.drop_unexpected_reply += 1,
        }
    }

    // ---- sending ----

    fn header(&self, t: MessageType, seq: u16) -> Header {
        Header::new(t, self.node_id, seq, 0)
    }

    /// The address to send to `dst` from: the newest of its family.
    pub(super) fn source_for(&self, dst: IpAddr) -> Option<IpAddr> {
        self.newest_address(dst.is_ipv4())
    }

    /// Builds updates for every peer whose flows moved (one exchange per peer; a newer
    /// move supersedes an unanswered one, seed 000 ¶0059).
    pub(super) fn flush_updates(&mut self, now: Instant) {
        let due: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.update_needed)
            .map(|p| p.id)
            .collect();
        for id in due {
            let p = &self.peers[&id];
            let mut flows: BTreeSet<Tuple> = p
                .flows
                .iter()
                // An orphaned flow has nowhere to move to yet.
                .filter(|o| {
                    self.flows
                        .get(o)
                        .is_some_and(|f| f.moving_since.is_some() && !f.orphaned)
                })
                .copied()
                .collect();
            flows.extend(p.refresh.iter().copied());
            let rto = self.rto_for(p.srtt);
            let to = flows
                .iter()
                .next()
                .and_then(|o| self.flows.get(o))
                .map(|f| f.current.local.ip());
            let p = self.peers.get_mut(&id).expect("due peer exists");
            p.update_needed = false;
            p.refresh.clear();
            if flows.is_empty() {
                continue;
            }
            let seq = p.take_update_seq();
            let n = flows.len();
            p.update = Some(Exchange::new(seq, flows, now, rto));
            if let Some(to) = to {
                self.events.push_back(Event::MoveStarted {
                    peer: id,
                    flows: n,
                    to,
                    seq,
                });
            }
            self.transmit_update(now, id);
        }
    }

    /// Sends (or resends, with fresh replay IDs) the unacknowledged part of a peer's
    /// update, split into datagrams of at most [`MAX_DATAGRAM_LEN`] bytes.
    fn transmit_update(&mut self, now: Instant, id: NodeId) {
        let Some(p) = self.peers.get(&id) else { return };
        let Some(ex) = &p.update else { return };
        let dst = p.control;
        let seq = ex.seq;
        let Some(src) = self.source_for(dst.ip()) else {
            return; // no address yet: the timer will try again
        };
        let flows: Vec<&super::Flow> = ex.flows.iter().filter_map(|o| self.flows.get(o)).collect();
        let outage = flows
            .iter()
            .filter_map(|f| f.moving_since)
            .min()
            .map(|t| now - t)
            .unwrap_or_default();
        let mut messages = Vec::new();
        let mut migrations = Vec::new();
        if self.config.move_message == MoveMessage::AddressChange {
            // Seed 003: one Address Change per (original address, new address), for the
            // flows that kept their port; flows whose port changed need a migration.
            let mut pairs = BTreeSet::new();
            for f in &flows {
                if f.current.local.port() == f.wire_key.local.port() {
                    pairs.insert((f.wire_key.local.ip(), f.current.local.ip()));
                } else {
                    migrations.push(migration_of(f));
                }
            }
            for (old, new) in pairs {
                messages.push(
                    Message::new(self.header(MessageType::AddressChange, seq))
                        .with(Extension::Locator(Locator::new(
                            LocatorRole::Old,
                            SocketAddr::new(old, 0),
                        )))
                        .with(Extension::Locator(Locator::new(
                            LocatorRole::New,
                            SocketAddr::new(new, 0),
                        ))),
                );
            }
        } else {
            migrations.extend(flows.iter().map(|f| migration_of(f)));
        }
        let kind = match self.config.move_message {
            MoveMessage::MigrationRequest => MessageType::MigrationRequest,
            _ => MessageType::ConnectionUpdate,
        };
        let mut current = Message::new(self.header(kind, seq));
        for m in migrations {
            let candidate = current.clone().with(Extension::Migration(m));
            if candidate.encoded_len() > MAX_DATAGRAM_LEN && !current.extensions.is_empty() {
                messages.push(std::mem::replace(
                    &mut current,
                    Message::new(self.header(kind, seq)).with(Extension::Migration(m)),
                ));
            } else {
                current = candidate;
            }
        }
        if !current.extensions.is_empty() {
            messages.push(current);
        }
        let outage_ms = u32::try_from(outage.as_millis()).unwrap_or(u32::MAX);
        for mut m in messages {
            m.extensions.push(Extension::Opaque(Opaque::outage(outage_ms)));
            self.send_sealed(id, src, dst, m);
        }
    }

    // ---- timers ----

    /// A host that did not answer is tried again by the next new flow to it.
    pub(super) fn probe_timeouts(&mut self, now: Instant) {
        self.probes
            .retain(|_, p| !matches!(p, Probe::NotCapable { until } if *until <= now));
    }

    pub(super) fn update_timeouts(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let max = self.config.max_update_attempts;
            let max_rto = self.config.max_rto;
            let p = self.peers.get_mut(&id).expect("listed");
            if let Some(ex) = p.update.as_mut().filter(|e| e.next <= now) {
                if ex.attempts >= max {
                    let flows: Vec<Tuple> = ex.flows.iter().copied().collect();
                    self.fail_flows(id, flows, "no answer from the peer");
                    self.peers.get_mut(&id).expect("listed").update = None;
                } else {
                    ex.back_off(now, max_rto);
                    self.counters.retransmits += 1;
                    self.transmit_update(now, id);
                }
            }
            let p = self.peers.get_mut(&id).expect("listed");
            if let Some(ex) = p.termination.as_mut().filter(|e| e.next <= now) {
                if ex.attempts >= self.config.max_handshake_attempts {
                    p.termination = None;
                } else {
                    ex.back_off(now, max_rto);
                    self.counters.retransmits += 1;
                    self.transmit_termination(id);
                }
            }
        }
    }

    /// The routes changed: what is outstanding may have left by one that is gone.
    /// Each update, termination and path challenge still unanswered goes again now
    /// (fresh replay identifiers; no back-off: the copy says nothing about the path).
    pub(super) fn routes_changed(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let p = self.peers.get_mut(&id).expect("listed");
            if p.update.as_mut().is_some_and(|ex| ex.route_resend()) {
                self.counters.route_resends += 1;
                self.transmit_update(now, id);
            }
            let p = self.peers.get_mut(&id).expect("listed");
            if p.termination.as_mut().is_some_and(|ex| ex.route_resend()) {
                self.counters.route_resends += 1;
                self.transmit_termination(id);
            }
            let p = self.peers.get_mut(&id).expect("listed");
            let challenged: Vec<IpAddr> = p
                .paths
                .iter_mut()
                .filter_map(|(a, path)| {
                    path.challenge
                        .as_mut()
                        .is_some_and(|c| c.exchange.route_resend())
                        .then_some(*a)
                })
                .collect();
            for addr in challenged {
                self.counters.route_resends += 1;
                self.send_challenge(id, addr);
            }
        }
    }

    /// Seed 003: a reliable termination, so the peer drops its translation for flows
    /// that ended here.
    /// `wire_keys` name the flows as the peer knows them.
    pub(super) fn terminate(&mut self, now: Instant, peer: NodeId, wire_keys: Vec<Tuple>) {
        let rto = {
            let Some(p) = self.peers.get(&peer) else { return };
            self.rto_for(p.srtt)
        };
        let p = self.peers.get_mut(&peer).expect("checked");
        let seq = p.take_seq();
        let mut set: BTreeSet<Tuple> = p.termination.take().map(|e| e.flows).unwrap_or_default();
        set.extend(wire_keys);
        p.termination = Some(Exchange::new(seq, set, now, rto));
        self.transmit_termination(peer);
    }

    fn transmit_termination(&mut self, id: NodeId) {
        if let Some(p) = self.peers.get_mut(&id)
            && p.termination.as_ref().is_some_and(|ex| ex.flows.is_empty())
        {
            // An empty Termination would mean "every flow with the sender".
            p.termination = None;
        }
        let Some(p) = self.peers.get(&id) else { return };
        let Some(ex) = &p.termination else { return };
        let dst = p.control;
        let Some(src) = self.source_for(dst.ip()) else {
            return;
        };
        let mut msg = Message::new(self.header(MessageType::Termination, ex.seq));
        // A termination's exchange holds wire keys: the flows are gone locally.
        for w in &ex.flows {
            if let Some(m) = Migration::new(proto_flag(w.protocol), w.local, w.local, w.remote) {
                msg = msg.with(Extension::Migration(m));
            }
        }
        self.send_sealed(id, src, dst, msg);
    }

    /// Sends a Connection Update Request (seed 000 ¶0059) to `peer` at `at`.
    pub(super) fn request_update(&mut self, _now: Instant, peer: NodeId, at: SocketAddr) {
        let Some(src) = self.source_for(at.ip()) else {
            return;
        };
        if !self.peers.contains_key(&peer) {
            return;
        }
        let seq = self.peers.get_mut(&peer).expect("checked").take_seq();
        let msg = Message::new(self.header(MessageType::ConnectionUpdateRequest, seq));
        self.send_sealed(peer, src, at, msg);
    }
}

/// The migration extension that tells the peer where one of our flows is now.
fn migration_of(f: &super::Flow) -> Migration {
    Migration::new(
        proto_flag(f.original.protocol),
        f.wire_key.local,
        f.current.local,
        f.wire_key.remote,
    )
    .expect("a flow's endpoints share one family")
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
