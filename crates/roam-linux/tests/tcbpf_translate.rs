//! The tc-BPF data plane translates real kernel traffic between two namespaces: a TCP
//! stream survives its host's move with every byte (IPv4, IPv6, a new port), what
//! crosses the wire after the move carries only the current tuple (a capture on the
//! link: AF_PACKET sees ingress before tc and egress after it, i.e. the wire), UDP
//! checksums stay valid (with and without RFC 768's optional checksum), a held flow's
//! packets are dropped until it is released, refused batches change nothing, and
//! dropping the plane detaches it.
//!
//! The nft tests' "cut" of the old path (an nft table on Y) cannot serve here: tc
//! ingress runs before netfilter's prerouting and tc egress after postrouting, so that
//! table would see the translated packets. The capture is the check instead.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use roam_core::translate::{FlowMapping, Protocol, TableChange};
use roam_core::{DataPlane, DataPlaneCommand};
use roam_linux::tcbpf::{KernelEntries, TcBpfConfig, TcBpfDataPlane, TcBpfError};
use support::two_hosts::*;
use support::{Netns, netns_available, veth};

/// Whether the BPF object is in this build. Without clang the tests fail with a clear
/// message, unless `ROAM_SKIP_BPF=1` asks to skip them.
fn bpf_available() -> bool {
    if roam_linux::tcbpf::available() {
        return true;
    }
    if std::env::var("ROAM_SKIP_BPF").is_ok_and(|v| v == "1") {
        eprintln!("ROAM_SKIP_BPF=1: skipping a tc-BPF test (built without clang)");
        return false;
    }
    panic!(
        "roam-linux was built without clang, so it has no tc-BPF object: install clang and \
         libbpf-dev and rebuild, or set ROAM_SKIP_BPF=1 to skip these tests"
    );
}

fn available() -> bool {
    netns_available() && bpf_available()
}

fn plane(ns: &Netns, iface: &str, max_flows: u32) -> TcBpfDataPlane {
    TcBpfDataPlane::open(TcBpfConfig {
        interfaces: vec![iface.to_owned()],
        netns: Some(ns.path()),
        max_flows,
    })
    .expect("open the tc-BPF data plane")
}

/// A plane on each host of `lab`, on its link, with room for 1024 flows.
fn planes(lab: Lab) -> TwoPlanes<TcBpfDataPlane> {
    TwoPlanes::on(lab, |ns, link| plane(ns, link, 1024))
}

/// The kernel's maps say what the mirror says: an egress element for every entry that
/// translates or holds, an ingress element for every entry that translates.
fn assert_in_step(p: &TcBpfDataPlane) {
    let entries = p.entries();
    let expected = KernelEntries {
        egress: entries
            .iter()
            .filter(|m| m.current != m.original || m.hold)
            .copied()
            .collect(),
        ingress: entries
            .iter()
            .filter(|m| m.current != m.original)
            .map(|m| FlowMapping { hold: false, ..*m })
            .collect(),
    };
    assert_eq!(p.kernel_entries().unwrap(), expected);
}

/// The TCP segments on the wire between X and Y's `port`, as (src, dst).
fn wire_segments(capture: &Capture, port: u16, limit: Duration) -> Vec<(SocketAddr, SocketAddr)> {
    let mut out = Vec::new();
    while let Some(r) = capture.find(limit, |r| {
        tcp_segment(r).is_some() && (r.src.port() == port || r.dst.port() == port)
    }) {
        out.push((r.src, r.dst));
        if out.len() >= 2000 {
            break;
        }
    }
    out
}

