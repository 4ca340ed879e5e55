//! The endpoint's security: handshakes (first contact, rekeys, restarts), sessions,
//! sealing and opening, cookies and rate limits, and return routability. See
//! docs/SECURITY.md for the threat model and docs/PROTOCOL.md for the messages.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use roam_wire::{
    Capabilities, Extension, Frame, Header, Locator, LocatorRole, Message, MessageType, NodeId,
    decode_extensions, encode_extensions,
};
use tracing::debug;

use super::flow::FlowPeer;
use super::peer::{Challenge, Exchange, Initiation, Owed, Peer, Probe, Response};
use super::{DataPlaneCommand, Endpoint, Event, Transmit};
use crate::security::handshake::Keys;
use crate::security::session::OpenError;
use crate::security::{Initiator, PublicKey, Responder, Session, TrustDecision};
use crate::time::Instant;
use crate::translate::{Protocol, Tuple};

/// Budget kept for path challenges to an unproven address (a challenge is under 100
/// bytes sealed: this is the first copy and every retransmission).
const CHALLENGE_RESERVE: u64 = 1024;

/// Why a sealed message was not sent.
enum NotSent {
    /// No session with the peer (or sealing failed).
    NoSession,
    /// The unproven address's budget has no room: the message, handed back.
    OverBudget(Message),
}

/// Answers held for unproven addresses of one peer, at most (a move of 100,000 IPv4
/// flows is some 2,500 answers; beyond this the mover's retransmission asks again).
const MAX_OWED: usize = 4096;

/// How long an answered handshake waits for its Finish: the initiator retransmits its
/// Init (and so gets the Response again) well within this.
pub(super) const RESPONDER_WAIT: Duration = Duration::from_secs(3);

/// A handshake message's Replay Protect ID (no nonce: handshakes are not sealed)
/// carries timestamps, as TCP's do (RFC 7323 §4.1): the upper half the sender's clock
/// (microseconds, modulo 2^32), the lower half the clock value of the message it
/// answers. The echo makes every handshake a round-trip sample, retransmitted or not.
fn clocks(now: Instant, echo: u32) -> u64 {
    (u64::from(stamp(now)) << 32) | u64::from(echo)
}

fn stamp(now: Instant) -> u32 {
    // Zero means "nothing to echo".
    (now.as_micros() as u32).max(1)
}

/// The sender's clock in a handshake message's Replay Protect ID.
fn their_stamp(replay_id: u64) -> u32 {
    (replay_id >> 32) as u32
}

/// The round trip since we sent the message whose clock `replay_id` echoes.
fn echoed_rtt(now: Instant, replay_id: u64) -> Option<Duration> {
    let echo = replay_id as u32;
    (echo != 0).then(|| Duration::from_micros(u64::from(stamp(now).wrapping_sub(echo))))
}

