//! The lab's measurement scenarios, checked for what they must show whatever the
//! figures: a real iperf3 survives a move with its own stream digested, plain TCP is
//! measured next to it, and a stream across several moves has each gap measured and
//! survives them all. The figures themselves (gaps, goodput, the ratio) are reported by
//! `roam lab`, never asserted. Needs root; `ROAM_SKIP_NETNS=1` skips these.

mod support;

use std::time::Duration;

use roam_lab::topology::Family;
use support::{assert_survived, lab_with, roamd};

#[test]
fn an_iperf3_stream_survives_a_move_and_plain_tcp_is_measured_beside_it() {
    // 6 s rather than 10: enough for a steady-state window after the move, short for CI.
    if let Some(r) = lab_with("iperf3", Family::V4, |o| o.duration = Duration::from_secs(6)) {
        assert_survived(&r, 1);
        let s = r.summary.as_ref().unwrap_or_else(|| panic!("no summary:\n{r}"));
        let names: Vec<&str> = s.iperf3.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["across the move", "plain TCP"], "{r}");
        for run in &s.iperf3 {
            assert_eq!(
                (run.client_exit, run.server_exit),
                (Some(0), Some(0)),
                "iperf3 {}:\n{r}",
                run.name
            );
            assert!(run.error.is_none(), "{r}");
            assert!(!run.receiver_intervals.is_empty(), "{r}");
        }
        // The iperf3 stream itself is digested: the file the server wrote is what the
        // client sent, as many bytes as the server says it read.
        assert_eq!(r.streams.len(), 2, "{r}");
        for (stream, run) in r.streams.iter().zip(&s.iperf3) {
            assert!(stream.ok, "{r}");
            assert_eq!(stream.sent_sha256, stream.received_sha256, "{r}");
            assert_eq!(stream.bytes_received, run.bytes_received, "{r}");
            assert!(stream.bytes_received <= run.bytes_sent, "{r}");
        }
        // A moved both of iperf3's connections (control and data).
        assert_eq!(roamd(&r, "a")["counters"]["flows_moved"], 2, "{r}");
        // Plain TCP ran from A's new address with nothing translating it (roamd was
        // stopped, its table gone), and both windows carried data, so there is a ratio.
        let plain_from = s.iperf3[1].local.as_deref().unwrap_or_default();
        assert!(plain_from.starts_with("10.201.2.2 "), "{r}");
        let g = s
            .goodput
            .as_ref()
            .unwrap_or_else(|| panic!("no goodput comparison:\n{r}"));
        assert!(g.roam_mbps > 0.0 && g.plain_mbps > 0.0, "{r}");
        assert!(g.ratio.is_some(), "{r}");
    }
}

#[test]
fn a_stream_survives_three_moves_each_gap_measured_on_its_own() {
    if let Some(r) = lab_with("moves", Family::V4, |o| o.moves = 3) {
        assert_survived(&r, 3);
        let to: Vec<&str> = r.moves.iter().map(|m| m.to.as_str()).collect();
        assert_eq!(
            to,
            ["Two", "One", "Two"],
            "A alternates between its subnets:\n{r}"
        );
        let s = r.summary.as_ref().unwrap_or_else(|| panic!("no summary:\n{r}"));
        assert_eq!((s.moves, s.recovered), (3, 3), "{r}");
        let gaps = s.gap_ms.unwrap_or_else(|| panic!("no gaps:\n{r}"));
        assert_eq!(gaps.count, 3, "{r}");
        // The summary is of these moves' gaps.
        let max = r.moves.iter().filter_map(|m| m.gap_ms).fold(0.0, f64::max);
        assert_eq!(gaps.max, max, "{r}");
        assert_eq!(roamd(&r, "a")["counters"]["flows_moved"], 3, "{r}");
    }
}
