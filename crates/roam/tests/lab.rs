//! The namespace lab, for real: roamd on two hosts, a real kernel TCP stream, a real
//! address change. Needs root (CI runs as root); `ROAM_SKIP_NETNS=1` skips these.
//!
//! Each run is checked for what a user cares about: the stream completed with the same
//! SHA-256 at both ends, and after every move data flowed again (the capture on B's
//! link saw payload after the move). How long the gap was is reported, never asserted:
//! timing belongs to `roam lab` and the benchmarks.

mod support;

use roam_lab::topology::Family;
use support::{assert_one_flow_moved, assert_survived, counter, lab, roamd};

#[test]
fn a_tcp_stream_survives_a_move_ipv4() {
    if let Some(r) = lab("tcp-move", Family::V4) {
        assert_survived(&r, 1);
        // A moved one flow, B applied it: each says so.
        assert_one_flow_moved(&r);
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
        assert!(
            counter(roamd(&r, "a"), "retransmits") > 0,
            "the update was retried:\n{r}"
        );
    }
}
