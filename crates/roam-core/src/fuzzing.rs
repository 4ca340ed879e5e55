//! Bodies of the fuzz targets (`fuzz/fuzz_targets/`), kept in the library so that an
//! ordinary test replays the committed corpus on stable Rust.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::translate::checksum;
use crate::translate::{
    AddressMapping, Direction, FlowMapping, PacketFlow, Protocol, Side, TableChange, TranslationTable, Tuple,
    Verdict, packet_flow, translate,
};

/// The `rewrite` target. The first byte picks which entries the table holds (derived
/// from the packet's own tuple, or from the tuple an ICMP error quotes, so that the
/// fuzzer reaches the rewrite paths); the rest is a packet, translated both ways.
/// Invariants, beyond "does not panic":
/// - translation never changes a packet's length;
/// - any verdict but `Translated` (and any error) leaves the bytes as they were;
/// - ingress never holds; an empty table never translates, holds or conflicts;
/// - a packet whose checksums verified before translation verifies after;
/// - a packet translated by a flow entry then carries that entry's other tuple, and
///   the peer's mirrored table, translating the other way, restores it byte for byte.
pub fn rewrite(data: &[u8]) {
    let Some((&selector, pkt)) = data.split_first() else {
        return;
    };
    let table = table(selector, pkt);
    let empty = TranslationTable::new(0);
    let verified = checksums_verify(pkt);
    for dir in [Direction::Egress, Direction::Ingress] {
        let mut p = pkt.to_vec();
        let verdict = translate(&table, dir, &mut p);
        assert_eq!(p.len(), pkt.len(), "translation keeps the length");
        match verdict {
            Ok(Verdict::Translated) => {
                if verified {
                    assert!(
                        checksums_verify(&p),
                        "checksums verified before, not after: {p:02x?}"
                    );
                }
                after_flow_translation(&table, dir, pkt, &p);
            }
            Ok(v) => {
                assert_eq!(p, pkt, "{v:?} leaves the packet unchanged");
                assert!(
                    !(dir == Direction::Ingress && v == Verdict::Hold),
                    "hold gates egress only"
                );
            }
            Err(e) => {
                assert_eq!(p, pkt, "an error leaves the packet unchanged");
                assert!(!e.reason().is_empty());
            }
        }
        let mut q = pkt.to_vec();
        let v = translate(&empty, dir, &mut q);
        assert!(matches!(v, Ok(Verdict::Untouched) | Err(_)), "empty table: {v:?}");
        assert_eq!(q, pkt);
        // packet_flow parses as translate does.
        assert_eq!(packet_flow(dir, pkt).is_err(), v.is_err());
    }
}

/// `p` is `pkt` translated by `table` in `dir`. If a flow entry did it, the packet now
/// carries the entry's other tuple; and the peer, whose entry mirrors ours, undoes
/// exactly what we did (our egress is its ingress, and the other way round).
fn after_flow_translation(table: &TranslationTable, dir: Direction, pkt: &[u8], p: &[u8]) {
    let Ok(PacketFlow::Transport(t)) = packet_flow(dir, pkt) else {
        return;
    };
    let (m, expect) = match dir {
        Direction::Egress => match table.flow_by_original(&t) {
            Some(m) => (m, m.current),
            None => return,
        },
        Direction::Ingress => match table.flow_by_current(&t) {
            Some(m) => (m, m.original),
            None => return,
        },
    };
    assert_eq!(packet_flow(dir, p), Ok(PacketFlow::Transport(expect)));
    let mut mirror = TranslationTable::new(0);
    mirror
        .apply(&TableChange::InstallFlow(FlowMapping {
            original: m.original.reversed(),
            current: m.current.reversed(),
            hold: false,
        }))
        .expect("a mirror of a valid entry is valid");
    let mut back = p.to_vec();
    assert_eq!(
        translate(&mirror, dir.reversed(), &mut back),
        Ok(Verdict::Translated)
    );
    assert!(
        same_but_zero_form(&back, pkt),
        "the peer's {:?} restores the bytes:\n{back:02x?}\n{pkt:02x?}",
        dir.reversed()
    );
}

