//! The reference: without roam, moving A's address mid-transfer stalls a plain TCP
//! stream for good (what roam fixes). Both families, at once.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use roam_lab::capture::{Capture, CaptureOptions, PacketFilter, Protocol, handover_report_around};
use roam_lab::topology::{B_IF, Family, Topology, TopologyOptions};
use roam_lab::traffic::{TcpSink, TcpSource};

#[test]
fn without_roam_a_move_stalls_a_plain_tcp_stream() {
    if !support::lab_enabled() {
        return;
    }
    let seed = 0xdead;
    println!("seed {seed:#x}");
    let topo = Topology::build(TopologyOptions {
        seed,
        ..TopologyOptions::default()
    })
    .expect("topology");
    let capture = Capture::start(topo.b(), B_IF, CaptureOptions::default()).expect("capture");
    let deadline = Duration::from_secs(10);
    let mut streams = Vec::new();
    for (family, port) in [(Family::V4, 5001), (Family::V6, 5002)] {
        let to = SocketAddr::new(topo.b_address(family), port);
        let sink = TcpSink::start(topo.b(), to, deadline).expect("sink");
        // More than the test lasts at the link's rate: it cannot finish.
        let source = TcpSource::start(topo.a(), to, 500_000_000, seed, deadline).expect("source");
        streams.push((family, to, sink, source));
    }
    let flowing = Instant::now() + Duration::from_secs(5);
    while streams.iter().any(|s| s.2.received() < 1_000_000) {
        assert!(Instant::now() < flowing, "streams did not start");
        std::thread::sleep(Duration::from_millis(10));
    }

    let moved = topo.move_a().expect("move");
    std::thread::sleep(Duration::from_secs(1));
    let one_second_after: Vec<u64> = streams.iter().map(|s| s.2.received()).collect();
    std::thread::sleep(Duration::from_secs(4));
    let five_seconds_after: Vec<u64> = streams.iter().map(|s| s.2.received()).collect();
    let records = capture.stop().expect("capture").records;

    for (i, (family, to, sink, source)) in streams.into_iter().enumerate() {
        let _ = source.stop();
        let report = sink.stop().expect("sink");
        let handover = handover_report_around(
            &records,
            &PacketFilter::to(Protocol::Tcp, to),
            moved.started,
            Duration::from_millis(200),
            Duration::from_secs(5),
        );
        let gap = handover.gap.expect("stream was flowing before the move");
        println!(
            "{family:?}: {} bytes before the stall, goodput {:.1} Mbit/s before the move, \
             {:.2} after; gap {:?}, recovered: {}",
            report.bytes,
            handover.before.bits_per_second() / 1e6,
            handover.after.bits_per_second() / 1e6,
            gap.length,
            gap.recovered
        );
        assert!(!report.completed);
        assert_eq!(
            one_second_after[i], five_seconds_after[i],
            "{family:?}: B still received data seconds after the move"
        );
        assert!(!gap.recovered && gap.length > Duration::from_secs(4), "{gap:?}");
    }
}
