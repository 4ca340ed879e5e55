//! Seed 000's scenarios, run in the simulator over IPv4 and IPv6 with several seeds.
//! Each checks that every stream arrived byte for byte (SHA-256 at both ends) and the
//! scenario's own expectations (handover gap bounds, conflicts resolved, retries).
//! A failing run prints its scenario, family and seed, so `roam sim` replays it.

use roam_sim::{Family, Report, RunOptions, builtin};

mod common;
use common::{run_all, scenario};

#[test]
fn the_demo_moves_a_20mb_stream_with_a_gap_of_a_few_round_trips() {
    for r in run_all("demo", &[1]) {
        assert_eq!(r.flows[0].bytes_received, 20_000_000);
        assert_eq!(r.moves.len(), 1);
        let m = &r.moves[0];
        assert!(m.confirmed_after_ms.unwrap() < 40.0, "{m:?}");
        // The move's gap is bounded by the scenario (100 ms, 5 RTT); no RTO.
        assert!(m.gap_ms.unwrap() < 100.0, "{m:?}");
    }
}

#[test]
fn a_move_mid_stream_keeps_streams_in_both_directions_whole() {
    run_all("move-mid-stream", &[1, 2, 3]);
}

#[test]
fn two_quick_moves_end_on_the_second_address_and_the_stream_survives() {
    for r in run_all("move-twice", &[1, 2, 3]) {
        assert_eq!(r.moves.len(), 2);
        // The second move superseded the first before it was confirmed.
        assert!(r.moves[1].confirmed_after_ms.is_some());
        let a = &r.hosts[0];
        assert!(
            a.address
                .as_deref()
                .unwrap()
                .contains(if r.family == Family::Ipv4 {
                    "10.0.4."
                } else {
                    ":4::"
                })
        );
    }
}

#[test]
fn lost_control_messages_are_recovered_by_retry() {
    for r in run_all("lossy-control", &[1, 2, 3]) {
        assert!(r.control_retransmits > 0, "30% loss and no retransmission?");
        assert!(r.network.lost > 0);
    }
}

#[test]
fn a_udp_flow_keeps_its_4_tuple_across_a_move() {
    for r in run_all("udp-across-move", &[1, 2, 3]) {
        assert_eq!(r.flows[0].protocol, "udp");
        assert!(r.moves[0].gap_ms.unwrap() < 150.0);
    }
}

#[test]
fn an_idle_connection_moves_and_resumes_in_both_directions() {
    for r in run_all("idle-move", &[1, 2, 3]) {
        assert_eq!(r.moves[0].gap_ms, None, "nothing was flowing at the move");
        assert!(r.moves[0].confirmed_after_ms.is_some());
        assert_eq!(r.flows.len(), 2, "both directions");
    }
}

#[test]
fn a_third_host_with_the_old_address_and_port_is_kept_apart() {
    for r in run_all("old-address-reused", &[1, 2, 3]) {
        let b = r.hosts.iter().find(|h| h.name == "b").unwrap();
        assert_eq!(b.counters["conflicts_resolved"], 1);
        assert!(r.flows.iter().any(|f| f.name == "second" && f.ok));
        assert!(r.flows.iter().any(|f| f.name == "first" && f.ok));
    }
}

#[test]
fn each_move_message_of_seeds_000_001_and_003_moves_tcp_and_udp() {
    for r in run_all("move-messages", &[1, 2]) {
        for mover in ["a", "c", "d"] {
            let h = r.hosts.iter().find(|h| h.name == mover).unwrap();
            assert_eq!(h.counters["flows_moved"], 2, "{mover}: one TCP and one UDP flow");
        }
    }
}

#[test]
fn a_move_over_a_lossy_reordering_duplicating_path_loses_nothing() {
    run_all("rough-path", &[1, 2]);
}

#[test]
fn the_same_seed_replays_a_run_exactly() {
    let sc = scenario("move-mid-stream");
    let opts = RunOptions {
        family: Family::Ipv6,
        seed: 42,
        pcap: None,
    };
    let a = roam_sim::run(&sc, &opts).unwrap();
    let b = roam_sim::run(&sc, &opts).unwrap();
    let strip = |r: &Report| {
        let mut v = serde_json::to_value(r).unwrap();
        v.as_object_mut().unwrap().remove("wall_ms");
        v
    };
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn a_run_writes_a_pcap_a_person_can_open() {
    let path = std::env::temp_dir().join(format!("roam-sim-test-{}.pcap", std::process::id()));
    let sc = scenario("udp-across-move");
    let r = roam_sim::run(
        &sc,
        &RunOptions {
            family: Family::Ipv4,
            seed: 1,
            pcap: Some(path.clone()),
        },
    )
    .unwrap();
    assert!(r.ok);
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    // Classic pcap, LINKTYPE_RAW (101): raw IPv4/IPv6 packets.
    let mut reader = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
    assert_eq!(reader.header().datalink, pcap_file::DataLink::RAW);
    let mut n = 0;
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        assert_eq!(p.data[0] >> 4, 4, "an IPv4 packet");
        n += 1;
    }
    assert!(n > 1000, "{n} packets");
}

#[test]
fn every_builtin_scenario_parses_and_names_itself() {
    for (name, _) in builtin::SCENARIOS {
        let sc = scenario(name);
        assert_eq!(&sc.name, name);
        assert!(!sc.description.is_empty(), "{name} needs a description");
    }
}
