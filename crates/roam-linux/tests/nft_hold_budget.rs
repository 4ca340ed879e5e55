//! Hold (seed 001 FIG. 3 step 305) and return-routability budgets in the kernel data
//! plane, with real kernel traffic between two namespaces.

mod common_nft;
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common_nft::*;
use roam_core::translate::Protocol;
use roam_core::{DataPlane, DataPlaneCommand};

/// While X's entry holds, X's packets of the flow are dropped (counted) and nothing of it
/// reaches Y; released, the stream finishes intact.
#[test]
fn a_held_flow_sends_nothing_until_released() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let TwoPlanes { lab, mut px, mut py } = TwoPlanes::open(a, |ns, _| ns.plane());
    let total = 4 << 20;
    let s = lab.stream(StreamSpec {
        total,
        before_move: 512 << 10,
        ..StreamSpec::default()
    });
    lab.move_x();
    lab.cut_old_path();
    let (original, current) = (s.original, s.current);
    install_move(&mut px, &mut py, original, current, true);
    // Whatever was in flight lands; from then on, nothing.
    std::thread::sleep(Duration::from_millis(150));
    let (r0, y0) = (
        s.stream.received.load(Ordering::Relaxed),
        py.counters().unwrap().ingress_translated,
    );
    let h0 = px.counters().unwrap().hold_dropped;
    std::thread::sleep(Duration::from_millis(600));
    let (r1, y1) = (
        s.stream.received.load(Ordering::Relaxed),
        py.counters().unwrap().ingress_translated,
    );
    let h1 = px.counters().unwrap().hold_dropped;
    assert_eq!(r0, r1, "bytes reached Y while X held the flow");
    assert_eq!(y0, y1, "packets of the flow reached Y while X held it");
    assert!(
        h1.packets > h0.packets,
        "the held flow's packets are counted: {h0:?} -> {h1:?}"
    );
    assert!(r1 < total);
    // Released: the peer confirmed.
    px.apply(&install(original, current, false)).unwrap();
    s.finish_intact(Duration::from_secs(20));
    assert!(px.counters().unwrap().egress_translated.packets > 0);
}

/// Y's peer X moved to x2, which has not proven it receives there: Y's translated
/// datagrams to x2 stop at min(cap, 3 x received) bytes; untranslated ones (the
/// endpoint's own control messages) are not limited; Validated lifts the limit.
#[test]
fn an_unvalidated_address_gets_a_budget_until_validated() {
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
    install_move(&mut px, &mut py, original, current, false);
    py.apply(&DataPlaneCommand::Unvalidated {
        remote: a.x2,
        cap: 4000,
        received: 500,
    })
    .unwrap();
    assert_eq!(py.entries().budgets.len(), 1);
    assert_eq!(py.entries().budgets[0].limit, 1500);

    // 228 bytes a datagram on the wire: six fit under 1500.
    let mut refused = 0;
    for i in 0..20u8 {
        if uy.send_to(&[i; 200], sa(a.x1, 41000)).is_err() {
            // The output hook's drop is reported to the sender (EPERM).
            refused += 1;
        }
    }
    let got = drain_udp(&ux);
    assert_eq!(got.len(), 6, "datagrams within the budget");
    assert_eq!(refused, 14);
    assert_eq!(py.counters().unwrap().budget_dropped.packets, 14);

    // Not translated (another socket, straight to x2): not limited.
    let ux2 = udp_socket(&lab.x, sa(a.x2, 43000));
    let uy2 = udp_socket(&lab.y, sa(a.y, 5354));
    for i in 0..10u8 {
        uy2.send_to(&[i; 200], sa(a.x2, 43000)).unwrap();
    }
    assert_eq!(drain_udp(&ux2).len(), 10);

    py.apply(&DataPlaneCommand::Validated { remote: a.x2 }).unwrap();
    assert!(py.entries().budgets.is_empty());
    for i in 0..20u8 {
        uy.send_to(&[i; 200], sa(a.x1, 41000)).unwrap();
    }
    assert_eq!(drain_udp(&ux).len(), 20);

    // Unreachable lifts it too (the endpoint moves the flows back itself).
    py.apply(&DataPlaneCommand::Unvalidated {
        remote: a.x2,
        cap: 0,
        received: 0,
    })
    .unwrap();
    assert!(uy.send_to(b"x", sa(a.x1, 41000)).is_err());
    py.apply(&DataPlaneCommand::Unreachable { remote: a.x2 }).unwrap();
    uy.send_to(b"x", sa(a.x1, 41000)).unwrap();
    assert_eq!(drain_udp(&ux).len(), 1);
}

/// Bare ACKs only spend the cap: a TCP receiver behind a budget of zero data bytes still
/// acknowledges everything its moved peer sends (the mover's sender is not stalled while
/// the path is validated); its own data waits for Validated.
#[test]
fn bare_acks_pass_within_the_cap() {
    if !netns_available() {
        return;
    }
    let a = V4;
    let lab = Lab::new(a);
    let mut px = lab.x.plane();
    let mut py = lab.y.plane();
    lab.move_x();
    lab.cut_old_path();
    // A new connection from the old address (x1 stays usable by the stack), translated
    // from the start, as a moved one is.
    let from = sa(a.x1, 40001);
    let to = sa(a.y, 5001);
    let original = tuple(Protocol::Tcp, from, to);
    let current = tuple(Protocol::Tcp, sa(a.x2, 40001), to);
    install_move(&mut px, &mut py, original, current, false);
    let stream = Stream::start(&lab, from, to, 2 << 20, 64 << 10, Duration::from_millis(1));
    stream.wait_received(64 << 10, Duration::from_secs(5));
    py.apply(&DataPlaneCommand::Unvalidated {
        remote: a.x2,
        cap: 1 << 20,
        received: 0,
    })
    .unwrap();
    // 2 MiB need far more than an initial window: the ACKs get through.
    stream.wait_received(2 << 20, Duration::from_secs(10));
    py.apply(&DataPlaneCommand::Validated { remote: a.x2 }).unwrap();
    let (sent, got) = stream.finish(Duration::from_secs(20));
    assert_eq!((&sent.error, &got.error), (&None, &None));
    assert_eq!(sent.sha256, got.sha256);
}