/// Equal, or different only in 16-bit words (checksum fields, all at even offsets)
/// that are `ffff` on one side and `0000` on the other: one's complement's two zeros.
/// Both verify; RFC 1624 eqn. 3 may produce either form, so a round trip through the
/// rewriter may turn one into the other.
fn same_but_zero_form(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.chunks(2)
            .zip(b.chunks(2))
            .all(|(x, y)| x == y || (x == [0, 0] && y == [0xff, 0xff]) || (x == [0xff, 0xff] && y == [0, 0]))
}

/// Whether every checksum of an IP packet that can be checked verifies, by full
/// recomputation: the IPv4 header; unless the packet is a fragment, TCP, UDP (over IPv4
/// a zero means none; over IPv6 zero is invalid, RFC 8200 §8.1), ICMPv4, ICMPv6, and an
/// IPv4 header quoted by an ICMP error. A packet that does not parse does not verify.
pub fn checksums_verify(pkt: &[u8]) -> bool {
    let Ok(s) = SlicedPacket::from_ip(pkt) else {
        return false;
    };
    let (src, dst, payload, fragmented): (IpAddr, IpAddr, &[u8], bool) = match &s.net {
        Some(NetSlice::Ipv4(v4)) => {
            if !checksum::verifies(0, v4.header().slice()) {
                return false;
            }
            (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
                v4.payload().payload,
                v4.payload().fragmented,
            )
        }
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
            v6.payload().payload,
            v6.payload().fragmented,
        ),
        _ => return false,
    };
    if fragmented {
        return true;
    }
    let pseudo = |proto: u8| checksum::pseudo_header(&src, &dst, proto, payload.len());
    match &s.transport {
        Some(TransportSlice::Tcp(_)) => checksum::verifies(pseudo(6), payload),
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() == 0 {
                src.is_ipv4()
            } else {
                checksum::verifies(pseudo(17), payload)
            }
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            if !checksum::verifies(0, payload) {
                return false;
            }
            // A quoted IPv4 header (RFC 792 errors) must verify too.
            let is_error = matches!(icmp.type_u8(), 3 | 4 | 5 | 11 | 12);
            let quote = payload.get(8..).unwrap_or_default();
            match quote.first() {
                Some(b) if is_error && b >> 4 == 4 => {
                    let ihl = usize::from(b & 0xf) * 4;
                    quote
                        .get(..ihl)
                        .is_some_and(|h| ihl >= 20 && checksum::verifies(0, h))
                }
                _ => true,
            }
        }
        Some(TransportSlice::Icmpv6(_)) => checksum::verifies(pseudo(58), payload),
        _ => true,
    }
}

