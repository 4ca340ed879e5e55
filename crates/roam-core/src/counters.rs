//! Counters of everything the core did and everything it refused, by reason. Every
//! drop has its own counter: observability is a feature.

use serde::Serialize;

macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct $name { $($(#[$fm])* pub $field: u64),* }

        impl $name {
            /// Every counter with its name, in declaration order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$((stringify!($field), self.$field)),*].into_iter()
            }
        }
    };
}

counters! {
    /// Control-plane counters of one endpoint.
    pub struct Counters {
        /// Control datagrams handed to the driver.
        messages_sent,
        /// Of those, retransmissions (update, registration, termination).
        retransmits,
        /// Control datagrams received and accepted.
        messages_accepted,
        /// Dropped: the datagram is not a well-formed control message.
        drop_malformed,
        /// Dropped: the AEAD tag does not verify, or the header names another sender
        /// than the session's peer.
        drop_bad_auth,
        /// Dropped: sealed under a session index we do not have (never had, or retired
        /// after a rekey).
        drop_unknown_session,
        /// Dropped: replay-protect ID already seen or older than the window.
        drop_replay,
        /// Dropped: a message for a peer whose record is gone.
        drop_unknown_peer,
        /// Dropped: over a per-source (handshakes) or per-peer (updates) rate limit.
        drop_rate_limited,
        /// Dropped: a handshake message that does not verify or matches no handshake.
        drop_bad_handshake,
        /// Dropped: a cookie that does not verify.
        drop_bad_cookie,
        /// Handshakes refused because the peer's key is not trusted.
        drop_untrusted_key,
        /// Handshake Inits answered with a Response (each costs Diffie-Hellman work).
        handshakes_answered,
        /// Handshake messages that repeat or answer one already dealt with (a
        /// retransmitted Init, a copy of a Finish, the answer to a handshake that
        /// crossed the peer's): answered again or ignored, no new state.
        handshake_duplicates,
        /// Handshakes completed (as initiator or responder).
        handshakes_completed,
        /// Handshakes abandoned after their retries.
        handshakes_failed,
        /// Cookie replies sent because this host was under load.
        cookies_sent,
        /// Sessions replaced by a newer handshake (key rotation or restart).
        sessions_rekeyed,
        /// Path challenges sent (first copies and retransmissions) to an address a peer
        /// moved flows to: a new address (return routability) or a proven one (a
        /// recheck, below).
        path_challenges,
        /// New addresses that echoed their challenge.
        paths_validated,
        /// New addresses that never did: their flows went back where they were.
        paths_failed,
        /// Challenges begun to an address the peer had proven already (it moved back
        /// there): its answer only says when to nudge the flows that went there.
        path_rechecks,
        /// Challenges to a proven address never answered: its flows stayed there, and
        /// went without their nudge.
        path_rechecks_unanswered,
        /// Outstanding requests (updates, terminations, path challenges) sent again at
        /// once because the host's routes changed (`Input::RoutesChanged`).
        route_resends,
        /// Control messages not sent to an unvalidated address: over its budget.
        budget_refusals,
        /// Answers to a peer's update held back by its new address's budget, sent when
        /// the address echoed its challenge.
        answers_deferred,
        /// Answers to a copy of a request already answered (its route-change resend,
        /// or a retransmission that crossed the answer): expected, ignored.
        duplicate_replies,
        /// Dropped: a reply that matches no outstanding request (or an old one).
        drop_unexpected_reply,
        /// Dropped: a message type this endpoint does not serve (e.g. Subscribe, which
        /// is for a rendezvous service).
        drop_unsupported,
        /// Migrations refused because the peer's update was older than one applied.
        migrations_stale,
        /// Migrations naming a flow we do not share with that peer.
        migrations_unknown_flow,
        /// Migrations refused (family change, tuple conflict, not authorised).
        migrations_refused,
        /// Flows of peers whose moves we applied.
        migrations_applied,
        /// Our flows moved and confirmed by the peer.
        flows_moved,
        /// Our flows whose move was never confirmed (retries exhausted or refused).
        flows_move_failed,
        /// Flows whose host did not answer registration (not running roam; seed 000
        /// FIG. 21): left alone.
        flows_without_peer,
        /// Flows whose local address vanished with no peer to tell (they will break).
        flows_stranded,
        /// Flows remapped to keep two connections apart (seed 000 ¶0067-¶0069).
        conflicts_resolved,
        /// Conflicts refused because the remap limit was reached.
        conflicts_refused,
        /// Peers registered.
        peers_registered,
        /// Registrations (handshakes to a new address) that ended unanswered.
        registrations_failed,
        /// Update-Requests answered.
        update_requests_answered,
        /// Terminations received and applied.
        terminations_applied,
        /// Entries a data plane kept across a restart that were not taken back (they
        /// clash with a flow already known, or are inconsistent).
        restore_refused,
    }
}
