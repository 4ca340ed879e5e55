//! The TUN data plane translates real kernel traffic between two namespaces: a TCP
//! stream survives its host's move (IPv4, IPv6), a held flow's packets wait in roamd and
//! leave in order once released (with strict reverse-path filtering on), UDP ports are
//! rewritten with valid checksums, and closing the plane leaves nothing in the kernel.
//!
//! The same two-namespace lab as the kernel plane's tests (`common_nft`): X moves from
//! `x1` to `x2` (`x1` kept on `lo`), and Y's link no longer carries `x1` at all.

mod common_nft;
mod support;

use std::time::Duration;

use common_nft::*;
use roam_core::DataPlane;
use roam_core::translate::{Protocol, Tuple};
use roam_linux::tun::{TunConfig, TunDataPlane};

impl Netns {
    /// A TUN data plane in this namespace.
    fn tun_plane(&self) -> TunDataPlane {
        TunDataPlane::open_with(TunConfig {
            netns: Some(self.path()),
            hash_seed: self.name.len() as u64,
            ..TunConfig::default()
        })
        .expect("open the TUN data plane")
    }

    /// Sets a sysctl inside the namespace.
    fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).unwrap();
    }
}

/// The move's entries, Y's first (its tuple is the reverse), as an oracle would.
fn install_move(px: &mut TunDataPlane, py: &mut TunDataPlane, x_orig: Tuple, x_cur: Tuple, hold_x: bool) {
    py.apply(&install(x_orig.reversed(), x_cur.reversed(), false))
        .expect("Y's entry");
    px.apply(&install(x_orig, x_cur, hold_x)).expect("X's entry");
}

/// X streams to Y and moves mid-stream, the old path cut; both planes install the
/// move's entries: the stream completes with the same SHA-256 at both ends, and Y's
/// socket still sees X's original address.
fn stream_survives_a_move(a: Addrs) {
    if !netns_available() {
        return;
    }
    let lab = Lab::new(a);
    let mut px = lab.x.tun_plane();
    let mut py = lab.y.tun_plane();
    let from = sa(a.x1, 40000);
    let to = sa(a.y, 5001);
    let stream = Stream::start(&lab, from, to, 6 << 20, 32 << 10, Duration::from_millis(5));
    assert_eq!(
        stream.peer_seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        from
    );
    stream.wait_received(1 << 20, Duration::from_secs(5));
    lab.move_x();
    lab.cut_old_path();
    let original = tuple(Protocol::Tcp, from, to);
    let current = tuple(Protocol::Tcp, sa(a.x2, 40000), to);
    let started = std::time::Instant::now();
    install_move(&mut px, &mut py, original, current, false);
    // Reported, not asserted: one rule and one diversion per host (netlink).
    eprintln!("both entries installed in {:?}", started.elapsed());
    let (sent, got) = stream.finish(Duration::from_secs(30));
    assert_eq!(sent.error, None, "sender: {sent:?}");
    assert_eq!(got.error, None, "receiver: {got:?}");
    assert_eq!(sent.bytes, 6 << 20);
    assert_eq!((got.bytes, &got.sha256), (sent.bytes, &sent.sha256));
    let (cx, cy) = (px.counters(), py.counters());
    eprintln!("X: {cx:?}\nY: {cy:?}");
    for (c, host) in [(&cx, "X"), (&cy, "Y")] {
        assert!(c.plane.egress_translated > 0, "{host}: {c:?}");
        assert!(c.plane.ingress_translated > 0, "{host}: {c:?}");
        assert_eq!(
            c.from_stack, c.plane.egress_translated,
            "{host}: only the flow is routed in"
        );
        assert_eq!(
            c.from_wire, c.plane.ingress_translated,
            "{host}: only the flow is diverted"
        );
        assert_eq!(
            (c.send_errors, c.write_errors, c.oversize),
            (0, 0, 0),
            "{host}: {c:?}"
        );
        assert!(c.plane.malformed.is_empty(), "{host}: {c:?}");
        // One rule; one diversion on the one interface besides lo.
        assert_eq!((c.rules, c.filters, c.interfaces), (1, 1, 1), "{host}: {c:?}");
    }
    // The checksums the rewriter updated verify at both ends (one TCP MIB for both
    // families).
    for ns in [&lab.x, &lab.y] {
        assert_eq!(ns.mib("Tcp", "InCsumErrors"), 0);
    }
    assert_eq!(px.entries().flows.len(), 1);
}

#[test]
fn a_tcp_stream_survives_a_move_over_ipv4() {
    stream_survives_a_move(V4);
}

#[test]
fn a_tcp_stream_survives_a_move_over_ipv6() {
    stream_survives_a_move(V6);
}