/// A table whose entries are derived from the packet's own tuple `t` (its egress
/// view; for an ICMP error, the quoted packet's), so that the fuzzer reaches the rewrite
/// paths, chosen by `selector`'s bits. The same packet read as ingress has the tuple
/// `t.reversed()`.
/// - `0x01`: an entry taking `t` elsewhere (egress hits); `0x10` holds it;
/// - `0x02`: an entry whose *current* is `t` (egress conflicts);
/// - `0x04`: address mappings from the packet's addresses (egress hits);
/// - `0x08`: an entry whose current is `t.reversed()` (ingress hits);
/// - `0x20`: address mappings to the packet's addresses (ingress hits);
/// - `0x40`: an identity entry (current == original) for `t.reversed()`, held (it
///   clashes with `0x08`: a refusal);
/// - `0x80`: an entry whose *original* is `t.reversed()` (ingress conflicts, unless
///   `0x08` or `0x40` claims that tuple first).
fn table(selector: u8, pkt: &[u8]) -> TranslationTable {
    let mut table = TranslationTable::new(u64::from(selector));
    let flow = match packet_flow(Direction::Egress, pkt) {
        Ok(PacketFlow::Transport(t) | PacketFlow::IcmpError(t)) => t,
        _ => match addresses(pkt) {
            Some((src, dst)) => Tuple::new(
                Protocol::Tcp,
                SocketAddr::new(src, 1000),
                SocketAddr::new(dst, 2000),
            ),
            None => Tuple::new(Protocol::Tcp, sock(false, 1, 1000), sock(false, 2, 2000)),
        },
    };
    let v6 = !flow.is_ipv4();
    let elsewhere = |n: u8| {
        Tuple::new(
            flow.protocol,
            sock(v6, selector.wrapping_add(n), 3000 + u16::from(n)),
            sock(v6, 200, 4000),
        )
    };
    let mut install = |c: TableChange| {
        // Refusals are part of what is fuzzed; they must leave the table as it was.
        let before = (table.flows(), table.addresses());
        if table.apply(&c).is_err() {
            assert_eq!(
                (table.flows(), table.addresses()),
                before,
                "a refused change changes nothing"
            );
        }
    };
    let flow_entry = |original: Tuple, current: Tuple, hold: bool| {
        TableChange::InstallFlow(FlowMapping {
            original,
            current,
            hold,
        })
    };
    if selector & 0x01 != 0 {
        install(flow_entry(flow, elsewhere(100), selector & 0x10 != 0));
    }
    if selector & 0x02 != 0 {
        install(flow_entry(elsewhere(1), flow, false));
    }
    if selector & 0x04 != 0 {
        for (side, a) in [(Side::Local, flow.local.ip()), (Side::Remote, flow.remote.ip())] {
            install(TableChange::InstallAddress(AddressMapping {
                side,
                original: a,
                current: addr(v6, selector.wrapping_add(50)),
            }));
        }
    }
    if selector & 0x08 != 0 {
        install(flow_entry(elsewhere(2), flow.reversed(), false));
    }
    if selector & 0x20 != 0 {
        for (side, a) in [(Side::Local, flow.remote.ip()), (Side::Remote, flow.local.ip())] {
            install(TableChange::InstallAddress(AddressMapping {
                side,
                original: addr(v6, selector.wrapping_add(60)),
                current: a,
            }));
        }
    }
    if selector & 0x40 != 0 {
        install(flow_entry(flow.reversed(), flow.reversed(), true));
    }
    if selector & 0x80 != 0 {
        install(flow_entry(flow.reversed(), elsewhere(3), false));
    }
    table
}

/// The source and destination addresses of anything that looks like an IP header.
fn addresses(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 => {
            let s: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            Some((Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into()))
        }
        6 => {
            let s: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some((Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into()))
        }
        _ => None,
    }
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

/// The `secure` target: the handshake and the decryption path on arbitrary bytes. The
/// first byte picks what the rest is taken for; the keys and randomness are fixed, so
/// a finding replays. Invariants, beyond "does not panic":
/// - a Handshake Response authenticates only the responder's real key, and a Finish
///   only the initiator's (no one else's key can come out of a forged message);
/// - a sealed message opens only if it is byte for byte what the sender sealed (no
///   tampered message is ever accepted), and a refused one leaves the replay window
///   as it was;
/// - an endpoint with a session and a moved flow, handed the bytes as a datagram from
///   its peer's address, accepts no message and changes no table.
pub fn secure(data: &[u8]) {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use crate::security::{Initiator, Responder, StaticKey};

    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let a = StaticKey::from_bytes([1; 32]);
    let b = StaticKey::from_bytes([2; 32]);
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    match mode % 5 {
        // An Init from anyone: read and answered, or refused.
        0 => {
            if let Ok(mut r) = Responder::read_init(&b, &mut rng, rest) {
                let _ = r.respond(b"");
            }
        }
        // A Response to our Init.
        1 => {
            let Ok((mut i, _)) = Initiator::start(&a, &mut rng) else {
                return;
            };
            if let Ok((key, _)) = i.read_response(rest) {
                assert_eq!(key, b.public(), "a forged Response authenticated a key");
            }
        }
        // A Finish to our Response.
        2 => {
            let Ok((_, m1)) = Initiator::start(&a, &mut rng) else {
                return;
            };
            let Ok(mut r) = Responder::read_init(&b, &mut rng, &m1) else {
                return;
            };
            if r.respond(b"").is_err() {
                return;
            }
            if let Ok((key, _, _)) = r.finish(rest) {
                assert_eq!(key, a.public(), "a forged Finish authenticated a key");
            }
        }
        3 => open_sealed(rest),
        _ => endpoint_datagram(rest),
    }
}

