//! The kernel data plane translates real kernel traffic between two namespaces: a TCP
//! stream survives its host's move (IPv4, IPv6), ports can change (TCP, UDP, UDP without
//! checksum), and flows without an entry are left alone.

mod common_nft;
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common_nft::*;
use roam_core::DataPlane;
use roam_core::translate::Protocol;

/// X streams to Y, moves mid-stream (x1 -> x2, the old path cut), both planes install
/// the move's entries: the stream completes with the same SHA-256 at both ends.
fn stream_survives_a_move(a: Addrs, new_port: Option<u16>) {
    if !netns_available() {
        return;
    }
    let mut t = TwoPlanes::open(a, |ns, _| ns.plane());
    let s = t.lab.stream(StreamSpec {
        new_port,
        ..StreamSpec::default()
    });
    t.move_x(s.original, s.current, OldPath::Cut);
    s.finish_intact(Duration::from_secs(20));
    let (cx, cy) = (t.px.counters().unwrap(), t.py.counters().unwrap());
    assert!(cx.egress_translated.packets > 0, "{cx:?}");
    assert!(cy.ingress_translated.packets > 0, "{cy:?}");
    assert!(cy.egress_translated.packets > 0 && cx.ingress_translated.packets > 0);
    assert_eq!(t.px.entries().flows.len(), 1);
    eprintln!("X: {cx:?}\nY: {cy:?}");
}

#[test]
fn a_tcp_stream_survives_a_move_over_ipv4() {
    stream_survives_a_move(V4, None);
}

#[test]
fn a_tcp_stream_survives_a_move_over_ipv6() {
    stream_survives_a_move(V6, None);
}

#[test]
fn a_tcp_stream_survives_a_move_with_a_new_local_port() {
    stream_survives_a_move(V4, Some(40123));
}

/// The reference: the same move without entries kills the stream (nothing arrives any
/// more), so the tests above show the translation at work, not the lab's leniency.
#[test]
fn without_entries_the_stream_stalls_after_the_move() {
    if !netns_available() {
        return;
    }
    let lab = Lab::new(V4);
    let s = lab.stream(StreamSpec {
        total: 64 << 20,
        ..StreamSpec::default()
    });
    lab.move_x();
    lab.cut_old_path();
    std::thread::sleep(Duration::from_millis(300));
    let before = s.stream.received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let after = s.stream.received.load(Ordering::Relaxed);
    s.stream.stop.store(true, Ordering::Relaxed);
    assert_eq!(before, after, "data still arrives without translation entries");
}

/// UDP both ways with the local port translated, checksums computed and verified in
/// software; with RFC 768 checksums and with none (zero, which nft would break on a
/// port rewrite without the second rule).
fn udp_with_port_translation(a: Addrs, zero_checksum: bool) {
    if !netns_available() {
        return;
    }
    let lab = Lab::new(a);
    lab.software_checksums();
    let mut t = TwoPlanes::on(lab, |ns, _| ns.plane());
    let u = UdpFlow::open(&t.lab, 41999);
    if zero_checksum {
        u.no_checksums();
    }
    t.move_x(u.original, u.current, OldPath::Cut);
    // Y's socket sees the original tuple.
    u.exchange(u.original.local, || {
        format!("X: {:?}, Y: {:?}", t.px.counters(), t.py.counters())
    });
    let (cx, cy) = (t.px.counters().unwrap(), t.py.counters().unwrap());
    assert_eq!(cx.egress_translated.packets, 20, "{cx:?}");
    assert_eq!(cy.ingress_translated.packets, 20, "{cy:?}");
    assert_eq!(cy.egress_translated.packets, 20, "{cy:?}");
    assert_eq!(cx.ingress_translated.packets, 20, "{cx:?}");
    assert_eq!(t.lab.udp_checksum_errors(), (0, 0));
}

#[test]
fn udp_ports_are_translated_with_valid_checksums_over_ipv4() {
    udp_with_port_translation(V4, false);
}

#[test]
fn udp_without_checksum_stays_valid_over_ipv4() {
    udp_with_port_translation(V4, true);
}

#[test]
fn udp_ports_are_translated_with_valid_checksums_over_ipv6() {
    udp_with_port_translation(V6, false);
}

