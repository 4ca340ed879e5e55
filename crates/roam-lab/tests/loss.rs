//! Random loss set on a running link shows in a ping flood at about its rate, and goes
//! away when reset, by hand or on its own.

mod support;

use std::time::{Duration, Instant};

use roam_lab::ping::{PingOptions, ping};
use roam_lab::topology::{DOWN, Family, LinkId, Topology, TopologyOptions, UP};

#[test]
fn loss_set_at_run_time_shows_in_a_ping_flood_and_resets() {
    if !support::lab_enabled() {
        return;
    }
    let seed = 0x1055;
    println!("seed {seed:#x}");
    let topo = Topology::build(TopologyOptions {
        seed,
        ..TopologyOptions::default()
    })
    .expect("topology");
    let link = topo.link(LinkId::A1);
    let b = topo.b_address(Family::V4);
    let flood = PingOptions {
        count: 1000,
        interval: Duration::from_millis(1),
        wait: Duration::from_millis(500),
        ..PingOptions::default()
    };

    // 20% on A's uplink only: each request crosses it once, replies not at all.
    link.set_loss(UP, 0.2);
    let lossy = ping(topo.a(), b, &flood).expect("ping");
    let counters = link.counters(UP);
    println!(
        "20% loss on A1 up: ping flood lost {:.1}% ({} of {}); link dropped {} by loss",
        lossy.loss() * 100.0,
        usize::from(lossy.sent) - lossy.received(),
        lossy.sent,
        counters.dropped_loss
    );
    assert!((0.12..=0.28).contains(&lossy.loss()), "loss {}", lossy.loss());
    assert!(counters.dropped_loss > 100);
    assert_eq!(link.counters(DOWN).dropped_loss, 0);

    link.set_loss(UP, 0.0);
    let clean = ping(topo.a(), b, &flood).expect("ping");
    println!("loss reset: ping flood lost {:.1}%", clean.loss() * 100.0);
    // The link drops nothing more by loss. (A reply can still miss ping's deadline on
    // a machine busy with other work: seen once in 1,000 while a benchmark ran.)
    assert_eq!(link.counters(UP).dropped_loss, counters.dropped_loss);
    assert!(clean.loss() < 0.01, "loss {}", clean.loss());

    // A timed change reverts on its own.
    let started = Instant::now();
    link.set_loss_for(DOWN, 1.0, Duration::from_millis(300));
    let quick = PingOptions {
        count: 20,
        interval: Duration::from_millis(5),
        wait: Duration::from_millis(100),
        ..PingOptions::default()
    };
    let blackout = ping(topo.a(), b, &quick).expect("ping");
    assert_eq!(blackout.loss(), 1.0, "{blackout:?}");
    std::thread::sleep(Duration::from_millis(350).saturating_sub(started.elapsed()));
    assert_eq!(link.shape(DOWN).loss, 0.0);
    let after = ping(topo.a(), b, &quick).expect("ping");
    assert_eq!(after.loss(), 0.0, "{after:?}");
}
