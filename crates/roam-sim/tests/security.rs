//! docs/SECURITY.md's claims, shown in the simulator: attackers off path and on path, a
//! malicious peer, a flood, an untrusted key and restarts. Each scenario states what
//! must and must not happen (its `[expect]`); these tests run it over both families
//! and several seeds, and check the details a person would ask about.

mod common;
use common::run_all;
use roam_sim::Report;
use roam_sim::report::HostReport;

fn host<'a>(r: &'a Report, name: &str) -> &'a HostReport {
    r.hosts
        .iter()
        .find(|h| h.name == name)
        .expect("host in the report")
}

fn counter(r: &Report, host_name: &str, c: &str) -> u64 {
    host(r, host_name)
        .metric(c)
        .unwrap_or_else(|| panic!("no metric {c}"))
}

/// What b believes of a at the end: its control address and proven addresses.
fn view_of_a(r: &Report) -> (String, Vec<String>) {
    let p = host(r, "b")
        .peers
        .iter()
        .find(|p| p.name == "a")
        .expect("b knows a");
    (p.control.clone(), p.addresses.clone())
}

/// a's address at the end, as b should know it.
fn a_now(r: &Report) -> String {
    host(r, "a").address.clone().expect("a is attached")
}

#[test]
fn forged_and_tampered_updates_are_dropped_counted_and_move_nothing() {
    for r in run_all("attack-forged-update", &[1, 2, 3]) {
        assert_eq!(counter(&r, "b", "drop_unknown_session"), 1, "the forgery");
        assert_eq!(counter(&r, "b", "drop_bad_auth"), 1, "the tampered copy");
        assert_eq!(counter(&r, "b", "migrations_applied"), 1, "only a's own move");
        assert_eq!(
            counter(&r, "m", "received_packets"),
            0,
            "nothing went to the attacker"
        );
        assert!(
            view_of_a(&r).0.contains(&a_now(&r)),
            "b's control address for a moved"
        );
        // Nothing of it reached the timeline as a move.
        assert_eq!(r.moves.len(), 1);
    }
}

#[test]
fn replayed_updates_and_handshakes_are_dropped_within_and_across_sessions() {
    for r in run_all("attack-replay", &[1, 2, 3]) {
        assert_eq!(counter(&r, "b", "drop_replay"), 1, "replayed within its session");
        assert_eq!(
            counter(&r, "b", "drop_unknown_session"),
            1,
            "replayed after the keys rotated"
        );
        assert!(
            counter(&r, "b", "sessions_rekeyed") >= 10,
            "a session lives 1 s here"
        );
        assert_eq!(counter(&r, "b", "migrations_applied"), 1);
        // The replayed Init and Finish came from m's address: b's view of a did not
        // move there (a WireGuard implementation's endpoint followed such replays).
        let (control, addresses) = view_of_a(&r);
        assert!(
            control.contains(&a_now(&r)),
            "b sends a's control to {control}, a is at {}",
            a_now(&r)
        );
        let m = host(&r, "m").address.clone().unwrap();
        assert!(!addresses.contains(&m), "{addresses:?}");
        // The one packet m got is b's Response to the replayed Init: it cannot read it
        // (it lacks a's ephemeral key), and it completed nothing.
        assert!(counter(&r, "m", "received_packets") <= 1);
        assert_eq!(counter(&r, "b", "peers_registered"), 1);
    }
}

#[test]
fn a_malicious_peer_cannot_aim_a_stream_at_a_victim() {
    for r in run_all("attack-redirect", &[1, 2, 3]) {
        let v = host(&r, "v");
        assert!(
            v.received_bytes <= 16 * 1024,
            "the victim got {} bytes",
            v.received_bytes
        );
        // The stream (20 MB) went to a, not to the victim.
        assert_eq!(r.flows[0].bytes_received, 20_000_000);
        assert_eq!(counter(&r, "b", "paths_failed"), 1);
        assert_eq!(counter(&r, "b", "paths_validated"), 0);
        // b's view of a never left a's real address.
        let (control, addresses) = view_of_a(&r);
        assert!(control.contains(&a_now(&r)), "{control}");
        let victim = v.address.clone().unwrap();
        assert!(!addresses.contains(&victim), "{addresses:?}");
        // No translation is left pointing at the victim.
        assert_eq!(host(&r, "b").translation_entries, 0);
    }
}

#[test]
fn a_handshake_flood_costs_bounded_work_and_legitimate_moves_still_complete() {
    for r in run_all("attack-handshake-flood", &[1, 2]) {
        let b = host(&r, "b");
        let answered = counter(&r, "b", "handshakes_answered");
        let cookies = counter(&r, "b", "cookies_sent");
        let limited = counter(&r, "b", "drop_rate_limited");
        // 20,000 Inits: each one was rate limited, answered with a cookie, or (a
        // bounded few) answered with Diffie-Hellman.
        assert!(answered <= 400, "{answered} answered with Diffie-Hellman");
        assert!(
            cookies > 1000 && limited > 1000,
            "{cookies} cookies, {limited} limited"
        );
        assert!(
            answered + cookies + limited >= 19_000,
            "{answered} + {cookies} + {limited}"
        );
        // a's move during the flood was confirmed as fast as without it.
        let m = &r.moves[0];
        assert!(m.confirmed_after_ms.unwrap() < 30.0, "{m:?}");
        // a's rekeys went on through the flood (through cookies).
        assert!(counter(&r, "a", "sessions_rekeyed") >= 2);
        // The Cookie Reply replayed to a from m's address matched nothing of a's.
        assert_eq!(counter(&r, "a", "drop_bad_handshake"), 1);
        assert!(b.peers.iter().all(|p| p.name == "a"), "{:?}", b.peers);
    }
}

#[test]
fn an_untrusted_key_is_refused_and_its_host_is_no_peer() {
    for r in run_all("untrusted-key", &[1, 2]) {
        assert!(counter(&r, "b", "drop_untrusted_key") >= 1);
        let b = host(&r, "b");
        assert_eq!(b.peers.len(), 1, "{:?}", b.peers);
        assert_eq!(b.peers[0].name, "a");
        assert!(
            r.timeline
                .iter()
                .any(|e| e.host == "b" && e.what.contains("refused untrusted key"))
        );
    }
}

#[test]
fn both_daemons_restart_and_the_moved_connection_keeps_moving() {
    for r in run_all("restart", &[1, 2, 3]) {
        // Both handshook again after the restart and the second move was confirmed.
        assert_eq!(r.moves.len(), 2);
        assert!(r.moves.iter().all(|m| m.confirmed_after_ms.is_some()));
        assert!(r.timeline.iter().filter(|e| e.what.contains("restarts")).count() == 2);
        let (control, _) = view_of_a(&r);
        assert!(control.contains(&a_now(&r)));
    }
}
