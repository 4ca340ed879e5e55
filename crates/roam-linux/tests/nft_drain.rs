//! Drain (seed 001 FIG. 4 step 404): after a flow's current tuple changes, what still
//! arrives under the previous one is translated for a while, then not; removed flows'
//! chains are tidied away once nothing can use them.

mod common_nft;
mod support;

use std::time::{Duration, Instant};

use common_nft::*;
use roam_core::translate::{Protocol, TableChange};
use roam_core::{DataPlane, DataPlaneCommand};
use roam_linux::nft::{NftConfig, NftDataPlane};
use support::wait_for;

#[test]
fn the_previous_current_tuple_drains_then_stops() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let lab = Lab::new(a);
    let drain = Duration::from_millis(700);
    let mut py = NftDataPlane::open_with(NftConfig {
        netns: Some(lab.y.path()),
        drain,
        ..NftConfig::default()
    })
    .unwrap();
    let x3: std::net::IpAddr = "10.77.0.4".parse().unwrap();
    lab.x.ip(&format!("addr add {}/24 dev {}", a.x2, lab.x_if));
    lab.x.ip(&format!("addr add {x3}/24 dev {}", lab.x_if));
    let uy = udp_socket(&lab.y, sa(a.y, 5353));
    // Y's view of X's flow: original remote x1, then x2, then x3.
    let original = tuple(Protocol::Udp, sa(a.y, 5353), sa(a.x1, 41000));
    let at = |ip| tuple(Protocol::Udp, sa(a.y, 5353), sa(ip, 41000));
    py.apply(&install(original, at(a.x2), false)).unwrap();
    // What X's old path still delivers is sent from x2 (not translated by X).
    let old_path = udp_socket(&lab.x, sa(a.x2, 41000));
    let seen_from = |s: &std::net::UdpSocket| {
        s.send_to(b"late", sa(a.y, 5353)).unwrap();
        let got = drain_udp(&uy);
        assert_eq!(got.len(), 1);
        got[0].1
    };
    assert_eq!(seen_from(&old_path), sa(a.x1, 41000), "x2 is current");
    let started = Instant::now();
    py.apply(&install(original, at(x3), false)).unwrap();
    assert_eq!(py.entries().draining.len(), 1);
    assert_eq!(seen_from(&old_path), sa(a.x1, 41000), "x2 drains");
    assert!(started.elapsed() < drain, "the check ran within the drain time");
    std::thread::sleep(drain + Duration::from_millis(100));
    assert_eq!(seen_from(&old_path), sa(a.x2, 41000), "x2 drained");

    // Removing the entry: x3 drains in turn, and the flow's ingress chain stays until
    // its alias is gone from the kernel; then maintain deletes it.
    let from_x3 = udp_socket(&lab.x, sa(x3, 41000));
    py.apply(&DataPlaneCommand::Table(TableChange::RemoveFlow { original }))
        .unwrap();
    assert_eq!(seen_from(&from_x3), sa(a.x1, 41000), "x3 drains");
    let chains = || {
        lab.y
            .exec("nft", &["list", "table", "inet", "roam"])
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with("chain i") && !l.contains("ingress"))
            .count()
    };
    py.maintain().unwrap();
    assert_eq!(chains(), 1, "the chain is kept while an alias may use it");
    std::thread::sleep(drain + Duration::from_millis(100));
    assert_eq!(seen_from(&from_x3), sa(x3, 41000), "x3 drained");
    wait_for(Duration::from_secs(8), "maintain to delete the chain", || {
        py.maintain().unwrap();
        (chains() == 0).then_some(())
    });
    assert!(py.entries().draining.is_empty());
}

/// Tidying: shadowed egress rules are compacted and lifted budgets deleted, with the
/// translation unchanged.
#[test]
fn maintain_compacts_without_changing_the_translation() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let TwoPlanes { lab, mut px, mut py } = TwoPlanes::open(a, |ns, _| ns.plane());
    let UdpFlow {
        ux,
        uy,
        original,
        current,
    } = UdpFlow::open(&lab, 41000);
    lab.move_x();
    install_move(&mut px, &mut py, original, current, true);
    px.apply(&install(original, current, false)).unwrap();
    py.apply(&DataPlaneCommand::Unvalidated {
        remote: a.x2,
        cap: 1000,
        received: 100,
    })
    .unwrap();
    py.apply(&DataPlaneCommand::Validated { remote: a.x2 }).unwrap();
    let rules = |ns: &Netns| ns.exec("nft", &["list", "table", "inet", "roam"]).unwrap();
    assert!(rules(&lab.x).contains("hold_dropped\" drop"));
    assert!(rules(&lab.y).contains("quota bc"));
    px.maintain().unwrap();
    py.maintain().unwrap();
    assert!(
        !rules(&lab.x).contains("hold_dropped\" drop"),
        "{}",
        rules(&lab.x)
    );
    assert!(!rules(&lab.y).contains("quota bc"));
    for i in 0..5u8 {
        ux.send_to(&[i; 10], sa(a.y, 5353)).unwrap();
    }
    let got = drain_udp(&uy);
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(_, f)| *f == sa(a.x1, 41000)));
    for _ in 0..5 {
        uy.send_to(b"back", sa(a.x1, 41000)).unwrap();
    }
    assert_eq!(drain_udp(&ux).len(), 5);
    // Back to the original tuple with the entry kept (current = original): at once an
    // `accept` shadows the translation; tidied, the flow has no egress element.
    px.apply(&install(original, original, false)).unwrap();
    let eg = |ns: &Netns| {
        ns.exec("nft", &["list", "map", "inet", "roam", "eg4udp"])
            .unwrap()
    };
    assert!(eg(&lab.x).contains("10.77.0.1 . 41000"));
    px.maintain().unwrap();
    assert!(!eg(&lab.x).contains("10.77.0.1 . 41000"), "{}", eg(&lab.x));
    ux.send_to(b"plain", sa(a.y, 5353)).unwrap();
    let got = drain_udp(&uy);
    assert_eq!(got.len(), 1);
}
