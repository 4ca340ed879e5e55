//! The standard topology: it builds, carries both families at the RTT it was given, and
//! A can move between its subnets and back.

mod support;

use std::time::Duration;

use roam_lab::ping::{PingOptions, ping};
use roam_lab::topology::{A_IF1, A_IF2, Family, Subnet, Topology, TopologyOptions};

#[test]
fn a_reaches_b_over_both_families_at_the_configured_rtt() {
    if !support::lab_enabled() {
        return;
    }
    let topo = Topology::build(TopologyOptions::default()).expect("topology");
    let options = PingOptions {
        count: 20,
        interval: Duration::from_millis(20),
        ..PingOptions::default()
    };
    for family in Family::BOTH {
        let report = ping(topo.a(), topo.b_address(family), &options).expect("ping");
        let median = report.median().expect("some replies");
        println!(
            "ping {family:?} A->B: {} of {} replies, rtt min {:?} median {median:?} max {:?}",
            report.received(),
            report.sent,
            report.min().unwrap(),
            report.max().unwrap()
        );
        assert_eq!(report.loss(), 0.0, "{family:?}: {report:?}");
        // 20 ms configured: this checks that the emulator delays frames, not the
        // machine's speed.
        assert!(
            median >= Duration::from_millis(15) && median <= Duration::from_millis(60),
            "{family:?}: median RTT {median:?}"
        );
    }
}

#[test]
fn a_moves_to_subnet_two_and_back_and_reaches_b_from_each() {
    if !support::lab_enabled() {
        return;
    }
    let topo = Topology::build(TopologyOptions::default()).expect("topology");
    let quick = PingOptions {
        count: 3,
        interval: Duration::from_millis(10),
        ..PingOptions::default()
    };
    let addresses_on = |device: &str| {
        let out = topo.a().ip(&["-br", "addr", "show", "dev", device]).unwrap();
        out.stdout
    };
    for (step, expected) in [(0, Subnet::One), (1, Subnet::Two), (2, Subnet::One)] {
        if step == 1 {
            let times = topo.move_a().expect("move");
            println!("move 1->2 took {:?}", times.duration());
        } else if step == 2 {
            let times = topo.move_a_back().expect("move back");
            println!("move 2->1 took {:?}", times.duration());
        }
        assert_eq!(topo.a_subnet(), expected);
        let (on, off) = match expected {
            Subnet::One => (A_IF1, A_IF2),
            Subnet::Two => (A_IF2, A_IF1),
        };
        for family in Family::BOTH {
            let a = topo.a_address(family).to_string();
            assert!(
                addresses_on(on).contains(&a),
                "{a} not on {on}: {}",
                addresses_on(on)
            );
            assert!(!addresses_on(off).contains(&a));
            // The kernel picks the new address as source towards B.
            let route = topo
                .a()
                .ip(&["route", "get", &topo.b_address(family).to_string()])
                .unwrap();
            assert!(
                route.stdout.contains(&format!("src {a}")),
                "{family:?}: {}",
                route.stdout
            );
            let report = ping(topo.a(), topo.b_address(family), &quick).expect("ping");
            assert_eq!(report.loss(), 0.0, "step {step} {family:?}: {report:?}");
        }
    }
    // A move from where A is not is refused and changes nothing.
    assert!(topo.move_a_back().is_err());
    assert_eq!(topo.a_subnet(), Subnet::One);
}

/// Why the topology sets what it sets: R validates sources (BCP 38), and A needs
/// `arp_announce=2` to resolve R on the new link while it still sends from its old
/// address (roam keeps it for existing sockets).
#[test]
fn after_a_move_r_drops_stale_sources_and_arp_announce_keeps_arp_working() {
    if !support::lab_enabled() {
        return;
    }
    let topo = Topology::build(TopologyOptions::default()).expect("topology");
    assert_eq!(
        topo.router().sysctl_get("net.ipv4.conf.all.rp_filter").unwrap(),
        "1"
    );
    assert_eq!(
        topo.a().sysctl_get("net.ipv4.conf.all.arp_announce").unwrap(),
        "2"
    );
    topo.move_a().expect("move");
    // The old addresses stay for existing sockets, as roam keeps them (on lo: routing
    // never picks them for new connections).
    let old = topo.addresses().a_subnet1;
    topo.a()
        .ip_batch(&format!(
            "addr add {}/32 dev lo\naddr add {}/128 dev lo nodad\n",
            old.v4, old.v6
        ))
        .expect("old addresses on lo");
    let from_old = |family: Family| {
        ping(
            topo.a(),
            topo.b_address(family),
            &PingOptions {
                count: 3,
                interval: Duration::from_millis(10),
                wait: Duration::from_millis(300),
                source: Some(old.get(family)),
                ..PingOptions::default()
            },
        )
        .expect("ping")
    };
    let router_v4 = topo.addresses().router_subnet2.v4.to_string();
    let neighbour = || {
        let out = topo.a().ip(&["neigh", "show", "dev", A_IF2]).unwrap().stdout;
        out.lines()
            .find(|l| l.starts_with(&format!("{router_v4} ")))
            .unwrap_or("")
            .to_owned()
    };
    for family in Family::BOTH {
        assert_eq!(
            from_old(family).loss(),
            1.0,
            "{family:?}: R forwarded a stale source"
        );
    }
    // A's ARP request for R carried a2's address as sender: R answered.
    assert!(neighbour().contains("lladdr"), "{}", neighbour());
    let rules = topo
        .router()
        .exec(&["nft", "list", "table", "ip6", "roamlab"])
        .unwrap()
        .stdout;
    assert!(
        rules.contains("counter packets 3 "),
        "IPv6 stale source not dropped by R: {rules}"
    );

    // The counterfactual: with arp_announce=0 the request names the old address as
    // sender, R's strict rp_filter ignores it, and A never learns R's MAC.
    topo.a()
        .sysctl(&[
            ("net.ipv4.conf.all.arp_announce", "0"),
            ("net.ipv4.conf.a2.arp_announce", "0"),
        ])
        .unwrap();
    topo.a().ip(&["neigh", "flush", "dev", A_IF2]).unwrap();
    from_old(Family::V4);
    assert!(!neighbour().contains("lladdr"), "{}", neighbour());
}