impl Endpoint {
    /// A fresh, unused, non-zero session index.
    fn fresh_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if i != 0
                && !self.sessions.contains_key(&i)
                && !self.initiating.contains_key(&i)
                && !self.responding.contains_key(&i)
            {
                return i;
            }
        }
    }

    fn handshake_payload(&self, own: IpAddr) -> Vec<u8> {
        encode_extensions(&[
            Extension::Locator(Locator::new(
                LocatorRole::Own,
                SocketAddr::new(own, self.config.control_port),
            )),
            Extension::Capabilities(Capabilities {
                flags: Capabilities::MOBILE
                    | if self.config.holds_packets {
                        Capabilities::HOLDS_PACKETS
                    } else {
                        0
                    },
            }),
        ])
        .expect("two small extensions encode")
    }

    fn transmit_clear(&mut self, src_ip: IpAddr, dst: SocketAddr, payload: Vec<u8>) {
        self.counters.messages_sent += 1;
        self.transmits.push_back(Transmit {
            src: SocketAddr::new(src_ip, self.config.control_port),
            dst,
            payload,
        });
    }

    // ---- starting handshakes ----

    /// Starts a handshake with whoever is at `to`, from our address `from`. Returns our
    /// index, or `None` if the handshake could not start.
    pub(super) fn start_handshake(
        &mut self,
        now: Instant,
        from: IpAddr,
        to: SocketAddr,
        rekey_of: Option<NodeId>,
    ) -> Option<u32> {
        let (state, noise) = match Initiator::start(&self.config.identity, self.rng.as_mut()) {
            Ok(x) => x,
            Err(e) => {
                debug!("cannot start a handshake: {e}");
                return None;
            }
        };
        let index = self.fresh_index();
        let sequence = (self.rng.next_u32() & 0xffff) as u16;
        let rto = self.config.initial_rto;
        self.initiating.insert(
            index,
            Initiation {
                state: Some(state),
                sequence,
                noise,
                cookie: None,
                from,
                to,
                rekey_of,
                exchange: Exchange::new(sequence, BTreeSet::new(), now, rto),
            },
        );
        self.send_init(now, index);
        Some(index)
    }

    fn send_init(&mut self, now: Instant, index: u32) {
        let Some(i) = self.initiating.get(&index) else {
            return;
        };
        let mut m = Message::new(Header::new(
            MessageType::HandshakeInit,
            self.node_id,
            i.sequence,
            clocks(now, 0),
        ))
        .with(Extension::SenderIndex(index))
        .with(Extension::Noise(i.noise.clone()));
        if let Some(c) = i.cookie {
            m = m.with(Extension::Cookie(c));
        }
        let (from, to) = (i.from, i.to);
        match m.encode_clear() {
            Ok(bytes) => self.transmit_clear(from, to, bytes),
            Err(e) => debug_assert!(false, "cannot encode a handshake init: {e}"),
        }
    }

    // ---- receiving handshake messages (in clear) ----

    pub(super) fn on_handshake(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        frame: &Frame<'_>,
    ) {
        let t = frame.header().msg_type;
        // Messages that make this host work (a Diffie-Hellman, state) are rate limited
        // per source; answers to our own handshakes are matched against state we hold.
        if matches!(t, MessageType::HandshakeInit | MessageType::HandshakeFinish)
            && !self.handshake_limiter.allow(remote.ip(), now)
        {
            self.counters.drop_rate_limited += 1;
            return;
        }
        let msg = match frame.decode_clear() {
            Ok(m) => m,
            Err(e) => {
                self.counters.drop_malformed += 1;
                debug!(%remote, "dropping handshake message: {e}");
                return;
            }
        };
        match t {
            MessageType::HandshakeInit => self.on_init(now, local, remote, &msg),
            MessageType::HandshakeResponse => self.on_response(now, remote, &msg),
            MessageType::HandshakeFinish => self.on_finish(now, remote, &msg),
            MessageType::CookieReply => self.on_cookie(now, &msg),
            _ => unreachable!("frames in clear are handshake messages"),
        }
    }

    fn on_init(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, msg: &Message) {
        let (Some(their_index), Some(noise)) = (msg.sender_index(), msg.noise()) else {
            return;
        };
        // A retransmitted Init: answer again with the same Response, no new work.
        if let Some(r) = self
            .responding
            .values()
            .find(|r| r.remote == remote && r.their_index == their_index)
        {
            let mut m = r.message.clone();
            m.header.replay_id = clocks(now, their_stamp(msg.header.replay_id));
            let src = r.local;
            self.counters.handshake_duplicates += 1;
            if let Ok(bytes) = m.encode_clear() {
                self.transmit_clear(src, remote, bytes);
            }
            return;
        }
        // Both ends started a handshake at once (each saw the flow): one is enough, or
        // each would end up preferring a different session. The smaller identifier's
        // handshake goes on; its owner ignores the other's Init, which the other
        // answers. (The identifier in an Init is not authenticated yet: a forged one can
        // only make us ignore an Init while our own handshake with that address runs.)
        if self.node_id < msg.header.sender {
            let ours: Vec<u32> = self
                .initiating
                .iter()
                .filter(|(_, i)| i.to.ip() == remote.ip())
                .map(|(k, _)| *k)
                .collect();
            if !ours.is_empty() {
                // Their Init arriving means ours may have been lost (or crossed it):
                // send ours again now rather than wait out its timer. A crossed one
                // comes in twice, and the second gets the same Response again.
                for index in ours {
                    self.counters.retransmits += 1;
                    self.send_init(now, index);
                }
                return;
            }
        }
        // Under load, demand a cookie before any Diffie-Hellman (WireGuard §5.4.7).
        if now - self.load.0 >= Duration::from_secs(1) {
            self.load = (now, 0);
        }
        self.load.1 += 1;
        if self.load.1 > self.config.cookie_threshold {
            match msg.cookie() {
                None => {
                    let cookie = self.cookies.make(self.rng.as_mut(), now, remote, their_index);
                    let reply = Message::new(Header::new(
                        MessageType::CookieReply,
                        self.node_id,
                        msg.header.sequence,
                        0,
                    ))
                    .with(Extension::ReceiverIndex(their_index))
                    .with(Extension::Cookie(cookie));
                    if let Ok(bytes) = reply.encode_clear() {
                        self.counters.cookies_sent += 1;
                        self.transmit_clear(local.ip(), remote, bytes);
                    }
                    return;
                }
                Some(c) if !self.cookies.check(remote, their_index, &c) => {
                    self.counters.drop_bad_cookie += 1;
                    return;
                }
                Some(_) => {}
            }
        }
        let mut state = match Responder::read_init(&self.config.identity, self.rng.as_mut(), noise) {
            Ok(s) => s,
            Err(_) => {
                self.counters.drop_bad_handshake += 1;
                return;
            }
        };
        let payload = self.handshake_payload(local.ip());
        let Ok(noise2) = state.respond(&payload) else {
            self.counters.drop_bad_handshake += 1;
            return;
        };
        let index = self.fresh_index();
        let echo = their_stamp(msg.header.replay_id);
        let reply = Message::new(Header::new(
            MessageType::HandshakeResponse,
            self.node_id,
            msg.header.sequence,
            clocks(now, echo),
        ))
        .with(Extension::SenderIndex(index))
        .with(Extension::ReceiverIndex(their_index))
        .with(Extension::Noise(noise2));
        let Ok(bytes) = reply.encode_clear() else { return };
        // Bounded: the oldest unanswered handshake makes room.
        while self.responding.len() >= self.config.max_pending_handshakes {
            let oldest = self
                .responding
                .iter()
                .min_by_key(|(_, r)| r.created)
                .map(|(i, _)| *i);
            if let Some(i) = oldest {
                self.responding.remove(&i);
            }
        }
        self.responding.insert(
            index,
            Response {
                state,
                remote,
                local: local.ip(),
                their_index,
                message: reply,
                created: now,
            },
        );
        self.counters.handshakes_answered += 1;
        self.transmit_clear(local.ip(), remote, bytes);
    }

    fn on_response(&mut self, now: Instant, remote: SocketAddr, msg: &Message) {
        let (Some(ours), Some(theirs), Some(noise)) = (msg.receiver_index(), msg.sender_index(), msg.noise())
        else {
            return;
        };
        let Some(init) = self.initiating.get_mut(&ours) else {
            if self.superseded.contains(&ours) {
                self.counters.handshake_duplicates += 1;
            } else {
                self.counters.drop_bad_handshake += 1;
            }
            return;
        };
        let Some(state) = init.state.as_mut() else { return };
        // A forged or corrupted response fails here and leaves our handshake as it was.
        let Ok((key, payload)) = state.read_response(noise) else {
            self.counters.drop_bad_handshake += 1;
            return;
        };
        if msg.header.sender != key.node_id() {
            self.counters.drop_bad_handshake += 1;
            return;
        }
        let Some(init) = self.initiating.remove(&ours) else {
            return;
        };
        self.remember_ended(ours);
        // From here on the handshake is over, one way or the other: a failure must
        // settle the probe, or its flows would wait for a peer forever.
        let failed = |this: &mut Self, bad: bool| {
            if bad {
                this.counters.drop_bad_handshake += 1;
            }
            this.counters.handshakes_failed += 1;
            if init.rekey_of.is_none() {
                this.probe_refused(now, init.to.ip());
            }
        };
        if !self.trusted(&key, remote) {
            failed(self, false);
            return;
        }
        let (Ok(exts), Some(state)) = (decode_extensions(&payload), init.state) else {
            failed(self, true);
            return;
        };
        let my_payload = self.handshake_payload(init.from);
        let Ok((noise3, keys)) = state.finish(&my_payload) else {
            failed(self, true);
            return;
        };
        let mut fin = Message::new(Header::new(
            MessageType::HandshakeFinish,
            self.node_id,
            init.sequence,
            clocks(now, their_stamp(msg.header.replay_id)),
        ))
        .with(Extension::ReceiverIndex(theirs))
        .with(Extension::Noise(noise3));
        let Ok(first) = fin.encode_clear() else { return };
        self.transmit_clear(init.from, remote, first);
        // The copies that go with later messages (below) echo nothing: one that arrives
        // a second after the Response would make the responder take a second for the
        // round trip (and its timers three times that).
        fin.header.replay_id = clocks(now, 0);
        let Ok(fin) = fin.encode_clear() else { return };
        let rtt = echoed_rtt(now, msg.header.replay_id);
        let id = key.node_id();
        // The Response answers our Init: whoever has the key received at `init.to`.
        self.establish(now, key, ours, theirs, keys, init.to, &exts, rtt, true);
        if let Some(p) = self.peers.get_mut(&id) {
            p.unconfirmed_finish = Some(fin);
        }
    }

    fn on_finish(&mut self, now: Instant, remote: SocketAddr, msg: &Message) {
        let (Some(ours), Some(noise)) = (msg.receiver_index(), msg.noise()) else {
            return;
        };
        let Some(resp) = self.responding.remove(&ours) else {
            // A copy of the Finish of a session we already have (the initiator sends
            // one with each message until it hears from us under the session).
            if self.sessions.contains_key(&ours) {
                self.counters.handshake_duplicates += 1;
            } else {
                self.counters.drop_bad_handshake += 1;
            }
            return;
        };
        let (local, answered) = (resp.local, resp.remote.ip());
        let Ok((key, payload, keys)) = resp.state.finish(noise) else {
            self.counters.drop_bad_handshake += 1;
            self.settle_answered(now, local, answered);
            return;
        };
        if msg.header.sender != key.node_id() {
            self.counters.drop_bad_handshake += 1;
            self.settle_answered(now, local, answered);
            return;
        }
        if !self.trusted(&key, remote) {
            // Not a peer of ours: its flows are left alone, as a host without roam's.
            if matches!(self.probes.get(&answered), Some(Probe::Pending))
                && !self.initiating.values().any(|i| i.to.ip() == answered)
            {
                self.probe_refused(now, answered);
            }
            return;
        }
        let Ok(exts) = decode_extensions(&payload) else {
            self.counters.drop_bad_handshake += 1;
            self.settle_answered(now, local, answered);
            return;
        };
        let rtt = echoed_rtt(now, msg.header.replay_id);
        // The Finish answers our Response, which went to `resp.remote`: that is where
        // the peer proved it receives, even if the Finish comes from elsewhere (the
        // peer moved since, and sends a copy of it with its update).
        self.establish(
            now,
            key,
            ours,
            resp.their_index,
            keys,
            resp.remote,
            &exts,
            rtt,
            false,
        );
        if remote.ip() != resp.remote.ip()
            && let Some(p) = self.peers.get_mut(&msg.header.sender)
        {
            p.path(remote.ip());
        }
    }

    fn on_cookie(&mut self, now: Instant, msg: &Message) {
        let (Some(ours), Some(cookie)) = (msg.receiver_index(), msg.cookie()) else {
            return;
        };
        // Only a reply to an Init of ours counts: an off-path attacker would have to
        // guess our 32-bit index.
        let Some(init) = self.initiating.get_mut(&ours) else {
            self.counters.drop_bad_handshake += 1;
            return;
        };
        init.cookie = Some(cookie);
        self.counters.retransmits += 1;
        self.send_init(now, ours);
    }

    /// The trust policy's verdict on a key a handshake presented (counted and told).
    fn trusted(&mut self, key: &PublicKey, from: SocketAddr) -> bool {
        // Two keys with one 48-bit identifier (a key ground to collide with a peer's)
        // must never share a peer record.
        let id = key.node_id();
        if self.peers.get(&id).is_some_and(|p| p.public_key != *key) {
            self.counters.drop_untrusted_key += 1;
            self.events.push_back(Event::KeyRejected { key: *key, from });
            return false;
        }
        match self.config.trust.decide(key) {
            TrustDecision::Trusted => true,
            TrustDecision::Learned => {
                self.events.push_back(Event::KeyLearned { key: *key, peer: id });
                true
            }
            TrustDecision::Rejected => {
                self.counters.drop_untrusted_key += 1;
                self.events.push_back(Event::KeyRejected { key: *key, from });
                false
            }
        }
    }

    /// A first handshake to `addr` failed or was refused: whoever is there is not a
    /// roam peer of ours (seed 000 FIG. 21), for a while.
    pub(super) fn probe_refused(&mut self, now: Instant, addr: IpAddr) {
        self.probes.insert(
            addr,
            Probe::NotCapable {
                until: now + self.config.not_capable_ttl,
            },
        );
        let mut n = 0;
        let stranded: Vec<Tuple> = self
            .flows
            .values()
            .filter(|f| f.peer == FlowPeer::Probing && f.current.remote.ip() == addr)
            .map(|f| f.original)
            .collect();
        for o in stranded {
            if let Some(f) = self.flows.get_mut(&o) {
                f.peer = FlowPeer::NotRoam;
                // Flows that moved while waiting can no longer be held.
                f.moving_since = None;
                f.orphaned = false;
                n += 1;
            }
            self.sync_entry(&o);
        }
        self.counters.flows_without_peer += n;
        self.events.push_back(Event::PeerNotCapable { addr });
    }

    /// A handshake completed: the session is in, and the peer is (again) registered.
    /// `remote`: where the handshake proved the peer receives.
    #[allow(clippy::too_many_arguments)]
    fn establish(
        &mut self,
        now: Instant,
        key: PublicKey,
        local_index: u32,
        remote_index: u32,
        keys: Keys,
        remote: SocketAddr,
        exts: &[Extension],
        rtt: Option<Duration>,
        as_initiator: bool,
    ) {
        let id = key.node_id();
        self.sessions.insert(
            local_index,
            Session::new(id, local_index, remote_index, keys.send, keys.recv, now),
        );
        self.counters.handshakes_completed += 1;
        self.probes.remove(&remote.ip());
        // Our own handshakes with this peer are moot now.
        let moot: Vec<u32> = self
            .initiating
            .iter()
            .filter(|(_, i)| i.to.ip() == remote.ip() || i.rekey_of == Some(id))
            .map(|(k, _)| *k)
            .collect();
        for k in moot {
            self.initiating.remove(&k);
            if self.superseded.len() >= 64 {
                self.superseded.pop_front();
            }
            self.superseded.push_back(k);
        }
        let first_seq = (self.rng.next_u32() & 0xffff) as u16;
        let is_new = !self.peers.contains_key(&id);
        let rekey_after = self.config.rekey_after;
        let p = self
            .peers
            .entry(id)
            .or_insert_with(|| Peer::new(id, key, remote, first_seq));
        p.unconfirmed_finish = None;
        if let Some(old) = p.session.replace(local_index)
            && let Some(s) = self.sessions.get_mut(&old)
        {
            s.retired_at = Some(now);
            self.counters.sessions_rekeyed += 1;
            self.events.push_back(Event::SessionRekeyed { peer: id });
        }
        // The initiator of a session leads its renewal; the responder waits an eighth
        // longer, so that both do not start one at once.
        p.next_rekey = now
            + if as_initiator {
                rekey_after
            } else {
                rekey_after + rekey_after / 8
            };
        // The handshake proved the peer receives at `remote`: message 3 depends on
        // message 2, which went there (and message 2 on message 1, for the initiator).
        p.control = remote;
        // A challenge out to it (the peer moved there, then handshook: a rekey, or a
        // restart) goes on: its answer is what the flows' deferred nudges wait for, and
        // it will be sealed under this session. Its budget, if it had one, is lifted.
        let path = p.path(remote.ip());
        if !std::mem::replace(&mut path.validated, true) && path.challenge.is_some() {
            self.dataplane
                .push_back(DataPlaneCommand::Validated { remote: remote.ip() });
        }
        if let Some(rtt) = rtt {
            p.rtt_sample(rtt);
        }
        for e in exts {
            match e {
                Extension::Locator(l) if l.role == LocatorRole::Own => {
                    p.reported = Some(l.addr());
                    // Seed 000 ¶0106 / FIG. 19: a peer whose own idea of its address
                    // differs from the datagram's apparent source is behind a NAT.
                    p.behind_nat = l.addr().ip() != remote.ip();
                }
                Extension::Capabilities(c) => p.capabilities = c.flags,
                _ => {}
            }
        }
        // Requests that went unanswered (a restarted peer lost them) go again, now.
        for ex in [&mut p.update, &mut p.termination].into_iter().flatten() {
            ex.next = now;
        }
        if is_new {
            self.counters.peers_registered += 1;
            let ev = Event::PeerRegistered {
                peer: id,
                control: remote,
                rtt,
                behind_nat: self.peers[&id].behind_nat,
            };
            self.events.push_back(ev);
        }
        self.pay_owed(id, remote.ip());
        self.resend_validated(id, remote.ip());
        self.claim_address(id, remote.ip());
    }

    // ---- sessions ----

    /// When a session needs attention: a retired one is dropped after the grace; a
    /// peer's current one is renewed when due.
    pub(super) fn session_deadline(&self, s: &Session) -> Instant {
        match s.retired_at {
            Some(t) => t.max(s.last_received) + self.config.rekey_grace,
            None => match self.peers.get(&s.peer) {
                // (`send_sealed` makes it due at once when the message limit is hit.)
                Some(p) if p.session == Some(s.local_index) => p.next_rekey,
                // A session no peer uses (its peer is gone): drop it after the grace.
                _ => s.established + self.config.rekey_grace,
            },
        }
    }

    pub(super) fn session_timeouts(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .sessions
            .values()
            .filter(|s| self.session_deadline(s) <= now)
            .map(|s| s.local_index)
            .collect();
        for index in due {
            let Some(s) = self.sessions.get(&index) else {
                continue;
            };
            let peer = s.peer;
            let current = self.peers.get(&peer).is_some_and(|p| p.session == Some(index));
            if s.retired_at.is_some() || !current {
                // Nothing has come under it for the grace period: messages sealed under
                // it from here on are refused (`drop_unknown_session`).
                self.sessions.remove(&index);
                continue;
            }
            let rekeying = self.initiating.values().any(|i| i.rekey_of == Some(peer));
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            // Checked again later, whatever happens to this attempt.
            p.next_rekey = now + self.config.rekey_after / 4 + Duration::from_secs(1);
            if !rekeying {
                let to = p.control;
                if let Some(from) = self.source_for(to.ip()) {
                    self.start_handshake(now, from, to, Some(peer));
                }
            }
        }
    }

    fn remember_ended(&mut self, index: u32) {
        if self.superseded.len() >= 64 {
            self.superseded.pop_front();
        }
        self.superseded.push_back(index);
    }

    /// Answered handshakes whose Finish never came are forgotten. A flow that waited
    /// for one (see `associate`) gets a handshake of our own.
    pub(super) fn responder_timeouts(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .responding
            .iter()
            .filter(|(_, r)| r.created + RESPONDER_WAIT <= now)
            .map(|(i, _)| *i)
            .collect();
        for index in expired {
            let Some(r) = self.responding.remove(&index) else {
                continue;
            };
            self.settle_answered(now, r.local, r.remote.ip());
        }
    }

    /// An answered handshake from `addr` ended without a session: if a probe of that
    /// address was waiting on it, start our own.
    fn settle_answered(&mut self, now: Instant, local: IpAddr, addr: IpAddr) {
        let waiting = matches!(self.probes.get(&addr), Some(Probe::Pending))
            && !self.initiating.values().any(|i| i.to.ip() == addr)
            && !self.responding.values().any(|r| r.remote.ip() == addr)
            && super::peer::peer_at(&self.peers, addr).is_none();
        if waiting {
            self.probes.remove(&addr);
            self.start_probe(now, local, addr);
        }
    }

    pub(super) fn handshake_timeouts(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .initiating
            .iter()
            .filter(|(_, i)| i.exchange.next <= now)
            .map(|(k, _)| *k)
            .collect();
        for index in due {
            let max = self.config.max_handshake_attempts;
            let max_rto = self.config.max_rto;
            let Some(i) = self.initiating.get_mut(&index) else {
                continue;
            };
            if i.exchange.attempts >= max {
                let i = self.initiating.remove(&index).expect("listed");
                self.counters.handshakes_failed += 1;
                if i.rekey_of.is_none() {
                    self.counters.registrations_failed += 1;
                    self.probe_refused(now, i.to.ip());
                }
                continue;
            }
            i.exchange.back_off(now, max_rto);
            // Send from an address we still have.
            let (from, v4) = (i.from, i.to.is_ipv4());
            if !self.addresses.contains_key(&from)
                && let Some(a) = self.newest_address(v4)
                && let Some(i) = self.initiating.get_mut(&index)
            {
                i.from = a;
            }
            self.counters.retransmits += 1;
            self.send_init(now, index);
        }
    }

    // ---- sealed messages ----

    /// Opens a sealed message: which session, replay, tag, sender.
    pub(super) fn open_sealed(
        &mut self,
        now: Instant,
        frame: &Frame<'_>,
        remote: SocketAddr,
        len: usize,
    ) -> Option<(Message, Instant)> {
        let spi = frame.spi()?;
        let Some(session) = self.sessions.get_mut(&spi) else {
            self.counters.drop_unknown_session += 1;
            debug!(%remote, spi, "dropping message for an unknown session");
            return None;
        };
        let msg = match session.open(frame, now) {
            Ok(m) => m,
            Err(OpenError::Replayed) => {
                self.counters.drop_replay += 1;
                debug!(%remote, "dropping a replayed message");
                return None;
            }
            Err(OpenError::Decode(e)) => {
                if e.is_authentication_failure() {
                    self.counters.drop_bad_auth += 1;
                } else {
                    self.counters.drop_malformed += 1;
                }
                debug!(%remote, "dropping control message: {e}");
                return None;
            }
            Err(OpenError::WrongSender) => {
                self.counters.drop_bad_auth += 1;
                return None;
            }
        };
        let established = session.established;
        let Some(p) = self.peers.get_mut(&msg.header.sender) else {
            self.counters.drop_unknown_peer += 1;
            return None;
        };
        if p.session == Some(spi) {
            // The peer has the session: our Finish arrived.
            p.unconfirmed_finish = None;
        }
        let path = p.path(remote.ip());
        if !path.validated {
            path.received += len as u64;
        }
        Some((msg, established))
    }

    /// Seals `msg` for `peer` under its current session and sends it from `src_ip` to
    /// `dst`, unless `dst` is an address of the peer's that has not proven it receives
    /// there and this would exceed its budget (counted). Whether it was sent.
    pub(super) fn send_sealed(
        &mut self,
        peer: NodeId,
        src_ip: IpAddr,
        dst: SocketAddr,
        msg: Message,
    ) -> bool {
        match self.try_send_sealed(peer, src_ip, dst, msg) {
            Ok(()) => true,
            Err(NotSent::OverBudget(_)) => {
                self.counters.budget_refusals += 1;
                debug!(%dst, "not sending to an unvalidated address: over its budget");
                false
            }
            Err(NotSent::NoSession) => false,
        }
    }

    /// [`Endpoint::send_sealed`], handing back a message the budget refused.
    fn try_send_sealed(
        &mut self,
        peer: NodeId,
        src_ip: IpAddr,
        dst: SocketAddr,
        msg: Message,
    ) -> Result<(), NotSent> {
        let cap = self.config.unvalidated_budget;
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(NotSent::NoSession);
        };
        let Some(index) = p.session else {
            return Err(NotSent::NoSession);
        };
        let len = msg.encoded_len();
        // Room is kept for the challenge itself (and its retransmissions): answers that
        // filled the budget must not stop the one message that lifts it.
        let cap = if msg.header.msg_type == MessageType::PathChallenge {
            cap
        } else {
            cap.saturating_sub(CHALLENGE_RESERVE)
        };
        let path = p.path(dst.ip());
        if !path.may_send(len, cap) {
            return Err(NotSent::OverBudget(msg));
        }
        if !path.validated {
            path.sent += len as u64;
        }
        let fin = p.unconfirmed_finish.clone();
        let Some(s) = self.sessions.get_mut(&index) else {
            return Err(NotSent::NoSession);
        };
        match s.seal(msg) {
            Ok(payload) => {
                if s.sent == self.config.rekey_after_messages
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    // Enough under one key: renew it now (once: the rekey timer then
                    // moves on whatever happens to the attempt).
                    p.next_rekey = Instant::ZERO;
                }
                if let Some(fin) = fin {
                    self.transmit_clear(src_ip, dst, fin);
                }
                self.counters.messages_sent += 1;
                self.transmits.push_back(Transmit {
                    src: SocketAddr::new(src_ip, self.config.control_port),
                    dst,
                    payload,
                });
                Ok(())
            }
            Err(e) => {
                debug_assert!(false, "cannot seal: {e}");
                Err(NotSent::NoSession)
            }
        }
    }

    /// Sends `msg` as `send_sealed` does, unless `dst` is unproven and its budget has
    /// no room: then it waits in `Peer::owed` for the address's echo (a challenge is
    /// out to it or about to be: every address a peer moves to is challenged), so the
    /// answers to a move of many flows arrive one round trip after the echo, not one
    /// retransmission timeout each.
    pub(super) fn send_or_owe(&mut self, peer: NodeId, src: IpAddr, dst: SocketAddr, msg: Message) {
        let Err(NotSent::OverBudget(msg)) = self.try_send_sealed(peer, src, dst, msg) else {
            return;
        };
        match self.peers.get_mut(&peer) {
            Some(p) if p.owed.len() < MAX_OWED => {
                self.counters.answers_deferred += 1;
                p.owed.push(Owed { src, dst, msg });
            }
            // The mover's retransmission will ask again.
            _ => self.counters.budget_refusals += 1,
        }
    }

    /// `addr` proved itself: what was owed to it goes now.
    fn pay_owed(&mut self, peer: NodeId, addr: IpAddr) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let (due, rest): (Vec<Owed>, Vec<Owed>) = std::mem::take(&mut p.owed)
            .into_iter()
            .partition(|o| o.dst.ip() == addr);
        p.owed = rest;
        for o in due {
            self.send_sealed(peer, o.src, o.dst, o.msg);
        }
    }

    // ---- return routability ----

    /// The peer's flows now go to `addr`: challenge it (RFC 9000 §9: every change of
    /// a peer's address is validated). `port` is where to send the challenge.
    ///
    /// An address that has not proven it receives there gets a budget until it answers
    /// (return routability, RFC 9000 §8.2). One that has (the peer came back to it)
    /// keeps its standing: its answer only says that the peer is there now and has
    /// released its hold, which is when the flows' deferred nudges go
    /// (`DeferredNudge`), and its silence reverts nothing.
    pub(super) fn challenge_path(&mut self, now: Instant, peer: NodeId, addr: IpAddr, port: u16) {
        let cap = self.config.unvalidated_budget;
        let rto = {
            let Some(p) = self.peers.get(&peer) else { return };
            self.rto_for(p.srtt)
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        // Another datagram of the same move (a move of many flows takes many): the
        // challenge out stands, and its own timer resends it. A new token here would
        // make the echo of the first one, already on its way, a mismatch.
        let out = p.paths.get(&addr).is_some_and(|path| path.challenge.is_some());
        if p.challenged.replace(addr) == Some(addr) && out {
            return;
        }
        let mut token = [0u8; 16];
        self.rng.fill_bytes(&mut token);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let path = p.path(addr);
        if path.validated {
            self.counters.path_rechecks += 1;
        }
        // Named again while a challenge was out (the peer came back to it): what went
        // there while the peer was elsewhere proves nothing either way, and an answer
        // to it must not be taken for one to this move. Start over, with a new token.
        let first = path
            .challenge
            .replace(Challenge {
                token,
                port,
                exchange: Exchange::new(0, BTreeSet::new(), now, rto),
            })
            .is_none();
        if first && !path.validated {
            let received = path.received;
            self.dataplane.push_back(DataPlaneCommand::Unvalidated {
                remote: addr,
                cap,
                received,
            });
        }
        self.send_challenge(peer, addr);
    }

    pub(super) fn send_challenge(&mut self, peer: NodeId, addr: IpAddr) {
        let Some(c) = self
            .peers
            .get(&peer)
            .and_then(|p| p.paths.get(&addr))
            .and_then(|p| p.challenge.clone())
        else {
            return;
        };
        let Some(src) = self.source_for(addr) else { return };
        let seq = self.peers.get_mut(&peer).map(|p| p.take_seq()).unwrap_or(0);
        let msg = Message::new(Header::new(MessageType::PathChallenge, self.node_id, seq, 0))
            .with(Extension::Challenge(c.token));
        if self.send_sealed(peer, src, SocketAddr::new(addr, c.port), msg) {
            self.counters.path_challenges += 1;
        }
    }

    /// The mover's side: echo a challenge, from the address it came to.
    pub(super) fn on_path_challenge(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &Message,
    ) {
        let Some(token) = msg.challenge() else {
            return;
        };
        let reply = Message::new(Header::new(
            MessageType::PathResponse,
            self.node_id,
            msg.header.sequence,
            0,
        ))
        .with(Extension::Challenge(token));
        if self.send_sealed(msg.header.sender, local.ip(), remote, reply) {
            self.challenge_answered(now, local.ip(), remote.ip());
        }
    }

    /// The peer's side: the echo came back from the address challenged.
    pub(super) fn on_path_response(&mut self, now: Instant, remote: SocketAddr, msg: &Message) {
        let peer = msg.header.sender;
        let Some(token) = msg.challenge() else {
            return;
        };
        let addr = remote.ip();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        // It must come from the address challenged, with the token sent there.
        let Some(path) = p.paths.get_mut(&addr) else {
            self.counters.drop_unexpected_reply += 1;
            return;
        };
        let Some(c) = path.challenge.take_if(|c| c.token == token) else {
            if path.answered == Some(token) {
                // A second copy's echo (see `Input::RoutesChanged`).
                self.counters.duplicate_replies += 1;
            } else {
                self.counters.drop_unexpected_reply += 1;
            }
            return;
        };
        path.answered = Some(token);
        // A proven address answering again (a move back to it) only says the peer is
        // there: nothing to lift.
        let newly_proven = !std::mem::replace(&mut path.validated, true);
        p.control = SocketAddr::new(addr, c.port);
        if c.exchange.attempts == 1 && c.exchange.route_resends == 0 {
            p.rtt_sample(now - c.exchange.started);
        }
        if newly_proven {
            self.counters.paths_validated += 1;
            self.dataplane
                .push_back(DataPlaneCommand::Validated { remote: addr });
            self.events.push_back(Event::PathValidated { peer, addr });
        } else {
            debug!(%addr, "peer answered at a proven address");
        }
        self.pay_owed(peer, addr);
        self.resend_validated(peer, addr);
        // The peer answered a challenge sent after our acknowledgment of its move, so
        // (unless that acknowledgment was lost) it has released its hold: its sender
        // can act on a nudge now (`DeferredNudge`).
        for (o, outage) in self.take_deferred_nudges(now, peer, addr) {
            self.nudge(&o, outage);
        }
        // The peer receives at `addr` now: flows with that address that no peer has
        // are its (return routability is the proof, as for a handshake from there).
        self.claim_address(peer, addr);
    }

    /// `peer` proved it receives at `addr`: the flows it moved there while unproven stay
    /// (nothing to go back to), and what TCP sent them at the old address goes again.
    fn resend_validated(&mut self, peer: NodeId, addr: IpAddr) {
        let flows: Vec<Tuple> = self
            .flows
            .values()
            .filter(|f| f.validating.is_some_and(|(a, _)| a == addr) && f.peer == FlowPeer::Peer(peer))
            .map(|f| f.original)
            .collect();
        for o in flows {
            if let Some(f) = self.flows.get_mut(&o) {
                f.validating = None;
            }
            if o.protocol == Protocol::Tcp {
                self.dataplane.push_back(DataPlaneCommand::Resend { original: o });
            }
        }
    }

    /// Takes the deferred nudges of `peer`'s flows now at `addr` (they wait for its
    /// answer): each flow with how long it has been without a path.
    fn take_deferred_nudges(&mut self, now: Instant, peer: NodeId, addr: IpAddr) -> Vec<(Tuple, Duration)> {
        let mut due = Vec::new();
        for f in self.flows.values_mut() {
            if f.peer == FlowPeer::Peer(peer)
                && f.current.remote.ip() == addr
                && let Some(d) = f.nudge_deferred.take()
            {
                due.push((f.original, d.outage + (now - d.applied)));
            }
        }
        due
    }

    /// `peer` proved it receives at `addr`: the address is its (and no longer any
    /// other peer's, which must have left it), and so are the flows with it that no
    /// peer has.
    fn claim_address(&mut self, peer: NodeId, addr: IpAddr) {
        for p in self.peers.values_mut() {
            if p.id == peer {
                p.addrs.insert(addr);
            } else {
                p.addrs.remove(&addr);
            }
        }
        self.adopt_flows(peer, addr);
    }

    pub(super) fn path_timeouts(&mut self, now: Instant) {
        let mut due = Vec::new();
        for p in self.peers.values() {
            for (addr, path) in &p.paths {
                if path.challenge.as_ref().is_some_and(|c| c.exchange.next <= now) {
                    due.push((p.id, *addr));
                }
            }
        }
        for (peer, addr) in due {
            let max = self.config.max_path_challenges;
            let max_rto = self.config.max_rto;
            let Some(c) = self
                .peers
                .get_mut(&peer)
                .and_then(|p| p.paths.get_mut(&addr))
                .and_then(|p| p.challenge.as_mut())
            else {
                continue;
            };
            if c.exchange.attempts < max {
                c.exchange.back_off(now, max_rto);
                self.counters.retransmits += 1;
                self.send_challenge(peer, addr);
                continue;
            }
            let Some(path) = self.peers.get_mut(&peer).and_then(|p| p.paths.get_mut(&addr)) else {
                continue;
            };
            path.challenge = None;
            let proven = path.validated;
            if let Some(p) = self.peers.get_mut(&peer) {
                p.owed.retain(|o| o.dst.ip() != addr);
            }
            // Nobody answered: no sign the peer released its hold, and a nudge this
            // late would only cost it a spurious retransmission.
            let dropped = self.take_deferred_nudges(now, peer, addr).len();
            if proven {
                // A proven address that missed a check keeps its flows (the peer may
                // have lost only our challenges and be sending fine): only an address
                // that never proved itself sends its flows back.
                self.counters.path_rechecks_unanswered += 1;
                debug!(%addr, dropped, "peer did not answer at a proven address; its flows stay");
                continue;
            }
            // Never answered: the flows go back where they were (and proven).
            let back: Vec<(Tuple, Tuple)> = self
                .flows
                .values()
                .filter(|f| f.peer == FlowPeer::Peer(peer))
                .filter_map(|f| {
                    f.validating
                        .filter(|(a, _)| *a == addr)
                        .map(|(_, prev)| (f.original, prev))
                })
                .collect();
            for (o, prev) in &back {
                if let Some(f) = self.flows.get_mut(o) {
                    f.validating = None;
                }
                if !self.current_taken(prev, o) {
                    self.set_current(o, *prev);
                }
                self.sync_entry(o);
            }
            self.counters.paths_failed += 1;
            self.dataplane
                .push_back(DataPlaneCommand::Unreachable { remote: addr });
            self.events.push_back(Event::PathFailed {
                peer,
                addr,
                flows: back.len(),
            });
        }
    }

    // ---- restarts ----

    /// An entry the data plane kept across a restart: the flow comes back with its
    /// current tuple; a handshake will find its peer again.
    pub(super) fn restore(&mut self, now: Instant, m: crate::translate::FlowMapping) {
        if self.flows.contains_key(&m.original)
            || self.by_current.contains_key(&m.current)
            || !m.original.is_consistent()
            || !m.current.is_consistent()
            || m.original.local.is_ipv4() != m.current.local.is_ipv4()
            || m.original.protocol != m.current.protocol
        {
            self.counters.restore_refused += 1;
            return;
        }
        let mut flow = super::Flow::restored(m, now);
        flow.installed = Some(crate::translate::FlowMapping { hold: false, ..m });
        self.insert_flow(flow);
        // A held entry was a move nobody confirmed: release it (the new session's
        // update, if any, will come from the peer's side or ours).
        self.sync_entry(&m.original);
        self.associate(now, m.original);
    }
}
