//! roamd restarting under a moved session (issue 6): killed (SIGKILL) or stopped
//! (SIGTERM) and started again, from its state file, a second later, on the host that
//! moved or on its peer. The stream must survive byte for byte, keep flowing while
//! roamd is down (the kernel keeps translating), and the restarted roamd must list the
//! moved flow as it was, handshake with its peer again, and carry A's move back. How
//! long any silence lasted is reported, never asserted. Needs root;
//! `ROAM_SKIP_NETNS=1` skips these.

mod support;

use std::net::SocketAddr;

use roam_lab::scenario::LabReport;
use roam_lab::topology::{ADDRESSES, Family};
use support::{assert_survived, lab, roamd};

/// What every restart scenario must show, `host` being the one whose roamd restarted.
fn assert_survived_restart(r: &LabReport, host: &str) {
    // The stream (digest) and both moves (each recovered), every check of the scenario,
    // nothing forged or malformed counted.
    assert_survived(r, 2);
    let upper = host.to_uppercase();
    let peer = if host == "a" { "B" } else { "A" };
    // The scenario made each of these checks (they passed, or `ok` would be false).
    for what in [
        format!("translation entries in {upper}'s kernel while its roamd is down"),
        format!("the stream's flow as {upper}'s restarted roamd lists it"),
        format!("flows {upper}'s restarted roamd restored as moved"),
        format!("{upper}'s restarted roamd knows its peer again"),
        format!("{peer}'s roamd completes a new handshake with {upper}'s restarted roamd"),
        format!("the stream across the restart of {upper}'s roamd"),
        "A's roamd after A's move back".to_owned(),
        "B's roamd after A's move back".to_owned(),
    ] {
        let c = r
            .checks
            .iter()
            .find(|c| c.what == what)
            .unwrap_or_else(|| panic!("no check {what:?}:\n{r}"));
        assert!(c.ok, "{what}:\n{r}");
    }
    assert!(
        r.checks.iter().any(|c| c
            .what
            .starts_with(&format!("the stream while {upper}'s roamd is down"))),
        "{r}"
    );
    // The roamd that ran at the end is the restarted one, and it moved the flow back
    // with its peer: a handshake of its own, and the stream's flow on A's first address.
    let status = roamd(r, host);
    assert!(
        status["counters"]["handshakes_completed"].as_u64() >= Some(1),
        "{r}"
    );
    let (a_first, b) = (ADDRESSES.a_subnet1.get(Family::V4), ADDRESSES.b.get(Family::V4));
    let addr = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<SocketAddr>().ok());
    let a_flow = roamd(r, "a")["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["original"]["protocol"] == "tcp" && addr(&f["original"]["remote"]).is_some_and(|s| s.ip() == b)
        })
        .unwrap_or_else(|| panic!("A's roamd does not list the stream:\n{r}"));
    assert_eq!(
        addr(&a_flow["current"]["local"]).map(|s| s.ip()),
        Some(a_first),
        "A is back on subnet 1:\n{r}"
    );
}

#[test]
fn a_moved_stream_survives_sigkill_and_restart_of_the_movers_roamd() {
    if let Some(r) = lab("restart-kill9", Family::V4) {
        assert_survived_restart(&r, "a");
    }
}

#[test]
fn a_moved_stream_survives_an_upgrade_of_the_movers_roamd() {
    if let Some(r) = lab("upgrade", Family::V4) {
        assert_survived_restart(&r, "a");
        let stop = r
            .checks
            .iter()
            .find(|c| c.what == "roamd on A stops on SIGTERM")
            .unwrap_or_else(|| panic!("no check of the clean stop:\n{r}"));
        assert!(stop.ok, "{r}");
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("started again from") && n.contains("/upgrade/roam")),
            "roamd started from the copy:\n{r}"
        );
    }
}

#[test]
fn a_moved_stream_survives_sigkill_and_restart_of_the_peers_roamd() {
    if let Some(r) = lab("restart-b", Family::V4) {
        assert_survived_restart(&r, "b");
    }
}
