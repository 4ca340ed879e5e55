//! The sock_diag reply parser on crafted and random bytes: well-formed replies decode
//! to the right flows, anything else is a typed error, nothing panics.

use std::net::SocketAddr;

use proptest::prelude::*;
use roam_core::translate::{Protocol, Tuple};
use roam_linux::sockdiag::{Error, FlowState, Progress, SocketFlow, parse_datagram};

const SEQ: u32 = 77;

fn nlmsg(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// An `inet_diag_msg` (72 bytes) plus `extra` attribute bytes.
#[allow(clippy::too_many_arguments)]
fn diag_msg(
    family: u8,
    state: u8,
    src: &[u8],
    sport: u16,
    dst: &[u8],
    dport: u16,
    inode: u32,
    extra: &[u8],
) -> Vec<u8> {
    let mut p = vec![family, state, 0, 0];
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    let mut s = [0u8; 16];
    s[..src.len()].copy_from_slice(src);
    let mut d = [0u8; 16];
    d[..dst.len()].copy_from_slice(dst);
    p.extend_from_slice(&s);
    p.extend_from_slice(&d);
    p.extend_from_slice(&0u32.to_ne_bytes()); // if
    p.extend_from_slice(&0x1234u32.to_ne_bytes()); // cookie lo
    p.extend_from_slice(&0x5u32.to_ne_bytes()); // cookie hi
    p.extend_from_slice(&[0u8; 12]); // expires, rqueue, wqueue
    p.extend_from_slice(&1000u32.to_ne_bytes()); // uid
    p.extend_from_slice(&inode.to_ne_bytes());
    assert_eq!(p.len(), 72);
    p.extend_from_slice(extra);
    p
}

fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4);
    a
}

fn parse(buf: &[u8], proto: Protocol) -> (Result<Progress, Error>, Vec<SocketFlow>) {
    let mut out = vec![];
    let r = parse_datagram(buf, SEQ, proto, &mut out);
    (r, out)
}

#[test]
fn well_formed_replies_decode() {
    let mut d = Vec::new();
    // IPv4 established, with a trailing attribute the parser must skip.
    d.extend(nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(
            2,
            1,
            &[10, 0, 0, 1],
            40000,
            &[10, 0, 0, 2],
            80,
            9,
            &[8, 0, 1, 0, 0, 0, 0, 0],
        ),
    ));
    // IPv6 socket talking IPv4 (mapped): an IPv4 flow.
    d.extend(nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(
            10,
            6,
            &mapped([10, 0, 0, 1]),
            40001,
            &mapped([10, 0, 0, 3]),
            443,
            0,
            &[],
        ),
    ));
    // IPv6 SYN_SENT.
    let (s6, d6) = (
        "fd00::1".parse::<std::net::Ipv6Addr>().unwrap(),
        "fd00::2".parse::<std::net::Ipv6Addr>().unwrap(),
    );
    d.extend(nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(10, 2, &s6.octets(), 1, &d6.octets(), 2, 3, &[]),
    ));
    // Not flows: loopback, unconnected, LISTEN, a reply to another request.
    d.extend(nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(2, 1, &[127, 0, 0, 1], 1, &[127, 0, 0, 1], 2, 1, &[]),
    ));
    d.extend(nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(2, 1, &[10, 0, 0, 1], 1, &[0, 0, 0, 0], 0, 1, &[]),
    ));
    d.extend(nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(2, 10, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2, 1, &[]),
    ));
    d.extend(nlmsg(
        20,
        2,
        SEQ + 1,
        &diag_msg(2, 1, &[10, 0, 0, 1], 5, &[10, 0, 0, 2], 6, 1, &[]),
    ));
    let (r, out) = parse(&d, Protocol::Tcp);
    assert_eq!(r.unwrap(), Progress::More);
    let want = |l: &str, r: &str| {
        Tuple::new(
            Protocol::Tcp,
            l.parse::<SocketAddr>().unwrap(),
            r.parse().unwrap(),
        )
    };
    assert_eq!(
        out.iter().map(|f| (f.tuple, f.state)).collect::<Vec<_>>(),
        vec![
            (want("10.0.0.1:40000", "10.0.0.2:80"), FlowState::Established),
            (want("10.0.0.1:40001", "10.0.0.3:443"), FlowState::TimeWait),
            (want("[fd00::1]:1", "[fd00::2]:2"), FlowState::SynSent),
        ]
    );
    assert_eq!(
        (out[0].inode, out[0].uid, out[0].cookie),
        (9, 1000, 0x5_0000_1234)
    );

    // DONE ends the dump; DONE with an error is that error; an ERROR message is too.
    assert_eq!(
        parse(&nlmsg(3, 2, SEQ, &0i32.to_ne_bytes()), Protocol::Udp)
            .0
            .unwrap(),
        Progress::Done
    );
    assert!(matches!(
        parse(&nlmsg(3, 2, SEQ, &(-12i32).to_ne_bytes()), Protocol::Udp).0,
        Err(Error::Kernel(12))
    ));
    let mut e = (-2i32).to_ne_bytes().to_vec();
    e.extend_from_slice(&[0u8; 16]);
    assert!(matches!(
        parse(&nlmsg(2, 0, SEQ, &e), Protocol::Tcp).0,
        Err(Error::Kernel(2))
    ));
    // An acknowledgement (error 0) is Done.
    assert_eq!(
        parse(&nlmsg(2, 0, SEQ, &[0u8; 20]), Protocol::Tcp).0.unwrap(),
        Progress::Done
    );
}