/// X's entry is held after the move (the peer has not confirmed): the stack's packets
/// wait in roamd's queue instead of being dropped, and leave translated once the entry
/// is released. Strict reverse-path filtering on both hosts: what roamd writes into
/// `roam0` passes it (the reverse route of a translated flow is its own rule).
#[test]
fn held_packets_wait_and_leave_once_released_under_strict_rp_filter() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let lab = Lab::new(a);
    for ns in [&lab.x, &lab.y] {
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            ns.sysctl(key, "1");
        }
    }
    let mut px = lab.x.tun_plane();
    let mut py = lab.y.tun_plane();
    let from = sa(a.x1, 40001);
    let to = sa(a.y, 5002);
    let stream = Stream::start(&lab, from, to, 4 << 20, 16 << 10, Duration::from_millis(2));
    stream.wait_received(256 << 10, Duration::from_secs(5));
    lab.move_x();
    lab.cut_old_path();
    let original = tuple(Protocol::Tcp, from, to);
    let current = tuple(Protocol::Tcp, sa(a.x2, 40001), to);
    px.apply(&install(original, current, true))
        .expect("X's held entry");
    // What X's stack sends meanwhile waits in the queue (its retransmissions too).
    let held = wait_for(Duration::from_secs(5), "packets held at X", || {
        let c = px.counters();
        (c.plane.held > 0).then_some(c.plane.held)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        px.counters().plane.egress_translated,
        0,
        "nothing leaves while held"
    );
    install_move(&mut px, &mut py, original, current, false);
    let (sent, got) = stream.finish(Duration::from_secs(30));
    assert_eq!(sent.error, None, "sender: {sent:?}");
    assert_eq!(got.error, None, "receiver: {got:?}");
    assert_eq!((got.bytes, &got.sha256), (sent.bytes, &sent.sha256));
    let (cx, cy) = (px.counters(), py.counters());
    eprintln!("held {held}\nX: {cx:?}\nY: {cy:?}");
    assert!(cx.plane.released >= held, "{cx:?}");
    assert_eq!(cx.plane.hold_overflow, 0, "{cx:?}");
    assert!(cy.plane.ingress_translated > 0 && cx.plane.ingress_translated > 0);
    for ns in [&lab.x, &lab.y] {
        assert_eq!(
            ns.mib("TcpExt", "IPReversePathFilter"),
            0,
            "rp_filter dropped packets"
        );
    }
}

/// UDP both ways with X's local port changed too; checksums computed and verified in
/// software, with RFC 768 checksums and with none.
fn udp_with_port_translation(zero_checksum: bool) {
    if !netns_available() {
        return;
    }
    let a = V4;
    let lab = Lab::new(a);
    lab.software_checksums();
    let mut px = lab.x.tun_plane();
    let mut py = lab.y.tun_plane();
    let ux = udp_socket(&lab.x, sa(a.x1, 41000));
    let uy = udp_socket(&lab.y, sa(a.y, 5353));
    if zero_checksum {
        no_udp_checksum(&ux);
        no_udp_checksum(&uy);
    }
    lab.move_x();
    lab.cut_old_path();
    let original = tuple(Protocol::Udp, sa(a.x1, 41000), sa(a.y, 5353));
    let current = tuple(Protocol::Udp, sa(a.x2, 41999), sa(a.y, 5353));
    install_move(&mut px, &mut py, original, current, false);
    for i in 0..20u8 {
        ux.send_to(&[i; 300], sa(a.y, 5353)).unwrap();
    }
    let at_y = drain_udp(&uy);
    assert_eq!(at_y.len(), 20, "datagrams at Y");
    for (i, (d, from)) in at_y.iter().enumerate() {
        assert_eq!(*from, sa(a.x1, 41000), "Y's socket sees the original tuple");
        assert_eq!(d, &vec![i as u8; 300]);
    }
    for i in 0..20u8 {
        uy.send_to(&[i; 200], sa(a.x1, 41000)).unwrap();
    }
    let at_x = drain_udp(&ux);
    assert_eq!(at_x.len(), 20, "datagrams at X");
    assert!(at_x.iter().all(|(_, from)| *from == sa(a.y, 5353)));
    let (cx, cy) = (px.counters(), py.counters());
    assert_eq!(
        (cx.plane.egress_translated, cx.plane.ingress_translated),
        (20, 20),
        "{cx:?}"
    );
    assert_eq!(
        (cy.plane.egress_translated, cy.plane.ingress_translated),
        (20, 20),
        "{cy:?}"
    );
    assert_eq!(lab.x.mib("Udp", "InCsumErrors"), 0);
    assert_eq!(lab.y.mib("Udp", "InCsumErrors"), 0);
}

#[test]
fn udp_ports_are_translated_with_valid_checksums() {
    udp_with_port_translation(false);
}

#[test]
fn udp_without_checksum_stays_valid() {
    udp_with_port_translation(true);
}

/// Removing the entry removes its rule and diversion; closing the plane removes roam's
/// filter tree, rules and devices: the namespace is as it was.
#[test]
fn entries_and_the_plane_leave_nothing_behind() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let lab = Lab::new(a);
    let mut px = lab.x.tun_plane();
    let original = tuple(Protocol::Tcp, sa(a.x1, 40000), sa(a.y, 5001));
    let current = tuple(Protocol::Tcp, sa(a.x2, 40000), sa(a.y, 5001));
    px.apply(&install(original, current, false)).unwrap();
    let rules = |ns: &Netns| ns.exec("ip", &["rule", "show"]).unwrap();
    let filters = |ns: &Netns| {
        ns.exec("tc", &["filter", "show", "dev", &lab.x_if, "ingress"])
            .unwrap()
    };
    let r = rules(&lab.x);
    assert!(r.contains("ipproto tcp") && r.contains("sport 40000"), "{r}");
    let f = filters(&lab.x);
    assert!(f.contains("mirred") && f.contains("roam0d"), "{f}");
    px.apply(&roam_core::DataPlaneCommand::Table(
        roam_core::translate::TableChange::RemoveFlow { original },
    ))
    .unwrap();
    assert!(!rules(&lab.x).contains("ipproto tcp"), "{}", rules(&lab.x));
    // The former current tuple drains for a while: still diverted.
    assert!(filters(&lab.x).contains("mirred"));
    assert_eq!(px.entries().draining.len(), 1);
    px.close().unwrap();
    assert!(!filters(&lab.x).contains("u32"), "{}", filters(&lab.x));
    let links = lab.x.exec("ip", &["-o", "link", "show"]).unwrap();
    assert!(!links.contains("roam0"), "{links}");
    let routes = lab.x.exec("ip", &["route", "show", "table", "all"]).unwrap();
    assert!(!routes.contains("roam0"), "{routes}");
}
