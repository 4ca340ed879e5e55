//! Properties of the translation table and packet rewriter, over random valid packets
//! built by etherparse: what one host's egress translation does, its peer's ingress
//! translation undoes byte for byte, and every checksum still verifies by full
//! recomputation (independently of the rewriter's incremental arithmetic).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice, icmpv4, icmpv6,
};
use proptest::prelude::*;
use roam_core::translate::{
    AddressMapping, Direction, FlowMapping, PacketFlow, Protocol, Side, TableChange, TranslationTable, Tuple,
    Verdict, packet_flow, translate,
};

// ---- an independent checksum (RFC 1071), not the crate's ----

fn ones_sum(data: &[u8]) -> u32 {
    let mut acc = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether `data` (which includes its checksum field) sums to all ones, with `pseudo`.
fn sums_to_zero(pseudo: &[u8], data: &[u8]) -> bool {
    fold(ones_sum(pseudo) + ones_sum(data)) == 0xffff
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    p
}

/// Checks every checksum of a packet by full recomputation: the IPv4 header, TCP, UDP
/// (zero over IPv4 means none), ICMPv4, ICMPv6, and a quoted IPv4 header.
fn verify(pkt: &[u8]) -> Result<(), String> {
    let s = SlicedPacket::from_ip(pkt).map_err(|e| format!("does not parse: {e}"))?;
    let (src, dst, ip_payload): (IpAddr, IpAddr, &[u8]) = match &s.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            if !sums_to_zero(&[], h.slice()) {
                return Err("IPv4 header checksum".into());
            }
            (
                h.source_addr().into(),
                h.destination_addr().into(),
                v4.payload().payload,
            )
        }
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
            v6.payload().payload,
        ),
        _ => return Err("not IP".into()),
    };
    match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            if !sums_to_zero(&pseudo(src, dst, 6, ip_payload.len()), ip_payload) {
                return Err("TCP checksum".into());
            }
            // And etherparse agrees.
            let expect = match (src, dst) {
                (IpAddr::V4(a), IpAddr::V4(b)) => t.calc_checksum_ipv4(a.octets(), b.octets()).unwrap(),
                (IpAddr::V6(a), IpAddr::V6(b)) => t.calc_checksum_ipv6(a.octets(), b.octets()).unwrap(),
                _ => unreachable!(),
            };
            if expect != t.checksum() {
                return Err("TCP checksum (etherparse)".into());
            }
        }
        // Over IPv4, a zero UDP checksum means none (RFC 768).
        Some(TransportSlice::Udp(u)) => {
            let absent = src.is_ipv4() && u.checksum() == 0;
            if !absent && !sums_to_zero(&pseudo(src, dst, 17, ip_payload.len()), ip_payload) {
                return Err("UDP checksum".into());
            }
        }
        Some(TransportSlice::Icmpv4(_)) => {
            if !sums_to_zero(&[], ip_payload) {
                return Err("ICMPv4 checksum".into());
            }
            verify_quote(&ip_payload[8..])?;
        }
        Some(TransportSlice::Icmpv6(_))
            if !sums_to_zero(&pseudo(src, dst, 58, ip_payload.len()), ip_payload) =>
        {
            return Err("ICMPv6 checksum".into());
        }
        _ => {}
    }
    Ok(())
}

fn verify_quote(q: &[u8]) -> Result<(), String> {
    if q.first().map(|b| b >> 4) == Some(4) {
        let ihl = usize::from(q[0] & 15) * 4;
        if !sums_to_zero(&[], &q[..ihl]) {
            return Err("quoted IPv4 header checksum".into());
        }
    }
    Ok(())
}

// ---- packets ----

#[derive(Clone, Debug)]
enum Kind {
    Tcp {
        syn: bool,
        ack: bool,
        fin: bool,
        window: u16,
        seq: u32,
    },
    Udp {
        zero_checksum: bool,
    },
}