/// X streams to Y, moves mid-stream, both planes get the move's entries: the stream
/// completes with the same SHA-256 at both ends, and after the entries are in, every
/// segment of it on the wire carries X's current address (both directions).
///
/// With offloads on (veth's default), the stack hands the plane CHECKSUM_PARTIAL
/// packets and the receiver does not verify TCP checksums; with a new port the
/// offloads are off, so every checksum is computed in full and verified.
fn stream_survives_a_move(a: Addrs, new_port: Option<u16>) {
    if !available() {
        return;
    }
    let lab = Lab::new(a);
    if new_port.is_some() {
        lab.software_checksums();
    }
    // Attached before the stream starts, with empty maps: untranslated traffic passes.
    let mut t = planes(lab);
    let s = t.lab.stream(StreamSpec {
        total: 8 << 20,
        new_port,
        ..StreamSpec::default()
    });
    assert_eq!(t.px.counters().unwrap().egress_translated.packets, 0);
    let capture = Capture::open(&t.lab.y, &t.lab.y_if);
    t.move_x(s.original, s.current, OldPath::Kept);
    // Segments already on their way under the old tuple are not the plane's business.
    std::thread::sleep(Duration::from_millis(50));
    capture.clear();
    let current_local = s.current.local;
    s.finish_intact(Duration::from_secs(20));

    let wire = wire_segments(&capture, 5001, Duration::from_millis(300));
    assert!(wire.len() > 10, "segments after the move: {}", wire.len());
    for (src, dst) in &wire {
        let x_end = if src.port() == 5001 { dst } else { src };
        assert_eq!(*x_end, current_local, "on the wire: {src} -> {dst}");
    }
    assert!(wire.iter().any(|(s, _)| *s == current_local), "X -> Y seen");
    assert!(wire.iter().any(|(_, d)| *d == current_local), "Y -> X seen");

    let (cx, cy) = (t.px.counters().unwrap(), t.py.counters().unwrap());
    assert!(cx.egress_translated.packets > 0, "{cx:?}");
    assert!(cy.ingress_translated.packets > 0, "{cy:?}");
    assert!(cy.egress_translated.packets > 0 && cx.ingress_translated.packets > 0);
    assert_eq!((cx.errors.packets, cy.errors.packets), (0, 0));
    // (TCP over IPv6 counts in the same MIB.)
    let csum_errors = |ns: &Netns| ns.mib("Tcp", "InCsumErrors");
    assert_eq!((csum_errors(&t.lab.x), csum_errors(&t.lab.y)), (0, 0));
    assert_eq!(t.px.entries().len(), 1);
    assert_in_step(&t.px);
    assert_eq!(t.px.kernel_entries().unwrap().egress.len(), 1);
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

#[test]
fn a_tcp_stream_survives_a_move_with_a_new_local_port_over_ipv6() {
    stream_survives_a_move(V6, Some(40123));
}

/// UDP both ways with the local port and address translated, checksums computed and
/// verified in software (offloads off): with RFC 768 checksums and with none (zero,
/// which must stay zero: a wrong non-zero one is dropped and counted).
///
/// First with X's entry only, Y's socket talking to X's current tuple: a rewrite that
/// got a checksum wrong is then caught by Y's or X's stack (with entries at both ends,
/// the peer's reverse rewrite of the same field would cancel the error). Then with both
/// entries, Y's socket seeing the original tuple.
fn udp_with_port_translation(a: Addrs, zero_checksum: bool) {
    if !available() {
        return;
    }
    let lab = Lab::new(a);
    lab.software_checksums();
    let mut t = planes(lab);
    let u = UdpFlow::open(&t.lab, 41999);
    if zero_checksum {
        u.no_checksums();
    }
    let (x, y) = (u.original.local, u.original.remote);
    // The flow exists before the move (one datagram each way), and so do the neighbour
    // entries: tc egress runs after neighbour resolution, which is for the *original*
    // addresses, and an IPv6 host answers neighbour solicitations only for addresses of
    // the interface asked (x1 will be on `lo`). A TCP flow keeps its entries confirmed
    // by its ACKs; see the module docs of roam_linux::tcbpf.
    u.ux.send_to(b"before", y).unwrap();
    assert_eq!(drain_udp(&u.uy).len(), 1);
    u.uy.send_to(b"before", x).unwrap();
    assert_eq!(drain_udp(&u.ux).len(), 1);
    t.lab.move_x();
    let capture = Capture::open(&t.lab.y, &t.lab.y_if);
    let counters =
        |t: &TwoPlanes<TcBpfDataPlane>| format!("X: {:?}, Y: {:?}", t.px.counters(), t.py.counters());
    t.px.apply(&install(u.original, u.current, false)).unwrap();
    u.exchange(u.current.local, || counters(&t));
    t.py.apply(&install(u.original.reversed(), u.current.reversed(), false))
        .unwrap();
    u.exchange(x, || counters(&t));
    // On the wire, both ways, both times: X's current end only.
    let mut seen = 0;
    while let Some(r) = capture.find(Duration::from_millis(300), |r| {
        r.protocol == roam_lab::capture::Protocol::Udp
    }) {
        let x_end = if r.src.port() == 5353 { r.dst } else { r.src };
        assert_eq!(x_end, u.current.local);
        seen += 1;
    }
    assert_eq!(seen, 80, "datagrams on the wire");
    let (cx, cy) = (t.px.counters().unwrap(), t.py.counters().unwrap());
    assert_eq!(cx.egress_translated.packets, 40, "{cx:?}");
    assert_eq!(cx.ingress_translated.packets, 40, "{cx:?}");
    assert_eq!(cy.ingress_translated.packets, 20, "{cy:?}");
    assert_eq!(cy.egress_translated.packets, 20, "{cy:?}");
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

/// A held entry drops the flow's egress packets (and counts them); released, the same
/// socket's datagrams arrive translated. Removing the entry stops the translation.
#[test]
fn hold_drops_until_released_and_remove_stops_translating() {
    if !available() {
        return;
    }
    let a = V4;
    let TwoPlanes { lab, mut px, mut py } = planes(Lab::new(a));
    let UdpFlow {
        ux,
        uy,
        original,
        current,
    } = UdpFlow::open(&lab, 41000);
    lab.move_x();
    install_move(&mut px, &mut py, original, current, true);
    for _ in 0..5 {
        // tc's drop is not reported to a UDP sender (ENOBUFS is swallowed without
        // IP_RECVERR), unlike nft's EPERM at the output hook.
        ux.send_to(b"held", sa(a.y, 5353)).unwrap();
    }
    assert!(drain_udp(&uy).is_empty(), "a held flow's datagrams arrived");
    let c = px.counters().unwrap();
    assert_eq!(c.hold_dropped.packets, 5, "{c:?}");
    assert_eq!(c.egress_translated.packets, 0, "{c:?}");

    px.apply(&install(original, current, false)).unwrap();
    ux.send_to(b"released", sa(a.y, 5353)).unwrap();
    let got = drain_udp(&uy);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, sa(a.x1, 41000));
    assert_eq!(px.counters().unwrap().egress_translated.packets, 1);

    // Gone from both ends: the datagram leaves from x1 (on `lo`, still reachable on
    // this link) untranslated, and nothing is counted.
    px.apply(&DataPlaneCommand::Table(TableChange::RemoveFlow { original }))
        .unwrap();
    py.apply(&DataPlaneCommand::Table(TableChange::RemoveFlow {
        original: original.reversed(),
    }))
    .unwrap();
    assert_eq!(px.kernel_entries().unwrap(), KernelEntries::default());
    assert_eq!(py.kernel_entries().unwrap(), KernelEntries::default());
    assert!(px.entries().is_empty());
    ux.send_to(b"plain", sa(a.y, 5353)).unwrap();
    let got = drain_udp(&uy);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, sa(a.x1, 41000));
    let c = px.counters().unwrap();
    assert_eq!(c.egress_translated.packets, 1, "{c:?}");
    assert_eq!(py.counters().unwrap().ingress_translated.packets, 1);
}