/// With a moved flow translated, other flows (another port on the old address, a new
/// connection from the new address) cross unchanged and are not counted.
#[test]
fn unrelated_flows_are_not_touched() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let mut t = TwoPlanes::open(a, |ns, _| ns.plane());
    let u = UdpFlow::open(&t.lab, 41000);
    t.lab.move_x();
    t.install_move(u.original, u.current, false);
    // The same original address, another port; and the new address.
    for from in [sa(a.x1, 41001), sa(a.x2, 42000)] {
        let other = udp_socket(&t.lab.x, from);
        for _ in 0..5 {
            other.send_to(b"other", sa(a.y, 5353)).unwrap();
        }
        let got = drain_udp(&u.uy);
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|(_, f)| *f == from), "{got:?} from {from}");
    }
    // A TCP connection from the new address, same server port.
    let stream = Stream::start(
        &t.lab,
        sa(a.x2, 40000),
        sa(a.y, 5001),
        1 << 20,
        64 << 10,
        Duration::ZERO,
    );
    let peer = stream.peer_seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(peer, sa(a.x2, 40000));
    let (s, r) = stream.finish(Duration::from_secs(10));
    assert_eq!((s.error, r.error), (None, None));
    assert_eq!(s.sha256, r.sha256);
    let (cx, cy) = (t.px.counters().unwrap(), t.py.counters().unwrap());
    assert_eq!(cx.egress_translated.packets, 0, "{cx:?}");
    assert_eq!(cy.ingress_translated.packets, 0, "{cy:?}");
    // Entries can be listed and removed; removing them leaves the plane empty.
    t.px.apply(&roam_core::DataPlaneCommand::Table(
        roam_core::translate::TableChange::RemoveFlow { original: u.original },
    ))
    .unwrap();
    assert!(t.px.entries().flows.is_empty());
}

/// Address entries (seed 002's virtual/actual address) translate every flow of the
/// address, whatever its ports; a flow entry beats them.
#[test]
fn address_entries_translate_every_flow_of_the_address() {
    if !netns_available() {
        return;
    }
    use roam_core::translate::{AddressMapping, Side, TableChange};
    let a = V4;
    let lab = Lab::new(a);
    lab.software_checksums();
    let mut px = lab.x.plane();
    let mut py = lab.y.plane();
    let uy = udp_socket(&lab.y, sa(a.y, 5353));
    let socks: Vec<_> = [41000, 41001]
        .iter()
        .map(|p| udp_socket(&lab.x, sa(a.x1, *p)))
        .collect();
    lab.move_x();
    lab.cut_old_path();
    let mapping = |side| {
        roam_core::DataPlaneCommand::Table(TableChange::InstallAddress(AddressMapping {
            side,
            original: a.x1,
            current: a.x2,
        }))
    };
    py.apply(&mapping(Side::Remote)).unwrap();
    px.apply(&mapping(Side::Local)).unwrap();
    // A flow entry for the second socket moves it to another port too.
    let flow_o = tuple(Protocol::Udp, sa(a.x1, 41001), sa(a.y, 5353));
    let flow_c = tuple(Protocol::Udp, sa(a.x2, 45001), sa(a.y, 5353));
    install_move(&mut px, &mut py, flow_o, flow_c, false);
    let capture = Capture::open(&lab.y, &lab.y_if);
    for s in &socks {
        s.send_to(b"via address", sa(a.y, 5353)).unwrap();
    }
    // On the wire: the address entry's x2:41000 and the flow entry's x2:45001.
    let mut wire = Vec::new();
    while let Some(f) = capture.find(Duration::from_millis(300), |f| udp_source(f).is_some()) {
        wire.push(udp_source(&f).unwrap());
        if wire.len() == 2 {
            break;
        }
    }
    wire.sort();
    assert_eq!(wire, vec![sa(a.x2, 41000), sa(a.x2, 45001)]);
    let mut got: Vec<_> = drain_udp(&uy).into_iter().map(|(_, f)| f).collect();
    got.sort();
    assert_eq!(got, vec![sa(a.x1, 41000), sa(a.x1, 41001)]);
    for p in [41000, 41001] {
        uy.send_to(b"back", sa(a.x1, p)).unwrap();
    }
    for s in &socks {
        let back = drain_udp(s);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1, sa(a.y, 5353));
    }
    let cy = py.counters().unwrap();
    assert_eq!(cy.ingress_translated.packets, 2, "{cy:?}");
    assert_eq!(lab.y.mib("Udp", "InCsumErrors"), 0);
    assert_eq!(lab.x.mib("Udp", "InCsumErrors"), 0);
    assert_eq!(px.entries().addresses.len(), 1);
}

/// The source of a captured UDP datagram.
fn udp_source(r: &roam_lab::capture::PacketRecord) -> Option<std::net::SocketAddr> {
    (r.protocol == roam_lab::capture::Protocol::Udp).then_some(r.src)
}