#[test]
fn malformed_replies_are_errors() {
    let good = nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(2, 1, &[10, 0, 0, 1], 1, &[10, 0, 0, 2], 2, 1, &[]),
    );
    let malformed = |b: &[u8]| matches!(parse(b, Protocol::Tcp).0, Err(Error::Malformed(_)));
    // Truncated anywhere.
    for cut in 1..good.len() {
        assert!(malformed(&good[..cut]), "cut at {cut}");
    }
    // Length field too small, too large.
    let mut b = good.clone();
    b[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(malformed(&b));
    b[..4].copy_from_slice(&(good.len() as u32 + 4).to_ne_bytes());
    assert!(malformed(&b));
    // Payload shorter than inet_diag_msg.
    assert!(malformed(&nlmsg(20, 2, SEQ, &[2u8; 40])));
    // Unknown family, unknown message type.
    assert!(malformed(&nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(7, 1, &[1], 1, &[2], 2, 1, &[])
    )));
    assert!(malformed(&nlmsg(99, 2, SEQ, &[])));
    // Ends of different families (one mapped, one native IPv6).
    let v6 = "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets();
    assert!(malformed(&nlmsg(
        20,
        2,
        SEQ,
        &diag_msg(10, 1, &mapped([10, 0, 0, 1]), 1, &v6, 2, 1, &[])
    )));
    // Interrupted dump, overrun.
    assert!(matches!(
        parse(&nlmsg(20, 0x12, SEQ, &[]), Protocol::Tcp).0,
        Err(Error::Interrupted)
    ));
    assert!(matches!(
        parse(&nlmsg(4, 0, SEQ, &[]), Protocol::Tcp).0,
        Err(Error::Overrun)
    ));
    // ERROR without its code.
    assert!(malformed(&nlmsg(2, 0, SEQ, &[0, 0])));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&buf, Protocol::Tcp);
        let _ = parse(&buf, Protocol::Udp);
    }

    /// Plausible headers (right seq and type, random lengths and payloads) never panic
    /// either, and every flow that comes out is a consistent, non-loopback tuple.
    #[test]
    fn framed_garbage_never_panics(
        msgs in proptest::collection::vec(
            (prop_oneof![Just(1u16), Just(2), Just(3), Just(4), Just(20), any::<u16>()],
             any::<u16>(),
             proptest::collection::vec(any::<u8>(), 0..120),
             -8i32..8),
            1..6),
    ) {
        let mut buf = Vec::new();
        for (t, flags, payload, len_skew) in msgs {
            let mut m = nlmsg(t, flags, SEQ, &payload);
            let len = (16 + payload.len()) as i64 + i64::from(len_skew);
            m[..4].copy_from_slice(&(len.max(0) as u32).to_ne_bytes());
            buf.extend(m);
        }
        let (_, out) = parse(&buf, Protocol::Tcp);
        for f in out {
            prop_assert!(f.tuple.is_consistent());
            prop_assert!(!f.tuple.local.ip().is_loopback() && !f.tuple.remote.ip().is_loopback());
        }
    }
}
