//! Strangers, in the namespace lab: a third host sending roamd garbage, forgeries and
//! replays, and a peer that runs no roam at all. Needs root (CI runs as root);
//! `ROAM_SKIP_NETNS=1` skips these.
//!
//! The scenarios check their own facts (each one a line of the report, with what was
//! expected and what was seen); these tests require every check to have passed and
//! also read roamd's final status themselves, so that a scenario that stopped checking
//! something, or a status that disagrees with the checks, fails here. No timing is
//! asserted.

mod support;

use roam_lab::scenario::{CheckReport, LabReport};
use roam_lab::topology::Family;
use support::{counter, lab, roamd};

/// The check of the report whose description starts with `what`, which must have passed.
fn passed<'r>(report: &'r LabReport, what: &str) -> &'r CheckReport {
    let c = report
        .checks
        .iter()
        .find(|c| c.what.starts_with(what))
        .unwrap_or_else(|| panic!("the report has no check {what:?}:\n{report}"));
    assert!(c.ok, "check {what:?} failed:\n{report}");
    c
}

/// The number a check of the report expected, the check having passed.
fn checked(report: &LabReport, what: &str) -> u64 {
    passed(report, what)
        .expected
        .parse()
        .unwrap_or_else(|_| panic!("check {what:?} expected no number:\n{report}"))
}

#[test]
fn control_garbage_from_a_third_host_is_counted_dropped_and_changes_nothing() {
    let Some(r) = lab("control-garbage", Family::V4) else {
        return;
    };
    assert!(r.ok, "{r}");
    // The stream survived both moves, byte for byte: the one after the attack too.
    assert_eq!(r.streams.len(), 1, "{r}");
    assert!(r.streams[0].ok, "{r}");
    assert_eq!(r.moves.len(), 2, "{r}");
    assert!(r.moves.iter().all(|m| m.recovered), "{r}");
    for host in ["a", "b"] {
        let st = roamd(&r, host);
        // Every category was sent, landed in its counter, and the counters are what the
        // status says at the end. A run without an attacker drops none of these (the
        // other lab tests assert it), so the totals are the attack's.
        for (category, name) in [
            ("malformed", "drop_malformed"),
            ("forged under an unknown session", "drop_unknown_session"),
            ("forged or altered under its real session", "drop_bad_auth"),
            ("genuine, replayed", "drop_replay"),
        ] {
            let sent = checked(&r, &format!("{host}: {category}"));
            assert!(sent > 0, "no {category} datagram was sent to {host}:\n{r}");
            assert_eq!(counter(st, name), sent, "{host} {name}:\n{r}");
        }
        let reflected = checked(&r, &format!("{host}: its own, reflected"));
        assert!(counter(st, "drop_unexpected_reply") >= reflected, "{r}");
        let garbage = checked(&r, &format!("{host}: handshake messages"));
        assert!(counter(st, "drop_bad_handshake") > 0, "{r}");
        assert!(garbage > 0, "{r}");
        assert_eq!(counter(st, "drop_rate_limited"), 0, "{r}");
        // None of it made a session or a peer: one peer each, registered once, and the
        // translation and status are as before the attack.
        assert_eq!(st["peers"].as_array().map(Vec::len), Some(1), "{r}");
        assert_eq!(counter(st, "peers_registered"), 1, "{host}:\n{r}");
        assert_eq!(counter(st, "sessions_rekeyed"), 0, "{host}:\n{r}");
        for what in [
            "peers and flows",
            "the kernel's translation state",
            "nothing accepted",
        ] {
            passed(&r, &format!("{host}: {what}"));
        }
    }
    // A moved twice and B applied both: the move after the attack worked.
    assert_eq!(counter(roamd(&r, "a"), "flows_moved"), 2, "{r}");
    assert_eq!(counter(roamd(&r, "b"), "migrations_applied"), 2, "{r}");
}

#[test]
fn a_peer_without_roam_is_recognised_left_alone_and_counted() {
    let Some(r) = lab("peer-without-roam", Family::V4) else {
        return;
    };
    assert!(r.ok, "{r}");
    // B ran no roamd: only A reports.
    assert_eq!(r.roamd.len(), 1, "{r}");
    // The connection opened before the move broke, as expected and said so; the one
    // opened after it arrived whole.
    assert_eq!(r.streams.len(), 2, "{r}");
    let (broken, new) = (&r.streams[0], &r.streams[1]);
    assert_eq!(r.expected_broken, vec![broken.name.clone()], "{r}");
    assert!(!broken.ok && broken.bytes_received < broken.bytes_sent, "{r}");
    assert!(new.ok && new.bytes_received == new.bytes_sent, "{r}");
    assert_eq!(r.moves.len(), 1, "{r}");
    assert!(!r.moves[0].recovered, "{r}");

    let a = roamd(&r, "a");
    assert_eq!(counter(a, "registrations_failed"), 1, "{r}");
    assert_eq!(counter(a, "flows_without_peer"), 2, "{r}");
    assert_eq!(counter(a, "flows_stranded"), 1, "{r}");
    assert_eq!(counter(a, "flows_moved"), 0, "{r}");
    assert_eq!(a["peers"].as_array().map(Vec::len), Some(0), "{r}");
    for direction in ["egress_translated", "ingress_translated"] {
        assert_eq!(
            a["data_plane_counters"][direction]["packets"], 0,
            "A translated packets:\n{r}"
        );
    }
    let events = a["events"].to_string();
    assert!(events.contains("no roam peer at 10.201.3.2"), "{r}");
    for c in &r.checks {
        assert!(c.ok, "{r}");
    }
}
