//! The namespace lab, for real: roamd on two hosts, a real kernel TCP stream, a real
//! address change. Needs root (CI runs as root); `ROAM_SKIP_NETNS=1` skips these.
//!
//! Each run is checked for what a user cares about: the stream completed with the same
//! SHA-256 at both ends, and after every move data flowed again (the capture on B's
//! link saw payload after the move). How long the gap was is reported, never asserted:
//! timing belongs to `roam lab` and the benchmarks.

mod support;

use roam_lab::topology::Family;
use support::{assert_survived, lab, roamd};

#[test]
fn a_tcp_stream_survives_a_move_ipv4() {
    if let Some(r) = lab("tcp-move", Family::V4) {
        assert_survived(&r, 1);
        // A moved one flow, B applied it: each says so.
        let a = roamd(&r, "a");
        assert_eq!(a["counters"]["flows_moved"], 1, "{r}");
        assert_eq!(a["daemon"]["addresses_retained"], 1, "{r}");
        let b = roamd(&r, "b");
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
        let a = roamd(&r, "a");
        assert!(
            a["counters"]["retransmits"].as_u64() > Some(0),
            "the update was retried:\n{r}"
        );
    }
}
