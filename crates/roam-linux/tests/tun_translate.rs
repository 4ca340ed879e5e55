//! The TUN data plane translates real kernel traffic between two namespaces: a TCP
//! stream survives its host's move (IPv4, IPv6), a held flow's packets wait in roamd and
//! leave in order once released (with strict reverse-path filtering on), UDP ports are
//! rewritten with valid checksums, and closing the plane leaves nothing in the kernel.
//!
//! The same two-namespace lab as the other planes' tests (`support::two_hosts`): X moves
//! from `x1` to `x2` (`x1` kept on `lo`), and Y's link no longer carries `x1` at all.

mod support;

use std::time::Duration;

use roam_core::DataPlane;
use roam_core::translate::Protocol;
use roam_linux::tun::{TunConfig, TunDataPlane};
use support::two_hosts::*;
use support::{Netns, netns_available, wait_for};

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

/// X streams to Y and moves mid-stream, the old path cut; both planes install the
/// move's entries: the stream completes with the same SHA-256 at both ends, and Y's
/// socket still sees X's original address.
fn stream_survives_a_move(a: Addrs) {
    if !netns_available() {
        return;
    }
    let mut t = TwoPlanes::open(a, |ns, _| ns.tun_plane());
    let s = t.lab.stream(StreamSpec::default());
    t.move_x(s.original, s.current, OldPath::Cut);
    s.finish_intact(Duration::from_secs(30));
    let (cx, cy) = (t.px.counters(), t.py.counters());
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
    for ns in [&t.lab.x, &t.lab.y] {
        assert_eq!(ns.mib("Tcp", "InCsumErrors"), 0);
    }
    assert_eq!(t.px.entries().flows.len(), 1);
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
    let mut t = TwoPlanes::on(lab, |ns, _| ns.tun_plane());
    let s = t.lab.stream(StreamSpec {
        port: 40001,
        server_port: 5002,
        total: 4 << 20,
        chunk: 16 << 10,
        pause: Duration::from_millis(2),
        before_move: 256 << 10,
        ..StreamSpec::default()
    });
    t.lab.move_x();
    t.lab.cut_old_path();
    t.px.apply(&install(s.original, s.current, true))
        .expect("X's held entry");
    // What X's stack sends meanwhile waits in the queue (its retransmissions too).
    let held = wait_for(Duration::from_secs(5), "packets held at X", || {
        let c = t.px.counters();
        (c.plane.held > 0).then_some(c.plane.held)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        t.px.counters().plane.egress_translated,
        0,
        "nothing leaves while held"
    );
    t.install_move(s.original, s.current, false);
    s.finish_intact(Duration::from_secs(30));
    let (cx, cy) = (t.px.counters(), t.py.counters());
    eprintln!("held {held}\nX: {cx:?}\nY: {cy:?}");
    assert!(cx.plane.released >= held, "{cx:?}");
    assert_eq!(cx.plane.hold_overflow, 0, "{cx:?}");
    assert!(cy.plane.ingress_translated > 0 && cx.plane.ingress_translated > 0);
    for ns in [&t.lab.x, &t.lab.y] {
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
    let lab = Lab::new(V4);
    lab.software_checksums();
    let mut t = TwoPlanes::on(lab, |ns, _| ns.tun_plane());
    let u = UdpFlow::open(&t.lab, 41999);
    if zero_checksum {
        u.no_checksums();
    }
    t.move_x(u.original, u.current, OldPath::Cut);
    // Y's socket sees the original tuple.
    u.exchange(u.original.local, || {
        format!("X: {:?}, Y: {:?}", t.px.counters(), t.py.counters())
    });
    let (cx, cy) = (t.px.counters(), t.py.counters());
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
    assert_eq!(t.lab.udp_checksum_errors(), (0, 0));
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
