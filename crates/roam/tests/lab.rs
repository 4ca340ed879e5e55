//! The namespace lab, for real: roamd on two hosts, a real kernel TCP stream, a real
//! address change. Needs root (CI runs as root); `ROAM_SKIP_NETNS=1` skips these.
//!
//! Each run is checked for what a user cares about: the stream completed with the same
//! SHA-256 at both ends, and after every move data flowed again (the capture on B's
//! link saw payload after the move). How long the gap was is reported, never asserted:
//! timing belongs to `roam lab` and the benchmarks.

use std::path::PathBuf;
use std::sync::Mutex;

use roam_lab::scenario::{LabOptions, LabReport, run};
use roam_lab::topology::Family;

/// One lab at a time: two cores, and the links' timing is what is being measured.
static SERIAL: Mutex<()> = Mutex::new(());

fn lab(scenario: &str, family: Family) -> Option<LabReport> {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    match roam_lab::lab_available() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("skipped: ROAM_SKIP_NETNS=1");
            return None;
        }
        Err(e) => panic!("{e}: the lab tests need root (or set ROAM_SKIP_NETNS=1)"),
    }
    let mut opts = LabOptions::new(PathBuf::from(env!("CARGO_BIN_EXE_roam")));
    opts.family = family;
    opts.bytes = 30_000_000;
    let report = run(scenario, &opts).expect("the lab runs");
    println!("{report}");
    Some(report)
}

fn assert_survived(report: &LabReport, moves: usize) {
    assert!(report.ok, "a stream broke:\n{report}");
    assert_eq!(report.moves.len(), moves, "{report}");
    for m in &report.moves {
        assert!(
            m.gap_ms.is_some(),
            "the stream was not flowing at the move:\n{report}"
        );
        assert!(m.recovered, "no payload after the move:\n{report}");
    }
    for (host, status) in &report.roamd {
        let c = &status["counters"];
        for reason in ["drop_malformed", "drop_bad_auth", "drop_replay"] {
            assert_eq!(c[reason], 0, "roamd {host} dropped {reason}:\n{report}");
        }
    }
}

#[test]
fn a_tcp_stream_survives_a_move_ipv4() {
    if let Some(r) = lab("tcp-move", Family::V4) {
        assert_survived(&r, 1);
        // A moved one flow, B applied it: each says so.
        let a = &r.roamd.iter().find(|(h, _)| h == "a").expect("a's status").1;
        assert_eq!(a["counters"]["flows_moved"], 1, "{r}");
        assert_eq!(a["daemon"]["addresses_retained"], 1, "{r}");
        let b = &r.roamd.iter().find(|(h, _)| h == "b").expect("b's status").1;
        assert_eq!(b["counters"]["migrations_applied"], 1, "{r}");
        assert_eq!(b["counters"]["paths_validated"], 1, "{r}");
    }
}

#[test]
fn a_tcp_stream_survives_a_move_ipv6() {
    if let Some(r) = lab("tcp-move", Family::V6) {
        assert_survived(&r, 1);
    }
}

#[test]
fn two_moves_within_a_second() {
    if let Some(r) = lab("two-moves", Family::V4) {
        assert_survived(&r, 2);
    }
}

#[test]
fn a_move_onto_a_lossy_path() {
    if let Some(r) = lab("lossy-new-path", Family::V4) {
        assert_survived(&r, 1);
    }
}

#[test]
fn a_move_while_the_peer_daemon_is_stopped() {
    if let Some(r) = lab("peer-stopped", Family::V4) {
        // The stream stands still while B's roamd is stopped (5 s, longer than the
        // gap window): what counts is that it completed, byte for byte.
        assert!(r.ok, "{r}");
        let a = &r.roamd.iter().find(|(h, _)| h == "a").expect("a's status").1;
        assert!(
            a["counters"]["retransmits"].as_u64() > Some(0),
            "the update was retried:\n{r}"
        );
    }
}
