//! The namespace lab, for sessions other than one bulk stream: a UDP flow across a move,
//! a TCP connection idle during the move and then used both ways, and a connection
//! opened after the move. Needs root (CI runs as root); `ROAM_SKIP_NETNS=1` skips these.
//!
//! Each test checks the facts the scenario is about against the topology's addresses,
//! not only the scenario's own verdict: the address each application saw, roamd's view
//! of each flow, and the counters of the one move. Timing is reported, never asserted.

mod support;

use std::net::SocketAddr;

use roam_lab::scenario::{LabReport, RoamdFlow, SessionReport};
use roam_lab::topology::{ADDRESSES, Family};
use support::{assert_no_drops, assert_one_flow_moved, assert_survived, lab, roamd};

fn session<'r>(r: &'r LabReport, name: &str) -> &'r SessionReport {
    r.sessions
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no session {name:?}:\n{r}"))
}

fn flow<'s>(s: &'s SessionReport, host: &str, r: &LabReport) -> &'s RoamdFlow {
    s.roamd
        .iter()
        .find(|f| f.host == host)
        .unwrap_or_else(|| panic!("roamd on {host} did not list session {}:\n{r}", s.name))
}

/// A's socket kept A's original address, and roamd on both hosts translates the flow to
/// A's new one: on A the local end, on B the remote end.
fn assert_translated(r: &LabReport, s: &SessionReport, family: Family) {
    let (old, new) = (ADDRESSES.a_subnet1.get(family), ADDRESSES.a_subnet2.get(family));
    assert_eq!(s.a_local.ip(), old, "{r}");
    let a = flow(s, "a", r);
    assert_eq!(a.original, (s.a_local, s.b_local), "{r}");
    assert_eq!(
        a.current,
        (SocketAddr::new(new, s.a_local.port()), s.b_local),
        "{r}"
    );
    let b = flow(s, "b", r);
    assert_eq!(b.original, (s.b_local, s.a_local), "{r}");
    assert_eq!(
        b.current,
        (s.b_local, SocketAddr::new(new, s.a_local.port())),
        "{r}"
    );
}

fn udp_flow_survives_a_move(family: Family) {
    let Some(r) = lab("udp-move", family) else { return };
    // The capture on B's link saw the datagrams stop at the move and come back.
    assert_survived(&r, 1);
    let s = session(&r, "udp a<->b");
    assert!(s.ok, "{r}");
    // B's socket saw only A's original address, before and after the move: the move
    // was carried by translation, not by the application.
    assert_eq!(s.b_saw, [s.a_local], "{r}");
    assert_translated(&r, s, family);
    let d = s.datagrams.as_ref().expect("datagram counts");
    assert!(d.resumed_a_to_b && d.resumed_b_to_a, "{r}");
    assert_eq!((d.out_of_order_a_to_b, d.out_of_order_b_to_a), (0, 0), "{r}");
    assert!(d.b_received > 0 && d.a_received > 0, "{r}");
    // Both directions: intact digests of what arrived.
    assert_eq!(r.streams.len(), 2, "{r}");
    for st in &r.streams {
        assert_eq!(st.sent_sha256, st.received_sha256, "{r}");
    }
    assert_one_flow_moved(&r);
}

#[test]
fn a_udp_flow_survives_a_move_ipv4() {
    udp_flow_survives_a_move(Family::V4);
}

#[test]
fn a_udp_flow_survives_a_move_ipv6() {
    udp_flow_survives_a_move(Family::V6);
}

#[test]
fn an_idle_connection_carries_data_both_ways_after_a_move() {
    let Some(r) = lab("idle-move", Family::V4) else {
        return;
    };
    assert!(r.ok, "{r}");
    assert_eq!(r.moves.len(), 1, "{r}");
    // Before the move each way, then B->A and A->B after it: all byte-exact.
    let names: Vec<&str> = r.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a->b before the move",
            "b->a before the move",
            "b->a after the idle move",
            "a->b after the idle move"
        ],
        "{r}"
    );
    for st in &r.streams {
        assert!(st.ok && st.bytes_sent == st.bytes_received, "{r}");
    }
    let s = session(&r, "idle tcp");
    assert!(s.ok, "{r}");
    assert_eq!(s.b_saw, [s.a_local], "{r}");
    assert_translated(&r, s, Family::V4);
    assert_one_flow_moved(&r);
    assert_no_drops(&r);
}

#[test]
fn a_new_connection_after_a_move_uses_the_new_address_untranslated() {
    let Some(r) = lab("new-connection", Family::V4) else {
        return;
    };
    assert!(r.ok, "{r}");
    let new = ADDRESSES.a_subnet2.get(Family::V4);

    // The connection opened before the move is translated at both ends...
    let moved = session(&r, "moved tcp");
    assert!(!moved.opened_after_move, "{r}");
    assert_translated(&r, moved, Family::V4);

    // ...and the one opened after it is not: the kernel gave it A's new address, B
    // accepted it from there, and roamd lists it as it is on the wire.
    let fresh = session(&r, "new tcp");
    assert!(fresh.opened_after_move && fresh.ok, "{r}");
    assert_eq!(fresh.a_local.ip(), new, "{r}");
    assert_eq!(fresh.b_saw, [fresh.a_local], "{r}");
    let a = flow(fresh, "a", &r);
    assert_eq!(a.original, (fresh.a_local, fresh.b_local), "{r}");
    let b = flow(fresh, "b", &r);
    assert_eq!(b.original, (fresh.b_local, fresh.a_local), "{r}");
    for f in [a, b] {
        assert!(!f.translated(), "{r}");
        assert_eq!(f.moves, 0, "{r}");
    }
    let new_streams: Vec<_> = r.streams.iter().filter(|s| s.name.starts_with("new:")).collect();
    assert_eq!(new_streams.len(), 2, "{r}");
    for st in new_streams {
        assert!(st.ok && st.bytes_received > 0, "{r}");
    }
    // On the wire too: A's kernel data plane translated less toward A than the new
    // connection alone carried B->A, and B's less away from B (the moved connection
    // carried only 100 kB B->A, plus ACKs).
    let new_b_to_a = r
        .streams
        .iter()
        .find(|s| s.name == "new: b->a")
        .expect("stream")
        .bytes_received;
    let translated = |host, way: &str| {
        roamd(&r, host)["data_plane_counters"][way]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {way} counter on {host}:\n{r}"))
    };
    assert!(translated("a", "ingress_translated") < new_b_to_a, "{r}");
    assert!(translated("b", "egress_translated") < new_b_to_a, "{r}");
    // Only the old connection was moved: the new one needed no update.
    assert_one_flow_moved(&r);
    assert_no_drops(&r);
}