/// The session keys `secure` uses for sealed messages.
pub fn secure_session_keys() -> (roam_wire::SessionKey, u32) {
    (roam_wire::SessionKey::new([0x42; 32]), 0x5eed_0001)
}

fn open_sealed(bytes: &[u8]) {
    use roam_wire::{Frame, NodeId};

    use crate::security::Session;
    use crate::time::Instant;

    let (key, index) = secure_session_keys();
    let peer = NodeId::new(0x5a5a_0001).expect("48 bits");
    let mut s = Session::new(peer, index, 1, key.clone(), key.clone(), Instant::ZERO);
    let Ok(frame) = Frame::parse(bytes) else { return };
    let Ok(msg) = s.open(&frame, Instant::ZERO) else {
        return;
    };
    // It opened: then it is exactly what the key's holder sealed.
    assert_eq!(
        msg.seal(index, &key).as_deref(),
        Ok(bytes),
        "a message that is not the sealer's own bytes opened"
    );
    // And it opens once.
    assert!(s.open(&frame, Instant::ZERO).is_err(), "a replay opened");
}

fn endpoint_datagram(bytes: &[u8]) {
    use rand_core::SeedableRng;

    use crate::endpoint::{Config, DataPlaneCommand, Endpoint, Input};
    use crate::security::{StaticKey, Trust};
    use crate::time::Instant;

    let keys = [StaticKey::from_bytes([1; 32]), StaticKey::from_bytes([2; 32])];
    let addr = [
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 9, 2)),
    ];
    let mut eps: Vec<Endpoint> = (0..2)
        .map(|i| {
            let trust = Trust::keys([(keys[1 - i].public(), "peer".to_string())]);
            let rng = rand_chacha::ChaCha20Rng::from_seed([i as u8 + 1; 32]);
            Endpoint::new(Config::new(keys[i].clone(), trust), Box::new(rng))
        })
        .collect();
    let flow = Tuple::new(
        Protocol::Tcp,
        SocketAddr::new(addr[0], 40000),
        SocketAddr::new(addr[1], 5001),
    );
    let now = Instant::from_millis(1);
    for (i, ep) in eps.iter_mut().enumerate() {
        ep.handle(now, Input::AddressAdded(addr[i]));
    }
    eps[0].handle(now, Input::FlowOpened(flow));
    eps[1].handle(now, Input::FlowOpened(flow.reversed()));
    // Let them handshake (a few rounds, no loss).
    for _ in 0..6 {
        for i in 0..2 {
            let out: Vec<_> = std::iter::from_fn(|| eps[i].poll_transmit()).collect();
            for t in out {
                eps[1 - i].handle(
                    now,
                    Input::Datagram {
                        local: t.dst,
                        remote: t.src,
                        payload: &t.payload,
                    },
                );
            }
        }
    }
    let a_id = keys[0].public().node_id();
    let b = &mut eps[1];
    assert!(
        b.peer(a_id).is_some_and(|p| p.session.is_some()),
        "the harness's handshake failed"
    );
    while b.poll_dataplane().is_some() {}
    let accepted = b.counters().messages_accepted;
    b.handle(
        now,
        Input::Datagram {
            local: SocketAddr::new(addr[1], 4791),
            remote: SocketAddr::new(addr[0], 4791),
            payload: bytes,
        },
    );
    assert_eq!(
        b.counters().messages_accepted,
        accepted,
        "a datagram from nowhere was accepted"
    );
    while let Some(cmd) = b.poll_dataplane() {
        assert!(
            !matches!(cmd, DataPlaneCommand::Table(_)),
            "a datagram from nowhere changed the table: {cmd:?}"
        );
    }
}

