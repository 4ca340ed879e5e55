//! The namespace lab with roamd's userspace TUN data plane (`data_plane = "tun"`) on
//! both hosts: a real kernel TCP stream crosses A's move byte for byte, every packet of
//! the moved flow passing through roamd on both ends. Needs root; `ROAM_SKIP_NETNS=1`
//! skips it. Timing is reported (`roam lab --data-plane tun`), never asserted.

mod support;

use roam_lab::topology::Family;
use support::{assert_one_flow_moved, assert_survived, lab_with, roamd};

fn survives_with_the_tun_plane(family: Family) {
    let Some(r) = lab_with("tcp-move", family, |o| o.data_plane = "tun".into()) else {
        return;
    };
    assert_survived(&r, 1);
    assert_eq!(r.data_plane, "tun");
    assert_one_flow_moved(&r);
    for host in ["a", "b"] {
        let s = roamd(&r, host);
        assert_eq!(s["data_plane"], "tun", "{r}");
        let c = &s["data_plane_counters"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{host}: no counter in {c}"));
        // The moved flow went through roamd both ways, and nothing else did: all that
        // tc diverted was translated (by the entry, or by its drain alias once the
        // stream's end removed it).
        assert!(n(&c["plane"]["egress_translated"]) > 0, "{host}: {c}");
        assert!(n(&c["plane"]["ingress_translated"]) > 0, "{host}: {c}");
        assert_eq!(
            n(&c["from_wire"]),
            n(&c["plane"]["ingress_translated"]) + n(&c["plane"]["drained"]),
            "{host}: {c}"
        );
        for zero in [
            "send_errors",
            "write_errors",
            "read_errors",
            "oversize",
            "kernel_errors",
            "refused_commands",
        ] {
            assert_eq!(n(&c[zero]), 0, "{host}: {zero} in {c}");
        }
        assert_eq!(c["plane"]["malformed"], serde_json::json!({}), "{host}: {c}");
        // Whatever waited while the move was unconfirmed left, none was dropped.
        assert_eq!(n(&c["plane"]["held"]), n(&c["plane"]["released"]), "{host}: {c}");
        assert_eq!(n(&c["plane"]["hold_overflow"]), 0, "{host}: {c}");
    }
}

#[test]
fn a_tcp_stream_survives_a_move_through_the_tun_plane_ipv4() {
    survives_with_the_tun_plane(Family::V4);
}

#[test]
fn a_tcp_stream_survives_a_move_through_the_tun_plane_ipv6() {
    survives_with_the_tun_plane(Family::V6);
}