fn build(src: SocketAddr, dst: SocketAddr, kind: &Kind, payload: &[u8]) -> Vec<u8> {
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    let mut out = Vec::new();
    match kind {
        Kind::Tcp {
            syn,
            ack,
            fin,
            window,
            seq,
        } => {
            let mut b = ip.tcp(src.port(), dst.port(), *seq, *window);
            if *syn {
                b = b.syn();
            }
            if *ack {
                b = b.ack(seq.wrapping_mul(7));
            }
            if *fin {
                b = b.fin();
            }
            b.write(&mut out, payload).unwrap();
        }
        Kind::Udp { zero_checksum } => {
            ip.udp(src.port(), dst.port()).write(&mut out, payload).unwrap();
            if *zero_checksum && src.is_ipv4() {
                out[20 + 6] = 0;
                out[20 + 7] = 0;
            }
        }
    }
    out
}

/// Whether a quote of `len` bytes of `pkt` cuts its TCP or UDP checksum field in two:
/// then the kept byte cannot be updated exactly (its value depends on a carry from the
/// missing one), and the rewriter leaves it, so exact equality is not expected.
fn splits_checksum(pkt: &[u8], len: usize, kind: &Kind) -> bool {
    let ip = if pkt[0] >> 4 == 4 { 20 } else { 40 };
    let at = ip + if matches!(kind, Kind::Tcp { .. }) { 16 } else { 6 };
    len.min(pkt.len()) == at + 1
}

/// An ICMP error from `from` to `to` quoting `quoted` (truncated to `quote_len` bytes).
fn icmp_error(from: IpAddr, to: IpAddr, quoted: &[u8], quote_len: usize) -> Vec<u8> {
    let q = &quoted[..quote_len.min(quoted.len())];
    let mut out = Vec::new();
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, q)
            .unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64)
            .icmpv6(Icmpv6Type::DestinationUnreachable(
                icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut out, q)
            .unwrap(),
        _ => unreachable!(),
    }
    out
}

fn arb_v4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
}

fn arb_v6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
}

fn arb_port() -> impl Strategy<Value = u16> {
    1u16..
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(|(syn, ack, fin, window, seq)| Kind::Tcp {
                syn,
                ack,
                fin,
                window,
                seq
            }),
        any::<bool>().prop_map(|zero_checksum| Kind::Udp { zero_checksum }),
    ]
}

/// A flow entry with original and current tuples (distinct), and a peer's mirror.
#[derive(Clone, Debug)]
struct Case {
    mapping: FlowMapping,
    kind: Kind,
    payload: Vec<u8>,
    router: IpAddr,
    quote_len: usize,
}

fn arb_case() -> impl Strategy<Value = Case> {
    arb_case_of(None, None)
}

/// Cases of one family (`Some(true)`: IPv4) and one protocol (`Some(true)`: TCP).
fn arb_case_of(v4: Option<bool>, tcp: Option<bool>) -> impl Strategy<Value = Case> {
    let addrs = match v4 {
        Some(true) => proptest::collection::vec(arb_v4(), 5).boxed(),
        Some(false) => proptest::collection::vec(arb_v6(), 5).boxed(),
        None => prop_oneof![
            proptest::collection::vec(arb_v4(), 5),
            proptest::collection::vec(arb_v6(), 5)
        ]
        .boxed(),
    };
    let kind = arb_kind().prop_filter("protocol", move |k| match tcp {
        Some(t) => matches!(k, Kind::Tcp { .. }) == t,
        None => true,
    });
    (
        addrs,
        proptest::collection::vec(arb_port(), 4),
        kind,
        proptest::collection::vec(any::<u8>(), 0..600),
        8usize..100,
    )
        .prop_filter("original and current differ", |(a, p, _, _, _)| {
            (a[0], p[0], a[1], p[1]) != (a[2], p[2], a[3], p[3])
        })
        .prop_map(|(a, p, kind, payload, quote_len)| {
            let proto = match kind {
                Kind::Tcp { .. } => Protocol::Tcp,
                Kind::Udp { .. } => Protocol::Udp,
            };
            let original = Tuple::new(proto, SocketAddr::new(a[0], p[0]), SocketAddr::new(a[1], p[1]));
            let current = Tuple::new(proto, SocketAddr::new(a[2], p[2]), SocketAddr::new(a[3], p[3]));
            Case {
                mapping: FlowMapping {
                    original,
                    current,
                    hold: false,
                },
                kind,
                payload,
                router: a[4],
                quote_len,
            }
        })
}