/// The `tunnel_unwrap` target: tunnel mode's unwrap parser and acceptance rule on
/// arbitrary datagrams. The first byte picks the table (entries derived from the
/// payload's own flow, so that the fuzzer reaches acceptance), the second the outer
/// addresses the datagram came from and to; the rest is the UDP payload. Invariants,
/// beyond "does not panic":
/// - a datagram is accepted exactly when an oracle written here says so: it parses
///   ([`crate::tunnel::inner_flow`]), and its outer source and destination are the
///   current remote and local addresses the harness installed for its flow (a flow
///   entry, else address entries), or those of the drain alias while it lasts;
/// - an accepted datagram is handed to the stack byte for byte as it came; a refused
///   one raises exactly the counter of the reason the oracle expects, by one;
/// - nothing changes the table;
/// - wrapping the payload gives a UDP datagram whose checksums verify and whose
///   payload is the packet unchanged.
///
/// Returns the outcome (`None` for an input too short to say anything), so that the
/// corpus replay can check what the corpus covers.
pub fn tunnel_unwrap(data: &[u8]) -> Option<Result<(), crate::tunnel::UnwrapError>> {
    use crate::endpoint::{DataPlane, DataPlaneCommand};
    use crate::plane::{DRAIN, PacketPlane, Verdicts};
    use crate::time::Instant;
    use crate::tunnel::{self, UnwrapError};

    let [selector, choice, payload @ ..] = data else {
        return None;
    };
    let (selector, choice) = (*selector, *choice);
    let flow = match packet_flow(Direction::Ingress, payload) {
        Ok(PacketFlow::Transport(t)) => t,
        _ => match addresses(payload) {
            Some((src, dst)) => Tuple::new(
                Protocol::Udp,
                SocketAddr::new(dst, 1000),
                SocketAddr::new(src, 2000),
            ),
            None => Tuple::new(Protocol::Udp, sock(false, 1, 1000), sock(false, 2, 2000)),
        },
    };
    let v6 = !flow.is_ipv4();
    let at = |n: u8| addr(v6, n);
    let with = |t: &Tuple, local: IpAddr, remote: IpAddr| {
        Tuple::new(
            t.protocol,
            SocketAddr::new(local, t.local.port()),
            SocketAddr::new(remote, t.remote.port()),
        )
    };
    let mut plane = PacketPlane::new_tunnel(u64::from(selector), 4792);
    let mut install = |c: TableChange| plane.apply(&DataPlaneCommand::Table(c)).is_ok();
    // What the oracle expects: the flow entry's current ends (local, remote), the
    // address entries' mappings, the drain alias's ends.
    let mut ends = None;
    let mut alias = None;
    let (mut local_map, mut remote_map) = (None, None);
    if selector & 0x01 != 0 {
        let current = with(&flow, at(10), at(20));
        let mut earlier_ok = false;
        if selector & 0x10 != 0 {
            // An earlier current tuple: drains once replaced (unless it was the
            // original or is the new current, as `PacketPlane` decides).
            let earlier = with(&flow, at(11), at(21));
            let entry = FlowMapping {
                original: flow,
                current: earlier,
                hold: false,
            };
            earlier_ok = install(TableChange::InstallFlow(entry));
            if earlier_ok && earlier != flow && earlier != current {
                alias = Some((at(11), at(21)));
            }
        }
        let entry = FlowMapping {
            original: flow,
            current,
            hold: selector & 0x02 != 0,
        };
        if install(TableChange::InstallFlow(entry)) {
            ends = Some((at(10), at(20)));
        } else {
            // Refused: the earlier entry (if any) stays, and nothing drains.
            ends = earlier_ok.then(|| (at(11), at(21)));
            alias = None;
        }
    }
    if selector & 0x04 != 0 {
        let local = AddressMapping {
            side: Side::Local,
            original: flow.local.ip(),
            current: at(30),
        };
        if install(TableChange::InstallAddress(local)) {
            local_map = Some(at(30));
        }
        let remote = AddressMapping {
            side: Side::Remote,
            original: flow.remote.ip(),
            current: at(40),
        };
        if install(TableChange::InstallAddress(remote)) {
            remote_map = Some(at(40));
        }
    }
    if selector & 0x08 != 0 {
        // A decoy: another flow of the same hosts, tunnelled between the same ends.
        let mut other = flow;
        other.remote.set_port(flow.remote.port().wrapping_add(1));
        let _ = install(TableChange::InstallFlow(FlowMapping {
            original: other,
            current: with(&other, at(10), at(20)),
            hold: false,
        }));
    }
    if selector & 0x20 != 0 {
        plane.set_now(Instant::ZERO + DRAIN + std::time::Duration::from_millis(1));
        alias = None;
    }
    let ends = ends.or_else(|| {
        (local_map.is_some() || remote_map.is_some()).then(|| {
            (
                local_map.unwrap_or(flow.local.ip()),
                remote_map.unwrap_or(flow.remote.ip()),
            )
        })
    });
    let pick = |c: u8, mine: [u8; 4], own: IpAddr| match c % 6 {
        4 => own,
        5 => addr(!v6, 7),
        i => at(mine[usize::from(i)]),
    };
    let src = pick(choice, [20, 21, 40, 99], flow.remote.ip());
    let dst = pick(choice >> 3, [10, 11, 30, 98], flow.local.ip());
    let check = |(l, r): (IpAddr, IpAddr)| {
        if r != src {
            Err(UnwrapError::WrongSource)
        } else if l != dst {
            Err(UnwrapError::WrongDestination)
        } else {
            Ok(())
        }
    };
    let expected = tunnel::inner_flow(src, dst, payload).and_then(|t| {
        assert_eq!(t, flow, "inner_flow and packet_flow name the same flow");
        ends.map_or(Err(UnwrapError::UnknownFlow), check)
            .or_else(|e| match alias {
                Some(a) if check(a).is_ok() => Ok(()),
                _ => Err(e),
            })
    });

    let table_before = (plane.table().flows(), plane.table().addresses());
    let before = plane.counters.tunnel.clone();
    let verdict = plane.unwrap(src, dst, payload.to_vec());
    let after = &plane.counters.tunnel;
    match (&expected, verdict) {
        (Ok(()), Verdicts::Forward(p)) => {
            assert_eq!(p, payload, "unwrapped bytes differ from the payload");
            assert_eq!(after.unwrapped, before.unwrapped + 1);
            assert_eq!(
                after.dropped, before.dropped,
                "an accepted datagram counted as dropped"
            );
        }
        (Err(e), Verdicts::Dropped) => {
            let mut want = before.dropped.clone();
            *want.of(e) += 1;
            assert_eq!(after.dropped, want, "refused for another reason than {e:?}");
            assert_eq!(after.unwrapped, before.unwrapped);
        }
        (e, v) => panic!("expected {e:?}, got {v:?} (src {src}, dst {dst}, ends {ends:?}, alias {alias:?})"),
    }
    assert_eq!(
        (plane.table().flows(), plane.table().addresses()),
        table_before,
        "unwrapping changed the table"
    );

    // Wrapping: a valid UDP datagram carrying the bytes unchanged.
    let mut wrapped = payload.to_vec();
    if tunnel::wrap(&mut wrapped, dst, src, 4792, u16::from(choice)).is_ok() {
        let n = tunnel::overhead(dst.is_ipv6());
        assert_eq!(&wrapped[n..], payload, "wrapping changed the packet");
        assert!(checksums_verify(&wrapped), "a wrapped datagram does not verify");
        let s = SlicedPacket::from_ip(&wrapped).expect("a wrapped datagram parses");
        assert!(
            matches!(&s.transport, Some(TransportSlice::Udp(u)) if u.payload() == payload),
            "a wrapped datagram is UDP carrying the packet"
        );
    } else {
        assert_eq!(wrapped, payload, "a refused wrap changes nothing");
    }
    Some(expected)
}
