//! The namespace lab with roamd in tunnel mode (`data_plane = "tunnel"`) on both hosts:
//! after A's move, a real kernel TCP stream's packets travel whole inside UDP datagrams
//! between the hosts' current addresses (roamd's tunnel port), and the stream crosses
//! the move byte for byte. Needs root; `ROAM_SKIP_NETNS=1` skips it. Timing and goodput
//! are reported (`roam lab --data-plane tunnel`), never asserted.

mod support;

use roam_lab::topology::Family;
use support::{assert_one_flow_moved, assert_survived, lab_with, roamd};

fn survives_in_tunnel_mode(family: Family) {
    let Some(r) = lab_with("tcp-move", family, |o| o.data_plane = "tunnel".into()) else {
        return;
    };
    assert_survived(&r, 1);
    assert_eq!(r.data_plane, "tunnel");
    assert_one_flow_moved(&r);
    for host in ["a", "b"] {
        let s = roamd(&r, host);
        assert_eq!(s["data_plane"], "tunnel", "{r}");
        let c = &s["data_plane_counters"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{host}: no counter in {c}"));
        let t = &c["plane"]["tunnel"];
        // The moved flow went through the tunnel both ways...
        assert!(n(&t["wrapped"]) > 0, "{host}: {c}");
        assert!(n(&t["unwrapped"]) > 0, "{host}: {c}");
        // ...every datagram read was the peer's and was unwrapped, and nothing was
        // diverted by tc (tunnel mode installs no filter).
        assert_eq!(n(&c["from_tunnel"]), n(&t["unwrapped"]), "{host}: {c}");
        let dropped = &t["dropped"];
        for (reason, count) in dropped.as_object().expect("drop reasons") {
            assert_eq!(count, 0, "{host}: {reason} in {c}");
        }
        assert_eq!(n(&c["from_wire"]), 0, "{host}: {c}");
        assert_eq!((n(&c["filters"]), n(&c["interfaces"])), (0, 0), "{host}: {c}");
        for zero in [
            "send_errors",
            "write_errors",
            "read_errors",
            "kernel_errors",
            "refused_commands",
        ] {
            assert_eq!(n(&c[zero]), 0, "{host}: {zero} in {c}");
        }
        assert_eq!(n(&t["wrap_refused"]), 0, "{host}: {c}");
        assert_eq!(c["plane"]["malformed"], serde_json::json!({}), "{host}: {c}");
        // Whatever waited while the move was unconfirmed left, none was dropped.
        assert_eq!(n(&c["plane"]["held"]), n(&c["plane"]["released"]), "{host}: {c}");
        assert_eq!(n(&c["plane"]["hold_overflow"]), 0, "{host}: {c}");
    }
}

#[test]
fn a_tcp_stream_survives_a_move_in_tunnel_mode_ipv4() {
    survives_in_tunnel_mode(Family::V4);
}

#[test]
fn a_tcp_stream_survives_a_move_in_tunnel_mode_ipv6() {
    survives_in_tunnel_mode(Family::V6);
}
