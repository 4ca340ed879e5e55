//! A plain kernel TCP transfer A→B crosses the emulated links intact, at about the
//! configured rate; a capture at B sees it, measures it and writes a pcap.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use roam_lab::capture::{Capture, CaptureOptions, PacketFilter, Protocol, goodput};
use roam_lab::topology::{B_IF, Family, LinkId, Topology, TopologyOptions, UP};
use roam_lab::traffic::{TcpSink, TcpSource, pattern_sha256};

const BYTES: u64 = 10_000_000;

#[test]
fn tcp_transfer_arrives_intact_at_about_the_link_rate() {
    if !support::lab_enabled() {
        return;
    }
    let seed = 0x5eed_0001;
    println!("seed {seed:#x}");
    let topo = Topology::build(TopologyOptions {
        seed,
        ..TopologyOptions::default()
    })
    .expect("topology");
    let pcap = std::env::temp_dir().join(format!("roam-lab-transfer-{}.pcap", std::process::id()));
    let capture = Capture::start(
        topo.b(),
        B_IF,
        CaptureOptions {
            pcap: Some(pcap.clone()),
            ..CaptureOptions::default()
        },
    )
    .expect("capture");

    let to = SocketAddr::new(topo.b_address(Family::V4), 5001);
    let deadline = Duration::from_secs(20);
    let sink = TcpSink::start(topo.b(), to, deadline).expect("sink");
    let started = SystemTime::now();
    let source = TcpSource::start(topo.a(), to, BYTES, seed, deadline).expect("source");
    let sent = source.join().expect("source report");
    let received = sink.join().expect("sink report");
    let ended = SystemTime::now();
    let summary = capture.stop().expect("capture summary");

    let expected = pattern_sha256(seed, BYTES);
    assert!(
        sent.completed && received.completed,
        "sent {sent:?} received {received:?}"
    );
    assert_eq!(sent.sha256, expected);
    assert_eq!(received.sha256, expected, "B received different bytes");
    assert_eq!(received.bytes, BYTES);

    let app_bps = received.goodput_bps().expect("goodput");
    let wire = goodput(
        &summary.records,
        &PacketFilter::to(Protocol::Tcp, to),
        started,
        ended,
    );
    let counters = topo.link(LinkId::A1).counters(UP);
    println!(
        "10 MB A->B: application goodput {:.1} Mbit/s, on B's wire {} payload bytes; capture {} frames \
         ({} kernel drops), pcap {}; link A1 up {counters:?}",
        app_bps / 1e6,
        wire.bytes,
        summary.frames,
        summary.kernel_drops,
        pcap.display()
    );
    // 100 Mbit/s links: proves the rate limit works, not the machine's speed.
    assert!(app_bps > 20e6 && app_bps < 130e6, "goodput {app_bps} bit/s");
    assert_eq!(wire.bytes, BYTES, "capture saw every payload byte once");
    assert_eq!(counters.dropped_oversize, 0, "offloads are off");
    // The pcap reads back, one packet per frame seen.
    let file = std::fs::File::open(&pcap).expect("pcap written");
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("pcap header");
    let mut packets = 0u64;
    while let Some(packet) = reader.next_packet() {
        packet.expect("pcap packet");
        packets += 1;
    }
    assert_eq!(packets, summary.frames);
    let _ = std::fs::remove_file(&pcap);
}
