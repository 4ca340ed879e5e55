//! What every lab test file shares: one lab at a time, the run, and the survival check.
#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::sync::Mutex;

use roam_lab::scenario::{LabOptions, LabReport, run};
use roam_lab::topology::Family;

/// One lab at a time: two cores, and the links' timing is what is being measured.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `scenario` with the tests' defaults (30 MB streams); `None` when the lab is
/// switched off.
pub fn lab(scenario: &str, family: Family) -> Option<LabReport> {
    lab_with(scenario, family, |_| {})
}

/// Runs `scenario` with the tests' defaults changed by `configure`.
pub fn lab_with(
    scenario: &str,
    family: Family,
    configure: impl FnOnce(&mut LabOptions),
) -> Option<LabReport> {
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
    configure(&mut opts);
    let report = run(scenario, &opts).expect("the lab runs");
    println!("{report}");
    Some(report)
}

pub fn assert_survived(report: &LabReport, moves: usize) {
    assert!(report.ok, "a stream broke:\n{report}");
    assert_eq!(report.moves.len(), moves, "{report}");
    for m in &report.moves {
        assert!(
            m.gap_ms.is_some(),
            "the stream was not flowing at the move:\n{report}"
        );
        assert!(m.recovered, "no payload after the move:\n{report}");
    }
    assert_no_drops(report);
}

/// Nothing malformed, forged or replayed reached either roamd.
pub fn assert_no_drops(report: &LabReport) {
    for (host, status) in &report.roamd {
        for reason in ["drop_malformed", "drop_bad_auth", "drop_replay"] {
            assert_eq!(
                status["counters"][reason], 0,
                "roamd {host} dropped {reason}:\n{report}"
            );
        }
    }
}

/// One move of one flow: A moved it, B applied it and validated A's new address, and
/// A kept its old address for the socket.
pub fn assert_one_flow_moved(report: &LabReport) {
    let a = roamd(report, "a");
    assert_eq!(counter(a, "flows_moved"), 1, "{report}");
    assert_eq!(a["daemon"]["addresses_retained"], 1, "{report}");
    let b = roamd(report, "b");
    assert_eq!(counter(b, "migrations_applied"), 1, "{report}");
    assert_eq!(counter(b, "paths_validated"), 1, "{report}");
}

/// A protocol counter of roamd's status (it must be there).
pub fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// roamd's status on `host` at the end of the run.
pub fn roamd<'r>(report: &'r LabReport, host: &str) -> &'r serde_json::Value {
    &report
        .roamd
        .iter()
        .find(|(h, _)| h == host)
        .unwrap_or_else(|| panic!("no status from roamd on {host}:\n{report}"))
        .1
}