/// A batch that the plane cannot carry out changes nothing: an unsupported command, a
/// table refusal, and the kernel refusing an element (the map is full) midway, after
/// part of the batch was written.
#[test]
fn refused_batches_change_nothing() {
    if !available() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "rbv0", &ns, "rbv1");
    let mut p = plane(&ns, "rbv0", 4);
    let flow = |i: u16| {
        let o = tuple(Protocol::Tcp, sa(V4.x1, 30000 + i), sa(V4.y, 443));
        let c = tuple(Protocol::Tcp, sa(V4.x2, 30000 + i), sa(V4.y, 443));
        (o, c)
    };
    let (o0, c0) = flow(0);
    p.apply(&install(o0, c0, false)).unwrap();
    assert_in_step(&p);
    assert_eq!(p.kernel_entries().unwrap().egress.len(), 1);

    let (o1, c1) = flow(1);
    let err = p
        .apply_batch(&[
            install(o1, c1, false),
            DataPlaneCommand::Validated { remote: V4.y },
        ])
        .unwrap_err();
    assert!(matches!(err, TcBpfError::Unsupported(_)), "{err}");
    // Another original onto c0: the table's one-to-one rule.
    let err = p
        .apply_batch(&[install(o1, c1, false), install(flow(2).0, c0, false)])
        .unwrap_err();
    assert!(matches!(err, TcBpfError::Table(_)), "{err}");
    assert_eq!(p.entries().len(), 1);
    assert_in_step(&p);
    assert_eq!(p.kernel_entries().unwrap().egress.len(), 1);

    // Four elements per map: the fifth flow does not fit, after three were written.
    // The batch also moves flow 0 elsewhere: that must be undone too.
    let (_, c0b) = flow(100);
    let mut batch = vec![install(o0, c0b, false)];
    batch.extend((1..5).map(|i| {
        let (o, c) = flow(i);
        install(o, c, false)
    }));
    let err = p.apply_batch(&batch).unwrap_err();
    assert!(matches!(err, TcBpfError::MapUpdate { .. }), "{err}");
    eprintln!("refused: {err}");
    assert_eq!(p.entries().len(), 1);
    assert_eq!(p.entries()[0].current, c0);
    assert_in_step(&p);
    assert_eq!(p.kernel_entries().unwrap().egress.len(), 1);
    let c = p.counters().unwrap();
    assert_eq!((c.batches, c.failed_batches), (1, 3), "{c:?}");
    // And what fits still goes in. (A batch needs room for its new elements before the
    // ones it replaces go: flow 0's move would not fit next to three more.)
    p.apply_batch(&batch[1..4]).unwrap();
    assert_in_step(&p);
    assert_eq!(p.kernel_entries().unwrap().ingress.len(), 4);
}

