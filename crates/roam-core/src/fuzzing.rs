//! Bodies of the fuzz targets (`fuzz/fuzz_targets/`), kept in the library so that an
//! ordinary test replays the committed corpus on stable Rust.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::translate::{
    AddressMapping, Direction, FlowMapping, Protocol, Side, TableChange, TranslationTable, Tuple, Verdict,
    packet_flow, translate,
};

/// The `rewrite` target. The first byte picks which entries the table holds; the rest
/// is a packet, translated both ways. Invariants, beyond "does not panic":
/// - translation never changes a packet's length;
/// - any verdict but `Translated` (and any error) leaves the bytes as they were;
/// - a packet whose tuple is an entry's original is translated and then, through the
///   peer's mirrored table, comes back byte for byte.
pub fn rewrite(data: &[u8]) {
    let Some((&selector, pkt)) = data.split_first() else {
        return;
    };
    let table = table(selector, pkt);
    for dir in [Direction::Egress, Direction::Ingress] {
        let mut p = pkt.to_vec();
        match translate(&table, dir, &mut p) {
            Ok(Verdict::Translated) => {
                assert_eq!(p.len(), pkt.len(), "translation keeps the length");
                if dir == Direction::Egress
                    && let Ok(crate::translate::PacketFlow::Transport(t)) = packet_flow(dir, pkt)
                    && let Some(m) = table.flow_by_original(&t)
                {
                    // The peer, whose entry mirrors ours, undoes exactly what we did.
                    let mut mirror = TranslationTable::new(0);
                    mirror
                        .apply(&TableChange::InstallFlow(FlowMapping {
                            original: m.original.reversed(),
                            current: m.current.reversed(),
                            hold: false,
                        }))
                        .expect("a mirror of a valid entry is valid");
                    let mut back = p.clone();
                    assert_eq!(
                        translate(&mirror, Direction::Ingress, &mut back),
                        Ok(Verdict::Translated)
                    );
                    assert!(
                        same_but_zero_form(&back, pkt),
                        "the peer's ingress restores the bytes:\n{back:?}\n{pkt:?}"
                    );
                }
            }
            Ok(_) | Err(_) => assert_eq!(p, pkt, "no translation, no change"),
        }
        let _ = packet_flow(dir, pkt);
    }
}

/// Equal, or different only in 16-bit words (checksum fields, all at even offsets)
/// that are `ffff` on one side and `0000` on the other: one's complement's two zeros.
/// A checksum of `ffff` (negative zero) verifies like `0000`; RFC 1624 eqn. 3 never
/// produces it, so a round trip through the rewriter may turn it into `0000`. Both are
/// correct.
fn same_but_zero_form(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.chunks(2)
            .zip(b.chunks(2))
            .all(|(x, y)| x == y || (x == [0, 0] && y == [0xff, 0xff]) || (x == [0xff, 0xff] && y == [0, 0]))
}

/// A table whose entries are derived from the packet's own tuple (so that the fuzzer
/// reaches the rewrite paths), chosen by `selector`.
fn table(selector: u8, pkt: &[u8]) -> TranslationTable {
    let mut table = TranslationTable::new(u64::from(selector));
    let flow = match packet_flow(Direction::Egress, pkt) {
        Ok(crate::translate::PacketFlow::Transport(t)) => t,
        _ => Tuple::new(Protocol::Tcp, sock(false, 1, 1000), sock(false, 2, 2000)),
    };
    let v4 = flow.is_ipv4();
    let current = Tuple::new(
        flow.protocol,
        sock(!v4, selector.wrapping_add(100), 3000),
        sock(!v4, 200, 4000),
    );
    let entry = FlowMapping {
        original: flow,
        current,
        hold: selector & 0x10 != 0,
    };
    let reversed = |m: FlowMapping| FlowMapping {
        original: m.original.reversed(),
        current: m.current.reversed(),
        hold: false,
    };
    if selector & 1 != 0 {
        let _ = table.apply(&TableChange::InstallFlow(entry));
    }
    if selector & 2 != 0 {
        // An entry whose current is the packet's tuple (egress conflicts, ingress hits).
        let other = Tuple::new(flow.protocol, sock(!v4, 7, 7), sock(!v4, 8, 8));
        let _ = table.apply(&TableChange::InstallFlow(FlowMapping {
            original: other,
            current: flow,
            hold: false,
        }));
    }
    if selector & 4 != 0 {
        for side in [Side::Local, Side::Remote] {
            let a = if side == Side::Local {
                flow.local.ip()
            } else {
                flow.remote.ip()
            };
            let _ = table.apply(&TableChange::InstallAddress(AddressMapping {
                side,
                original: a,
                current: addr(!v4, selector.wrapping_add(50)),
            }));
        }
    }
    if selector & 8 != 0 {
        // Mappings for the reversed direction too, so ingress paths are reached.
        let _ = table.apply(&TableChange::InstallFlow(reversed(entry)));
    }
    table
}

fn addr(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }
}

fn sock(v6: bool, n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(addr(v6, n), port)
}