fn table_with(m: FlowMapping) -> TranslationTable {
    let mut t = TranslationTable::new(7);
    t.apply(&TableChange::InstallFlow(m)).unwrap();
    t
}

fn mirror(m: &FlowMapping) -> FlowMapping {
    FlowMapping {
        original: m.original.reversed(),
        current: m.current.reversed(),
        hold: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn egress_then_the_peers_ingress_restores_the_exact_bytes(c in arb_case()) {
        let here = table_with(c.mapping);
        let there = table_with(mirror(&c.mapping));
        let o = c.mapping.original;
        // This host's stack sends; the peer's stack must receive exactly that.
        let sent = build(o.local, o.remote, &c.kind, &c.payload);
        let mut wire = sent.clone();
        prop_assert_eq!(translate(&here, Direction::Egress, &mut wire).unwrap(), Verdict::Translated);
        prop_assert!(verify(&wire).is_ok(), "{:?}", verify(&wire));
        let cur = c.mapping.current;
        prop_assert_eq!(packet_flow(Direction::Egress, &wire).unwrap(), PacketFlow::Transport(cur));
        let mut received = wire.clone();
        prop_assert_eq!(translate(&there, Direction::Ingress, &mut received).unwrap(), Verdict::Translated);
        prop_assert_eq!(&received, &sent);
        // And the other way round.
        let reply = build(o.remote, o.local, &c.kind, &c.payload);
        let mut wire = reply.clone();
        prop_assert_eq!(translate(&there, Direction::Egress, &mut wire).unwrap(), Verdict::Translated);
        prop_assert!(verify(&wire).is_ok(), "{:?}", verify(&wire));
        prop_assert_eq!(translate(&here, Direction::Ingress, &mut wire).unwrap(), Verdict::Translated);
        prop_assert_eq!(wire, reply);
    }

    #[test]
    fn a_zero_udp_checksum_over_ipv4_stays_zero(c in arb_case_of(Some(true), Some(false))) {
        let o = c.mapping.original;
        let m = FlowMapping {
            original: Tuple { protocol: Protocol::Udp, ..o },
            current: Tuple { protocol: Protocol::Udp, ..c.mapping.current },
            hold: false,
        };
        let mut pkt = build(o.local, o.remote, &Kind::Udp { zero_checksum: true }, &c.payload);
        translate(&table_with(m), Direction::Egress, &mut pkt).unwrap();
        prop_assert_eq!(&pkt[26..28], &[0, 0]);
    }

    #[test]
    fn an_icmp_error_about_a_translated_packet_is_translated_back_whole(c in arb_case()) {
        let here = table_with(c.mapping);
        let (o, cur) = (c.mapping.original, c.mapping.current);
        prop_assume!(c.router != cur.local.ip() && c.router != cur.remote.ip() && c.router != o.remote.ip());
        // A router on the path reports a packet we sent (so it quotes the current tuple).
        let sent_original = build(o.local, o.remote, &c.kind, &c.payload);
        let mut sent_wire = sent_original.clone();
        translate(&here, Direction::Egress, &mut sent_wire).unwrap();
        prop_assume!(!splits_checksum(&sent_wire, c.quote_len + 40, &c.kind));
        let mut error = icmp_error(c.router, cur.local.ip(), &sent_wire, c.quote_len + 40);
        prop_assert_eq!(translate(&here, Direction::Ingress, &mut error).unwrap(), Verdict::Translated);
        prop_assert!(verify(&error).is_ok(), "{:?}", verify(&error));
        // It must be what the router would have sent had no translation happened.
        let expected = icmp_error(c.router, o.local.ip(), &sent_original, c.quote_len + 40);
        prop_assert_eq!(error, expected);
    }

    #[test]
    fn an_icmp_error_this_host_sends_about_a_received_packet_is_translated_whole(c in arb_case()) {
        let here = table_with(c.mapping);
        let (o, cur) = (c.mapping.original, c.mapping.current);
        // The stack received (original form) a packet from the peer and reports it.
        let received = build(o.remote, o.local, &c.kind, &c.payload);
        prop_assume!(!splits_checksum(&received, c.quote_len + 40, &c.kind));
        let mut error = icmp_error(o.local.ip(), o.remote.ip(), &received, c.quote_len + 40);
        prop_assert_eq!(translate(&here, Direction::Egress, &mut error).unwrap(), Verdict::Translated);
        prop_assert!(verify(&error).is_ok(), "{:?}", verify(&error));
        let on_wire = build(cur.remote, cur.local, &c.kind, &c.payload);
        let expected = icmp_error(cur.local.ip(), cur.remote.ip(), &on_wire, c.quote_len + 40);
        prop_assert_eq!(error, expected);
    }

    #[test]
    fn a_held_flow_leaves_its_packets_untouched(c in arb_case()) {
        let t = table_with(FlowMapping { hold: true, ..c.mapping });
        let o = c.mapping.original;
        let pkt = build(o.local, o.remote, &c.kind, &c.payload);
        let mut p = pkt.clone();
        prop_assert_eq!(translate(&t, Direction::Egress, &mut p).unwrap(), Verdict::Hold);
        prop_assert_eq!(p, pkt);
    }

    #[test]
    fn a_reused_tuple_is_reported_as_a_conflict_not_delivered_into_the_moved_flow(c in arb_case_of(None, Some(true))) {
        let t = table_with(c.mapping);
        let o = c.mapping.original;
        // Ingress: a SYN under the moved flow's original tuple (seed 000 para 0067).
        let syn = build(o.remote, o.local, &Kind::Tcp { syn: true, ack: false, fin: false, window: 100, seq: 1 }, &[]);
        let mut p = syn.clone();
        prop_assert_eq!(translate(&t, Direction::Ingress, &mut p).unwrap(), Verdict::Conflict(o));
        prop_assert_eq!(&p, &syn);
        // Non-SYN segments under the original tuple are the old path draining: delivered as they are.
        let data = build(o.remote, o.local, &Kind::Tcp { syn: false, ack: true, fin: false, window: 100, seq: 1 }, b"x");
        let mut p = data.clone();
        prop_assert_eq!(translate(&t, Direction::Ingress, &mut p).unwrap(), Verdict::Untouched);
        prop_assert_eq!(&p, &data);
        // Egress: the stack sends under the moved flow's current tuple.
        let cur = c.mapping.current;
        let clash = build(cur.local, cur.remote, &c.kind, &c.payload);
        let mut p = clash.clone();
        prop_assert_eq!(translate(&t, Direction::Egress, &mut p).unwrap(), Verdict::Conflict(cur));
        prop_assert_eq!(p, clash);
    }

    #[test]
    fn address_mappings_translate_every_port_and_undo_exactly(c in arb_case()) {
        let (o, cur) = (c.mapping.original, c.mapping.current);
        prop_assume!(o.local.ip() != cur.local.ip() && o.remote.ip() != cur.remote.ip());
        let mut here = TranslationTable::new(1);
        let mut there = TranslationTable::new(2);
        let map = |side, original, current| TableChange::InstallAddress(AddressMapping { side, original, current });
        here.apply(&map(Side::Local, o.local.ip(), cur.local.ip())).unwrap();
        here.apply(&map(Side::Remote, o.remote.ip(), cur.remote.ip())).unwrap();
        there.apply(&map(Side::Remote, o.local.ip(), cur.local.ip())).unwrap();
        there.apply(&map(Side::Local, o.remote.ip(), cur.remote.ip())).unwrap();
        let sent = build(o.local, o.remote, &c.kind, &c.payload);
        let mut p = sent.clone();
        prop_assert_eq!(translate(&here, Direction::Egress, &mut p).unwrap(), Verdict::Translated);
        prop_assert!(verify(&p).is_ok(), "{:?}", verify(&p));
        let expect_ports = (o.local.port(), o.remote.port());
        let PacketFlow::Transport(on_wire) = packet_flow(Direction::Egress, &p).unwrap() else { panic!() };
        prop_assert_eq!((on_wire.local.port(), on_wire.remote.port()), expect_ports);
        prop_assert_eq!(translate(&there, Direction::Ingress, &mut p).unwrap(), Verdict::Translated);
        prop_assert_eq!(p, sent);
    }

    #[test]
    fn truncated_or_corrupted_packets_never_panic_and_errors_change_nothing(
        c in arb_case(),
        cut in 0usize..700,
        flips in proptest::collection::vec((0usize..700, 0u8..8), 0..4),
    ) {
        let t = table_with(c.mapping);
        let o = c.mapping.original;
        let mut pkt = build(o.local, o.remote, &c.kind, &c.payload);
        for (i, bit) in flips {
            if let Some(b) = pkt.get_mut(i) {
                *b ^= 1 << bit;
            }
        }
        pkt.truncate(cut.min(pkt.len()));
        for dir in [Direction::Egress, Direction::Ingress] {
            let mut p = pkt.clone();
            match translate(&t, dir, &mut p) {
                Err(e) => {
                    prop_assert!(!e.reason().is_empty());
                    prop_assert_eq!(&p, &pkt);
                }
                Ok(Verdict::Translated) => prop_assert_eq!(p.len(), pkt.len()),
                Ok(_) => prop_assert_eq!(&p, &pkt),
            }
            let _ = packet_flow(dir, &pkt);
        }
    }

    #[test]
    fn a_refused_table_change_changes_nothing(c in arb_case(), port in arb_port()) {
        let mut t = table_with(c.mapping);
        let before = t.flows();
        // Another flow's entry claiming the same current tuple (seed 000 para 0069).
        let o = c.mapping.original;
        let other = Tuple { local: SocketAddr::new(o.local.ip(), port), ..o };
        prop_assume!(other != o);
        let clash = FlowMapping { original: other, current: c.mapping.current, hold: false };
        let refused = t.apply(&TableChange::InstallFlow(clash)).is_err();
        prop_assert!(refused);
        // A family change.
        let v6 = Tuple::new(o.protocol, "[::1]:1".parse().unwrap(), "[::2]:2".parse().unwrap());
        let v4 = Tuple::new(o.protocol, "10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        let (a, b) = if o.is_ipv4() { (other, v6) } else { (other, v4) };
        let family_change = FlowMapping { original: a, current: b, hold: false };
        prop_assert!(t.apply(&TableChange::InstallFlow(family_change)).is_err());
        prop_assert_eq!(t.flows(), before);
    }
}

#[test]
fn non_ip_and_unknown_protocols_pass_untouched_or_err() {
    let t = TranslationTable::new(3);
    let mut junk = vec![0x60];
    assert!(translate(&t, Direction::Egress, &mut junk).is_err());
    let mut empty = vec![];
    assert_eq!(
        translate(&t, Direction::Egress, &mut empty).unwrap_err().reason(),
        "empty"
    );
    let mut v5 = vec![0x50; 40];
    assert_eq!(
        translate(&t, Direction::Egress, &mut v5).unwrap_err().reason(),
        "bad_ip_version"
    );
    // An ICMP echo with no address mapping: untouched.
    let mut echo = Vec::new();
    PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .icmpv4_echo_request(1, 2)
        .write(&mut echo, b"ping")
        .unwrap();
    let before = echo.clone();
    assert_eq!(
        translate(&t, Direction::Egress, &mut echo).unwrap(),
        Verdict::Untouched
    );
    assert_eq!(echo, before);
}
