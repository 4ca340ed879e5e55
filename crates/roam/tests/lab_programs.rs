//! Real, unmodified programs across a move of A: curl downloading from Python's
//! http.server, ssh streaming a command's output from Debian's sshd, socat exchanging a
//! file each way. Each must exit 0 with every byte intact (SHA-256 of what arrived against
//! the seeded pattern the other end sent), both ends' sockets must still name A's
//! original address after the move, and roamd must have moved the one connection. Timing
//! is reported by `roam lab`, never asserted. Needs root and curl, python3, openssh-server
//! and socat (.ci/run installs them); `ROAM_SKIP_NETNS=1` skips these.

mod support;

use roam_lab::scenario::LabReport;
use roam_lab::topology::Family;
use roam_lab::traffic::pattern_sha256;
use support::{assert_one_flow_moved, assert_survived, lab};

/// The tests' stream size (`support::lab`).
const BYTES: u64 = 30_000_000;

/// Survived the one move with each of `streams` (name, seed of its sender) complete and
/// the seed's pattern at both ends, each of `programs` exited 0, both ends' sockets still
/// at A's original address after the move, and one flow moved.
fn assert_programs_survived(r: &LabReport, programs: &[&str], streams: &[(&str, u64)]) {
    assert_survived(r, 1);
    let names: Vec<&str> = r.streams.iter().map(|s| s.name.as_str()).collect();
    let expected: Vec<&str> = streams.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected, "{r}");
    for (s, (_, seed)) in r.streams.iter().zip(streams) {
        assert!(s.ok, "{}:\n{r}", s.name);
        assert_eq!((s.bytes_sent, s.bytes_received), (BYTES, BYTES), "{r}");
        // What arrived is what the other end sent: the seed's pattern, known at both.
        let digest = pattern_sha256(*seed, BYTES);
        assert_eq!(s.sent_sha256, digest, "{r}");
        assert_eq!(s.received_sha256, digest, "{r}");
    }
    for p in programs {
        let what = format!("{p} exit status");
        let c = r
            .checks
            .iter()
            .find(|c| c.what == what)
            .unwrap_or_else(|| panic!("no check of {what}:\n{r}"));
        assert!(c.ok && c.observed == "0", "{r}");
    }
    // Translation, not the applications, carried the move.
    let a = "10.201.1.2";
    let a6 = "fd00:201:1::2";
    for end in [
        "A's socket after the move (ss on A)",
        "B's socket after the move (ss on B)",
    ] {
        let c = r
            .checks
            .iter()
            .find(|c| c.what == end)
            .unwrap_or_else(|| panic!("no check of {end}:\n{r}"));
        assert!(c.ok, "{r}");
        assert!(c.expected.ends_with(a) || c.expected.ends_with(a6), "{r}");
    }
    assert!(r.checks.iter().all(|c| c.ok), "{r}");
    assert_one_flow_moved(r);
}

#[test]
fn curl_downloads_a_file_across_a_move_ipv4() {
    if let Some(r) = lab("curl", Family::V4) {
        assert_programs_survived(&r, &["curl"], &[("curl download b->a", 1)]);
    }
}

#[test]
fn curl_downloads_a_file_across_a_move_ipv6() {
    if let Some(r) = lab("curl", Family::V6) {
        assert_programs_survived(&r, &["curl"], &[("curl download b->a", 1)]);
    }
}

#[test]
fn an_ssh_session_streams_a_command_s_output_across_a_move() {
    if let Some(r) = lab("ssh", Family::V4) {
        assert_programs_survived(&r, &["ssh"], &[("ssh session output b->a", 1)]);
    }
}

#[test]
fn socat_exchanges_a_file_each_way_across_a_move() {
    if let Some(r) = lab("socat", Family::V4) {
        // A sends the run's seed's pattern, B the next seed's.
        assert_programs_survived(
            &r,
            &["socat on A", "socat on B"],
            &[("socat a->b", 1), ("socat b->a", 2)],
        );
    }
}