/// The maps follow the mirror through every kind of batch: new flows (TCP, UDP,
/// IPv6), a changed current, a current passed from one flow to another in one batch,
/// a hold and its release, a flow back at its original tuple, the same flow twice in
/// one batch, removals.
#[test]
fn the_maps_follow_every_kind_of_change() {
    if !available() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "mfv0", &ns, "mfv1");
    let mut p = plane(&ns, "mfv0", 64);
    let t = |proto, l: &str, r: &str| tuple(proto, l.parse().unwrap(), r.parse().unwrap());
    let a = t(Protocol::Tcp, "10.1.0.1:1000", "10.9.0.9:443");
    let b = t(Protocol::Tcp, "10.1.0.2:1000", "10.9.0.9:443");
    let u = t(Protocol::Udp, "10.1.0.1:1000", "10.9.0.9:443");
    let v6 = t(Protocol::Tcp, "[fd00::1]:1000", "[fd00::9]:443");
    let ca = t(Protocol::Tcp, "10.2.0.1:1000", "10.9.0.9:443");
    let cb = t(Protocol::Tcp, "10.2.0.2:1000", "10.9.0.9:443");
    let cu = t(Protocol::Udp, "10.2.0.1:2000", "10.9.0.9:443");
    let c6 = t(Protocol::Tcp, "[fd00::2]:1001", "[fd00::9]:443");
    let remove = |original| DataPlaneCommand::Table(TableChange::RemoveFlow { original });
    let steps: Vec<Vec<DataPlaneCommand>> = vec![
        vec![
            install(a, ca, false),
            install(b, cb, false),
            install(u, cu, false),
            install(v6, c6, true),
        ],
        // a moves on; v6 is released.
        vec![
            install(a, t(Protocol::Tcp, "10.3.0.1:1001", "10.9.0.9:443"), false),
            install(v6, c6, false),
        ],
        // b moves to ca and a takes b's current in one batch: cb's ingress element
        // changes hands (rewritten, not deleted), a's previous one goes.
        vec![install(b, ca, false), install(a, cb, false)],
        // b back at its original tuple (no elements), then held there (egress only).
        vec![install(b, b, false)],
        vec![install(b, b, true)],
        // The same flow twice in one batch: the last change wins.
        vec![
            install(u, t(Protocol::Udp, "10.4.0.1:9", "10.9.0.9:443"), false),
            install(u, cu, false),
        ],
        vec![remove(a), remove(v6)],
        vec![remove(b), remove(u)],
    ];
    for (i, step) in steps.iter().enumerate() {
        p.apply_batch(step).unwrap_or_else(|e| panic!("step {i}: {e}"));
        assert_in_step(&p);
    }
    assert!(p.entries().is_empty());
    assert_eq!(p.kernel_entries().unwrap(), KernelEntries::default());
}

/// Dropping the plane takes its filters and the clsact qdisc it added away.
#[test]
fn dropping_the_plane_detaches_it() {
    if !available() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "dtv0", &ns, "dtv1");
    let filters = |hook: &str| ns.exec("tc", &["filter", "show", "dev", "dtv0", hook]).unwrap();
    let p = plane(&ns, "dtv0", 16);
    assert!(filters("egress").contains("roam_egress"), "{}", filters("egress"));
    assert!(
        filters("ingress").contains("roam_ingress"),
        "{}",
        filters("ingress")
    );
    assert!(
        filters("egress").contains("direct-action"),
        "{}",
        filters("egress")
    );
    drop(p);
    let qdiscs = ns.exec("tc", &["qdisc", "show", "dev", "dtv0"]).unwrap();
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    // A filter someone else adds after us keeps the qdisc (and itself) in place.
    let p = plane(&ns, "dtv0", 16);
    ns.exec(
        "tc",
        &[
            "filter", "add", "dev", "dtv0", "ingress", "prio", "7", "u32", "match", "u32", "0", "0",
            "flowid", "1:1",
        ],
    )
    .unwrap();
    drop(p);
    assert!(filters("ingress").contains("u32"), "{}", filters("ingress"));
    assert!(
        !filters("ingress").contains("roam_ingress"),
        "{}",
        filters("ingress")
    );
    assert!(
        !filters("egress").contains("roam_egress"),
        "{}",
        filters("egress")
    );
    ns.exec("tc", &["qdisc", "del", "dev", "dtv0", "clsact"]).unwrap();
    // A qdisc that was there before stays, without our filters.
    ns.exec("tc", &["qdisc", "add", "dev", "dtv0", "clsact"]).unwrap();
    let p = plane(&ns, "dtv0", 16);
    p.close().unwrap();
    let qdiscs = ns.exec("tc", &["qdisc", "show", "dev", "dtv0"]).unwrap();
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    assert!(
        !filters("egress").contains("roam_egress"),
        "{}",
        filters("egress")
    );
}
