//! Tunnel mode's encapsulation, free of I/O (seed 002 FIG. 3A's tunnel mode, seed 003's
//! transition tunnel): instead of rewriting a moved flow's packet, the data plane sends
//! it whole, original addresses and ports untouched, as the payload of a UDP datagram
//! from this host's current address to the peer's current address; the peer's data
//! plane takes it out and hands it to its stack, which finds its original tuple.
//!
//! The datagram (docs/PROTOCOL.md, "Tunnel mode"):
//!
//! ```text
//! | outer IPv4 (20) or IPv6 (40) | UDP (8): port -> port | the inner IP packet, unchanged |
//! ```
//!
//! The UDP payload *is* the inner packet: no roam header. Its first four bits (the IP
//! version, 4 or 6) say what it is, as Generic UDP Encapsulation's variant 1 does
//! (draft-ietf-intarea-gue: a payload starting with the bits `01` is an IPv4 or IPv6
//! packet). Any other first nibble is refused ([`UnwrapError::NotIp`]): those values are
//! left for a sealed framing later. The overhead is therefore the outer headers only:
//! [`OVERHEAD_V4`] and [`OVERHEAD_V6`] bytes per packet.
//!
//! - [`wrap`] prepends the outer headers in place (checksums computed).
//! - [`inner_flow`] checks a received datagram as far as it can without a table: an IP
//!   packet of the outer family whose length field is the datagram's, carrying TCP or
//!   UDP. [`crate::plane::PacketPlane::unwrap`] then applies the acceptance rule (the
//!   outer addresses must be the current ones of the entry whose original tuple the
//!   inner packet has).

use std::net::IpAddr;

use serde::Serialize;
use thiserror::Error;

use crate::translate::checksum;
use crate::translate::{Direction, PacketError, PacketFlow, Tuple, packet_flow};

/// Outer IPv4 header and UDP header: what tunnel mode adds to an IPv4 packet.
pub const OVERHEAD_V4: usize = 20 + UDP_HEADER;
/// Outer IPv6 header and UDP header: what tunnel mode adds to an IPv6 packet.
pub const OVERHEAD_V6: usize = 40 + UDP_HEADER;
const UDP_HEADER: usize = 8;
const UDP: u8 = 17;
/// The outer header's TTL / hop limit (RFC 1700's default; Linux's too).
const TTL: u8 = 64;

/// The bytes tunnel mode adds to a packet of this family.
pub const fn overhead(ipv6: bool) -> usize {
    if ipv6 { OVERHEAD_V6 } else { OVERHEAD_V4 }
}

/// Why a packet could not be wrapped. It is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WrapError {
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    #[error("outer addresses of another family than the packet's")]
    FamilyMismatch,
    #[error("too long for one IP packet once wrapped")]
    TooLong,
}

/// Why a tunnelled datagram was refused. Each variant is one drop reason, counted in
/// [`UnwrapDrops`]; [`UnwrapError::reason`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UnwrapError {
    #[error("empty datagram")]
    Empty,
    #[error("first nibble {0} is not an IP version (4 or 6)")]
    NotIp(u8),
    #[error("inner packet of another IP family than the outer addresses")]
    FamilyMismatch,
    #[error("inner packet's length field is not the datagram's length")]
    LengthMismatch,
    #[error("inner packet malformed: {0}")]
    Malformed(PacketError),
    #[error("inner packet is not TCP or UDP (or is a later fragment)")]
    NotTransport,
    #[error("no entry has the inner packet's tuple as its original")]
    UnknownFlow,
    #[error("outer source is not the entry's current remote address")]
    WrongSource,
    #[error("outer destination is not the entry's current local address")]
    WrongDestination,
}

impl UnwrapError {
    /// A stable snake_case name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            UnwrapError::Empty => "empty",
            UnwrapError::NotIp(_) => "not_ip",
            UnwrapError::FamilyMismatch => "family_mismatch",
            UnwrapError::LengthMismatch => "length_mismatch",
            UnwrapError::Malformed(_) => "malformed",
            UnwrapError::NotTransport => "not_transport",
            UnwrapError::UnknownFlow => "unknown_flow",
            UnwrapError::WrongSource => "wrong_source",
            UnwrapError::WrongDestination => "wrong_destination",
        }
    }
}

/// Tunnelled datagrams refused, one counter per [`UnwrapError`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnwrapDrops {
    pub empty: u64,
    pub not_ip: u64,
    pub family_mismatch: u64,
    pub length_mismatch: u64,
    pub malformed: u64,
    pub not_transport: u64,
    pub unknown_flow: u64,
    pub wrong_source: u64,
    pub wrong_destination: u64,
}

impl UnwrapDrops {
    /// The counter of `e`'s reason.
    pub fn of(&mut self, e: &UnwrapError) -> &mut u64 {
        match e {
            UnwrapError::Empty => &mut self.empty,
            UnwrapError::NotIp(_) => &mut self.not_ip,
            UnwrapError::FamilyMismatch => &mut self.family_mismatch,
            UnwrapError::LengthMismatch => &mut self.length_mismatch,
            UnwrapError::Malformed(_) => &mut self.malformed,
            UnwrapError::NotTransport => &mut self.not_transport,
            UnwrapError::UnknownFlow => &mut self.unknown_flow,
            UnwrapError::WrongSource => &mut self.wrong_source,
            UnwrapError::WrongDestination => &mut self.wrong_destination,
        }
    }

    /// Every refusal, whatever its reason.
    pub fn total(&self) -> u64 {
        self.empty
            + self.not_ip
            + self.family_mismatch
            + self.length_mismatch
            + self.malformed
            + self.not_transport
            + self.unknown_flow
            + self.wrong_source
            + self.wrong_destination
    }
}

/// What tunnel mode did (part of [`crate::plane::PlaneCounters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TunnelCounters {
    /// Packets sent wrapped, and datagrams unwrapped and handed to the stack.
    pub wrapped: u64,
    pub unwrapped: u64,
    /// Bytes the outer headers added on the wire (the per-packet overhead, summed).
    pub overhead_bytes: u64,
    /// Packets that could not be wrapped ([`WrapError`]): dropped.
    pub wrap_refused: u64,
    /// Datagrams refused on unwrap, by reason: dropped.
    pub dropped: UnwrapDrops,
}

/// Wraps `pkt` (a whole IPv4 or IPv6 packet) in place: outer IP and UDP headers from
/// `src` to `dst`, source and destination port `port`, go in front; the packet itself
/// is not touched.
///
/// - IPv4 outer: identification `ident` (the caller counts), DF clear (a router whose
///   link is smaller than ours fragments the datagram rather than drop it; the inner
///   packet is already sized for the route's MTU), TTL 64, header checksum.
/// - IPv6 outer: the inner flow label (a per-flow label, RFC 6438's aim; 0 for an IPv4
///   inner packet, which cannot happen here: families match), hop limit 64.
/// - DSCP copied from the inner packet, ECN Not-ECT: RFC 6040 §4.1's compatibility
///   mode, because the receiving end reads the datagram from a socket and never sees
///   the outer ECN field, so a CE mark there could not be passed on.
/// - UDP checksum computed over the pseudo-header and the whole payload (mandatory over
///   IPv6, RFC 8200 §8.1; kept over IPv4, so a corrupted outer header is caught).
pub fn wrap(pkt: &mut Vec<u8>, src: IpAddr, dst: IpAddr, port: u16, ident: u16) -> Result<(), WrapError> {
    let version = pkt.first().ok_or(WrapError::NotIp)? >> 4;
    let v6 = match (version, src, dst) {
        (4, IpAddr::V4(_), IpAddr::V4(_)) => false,
        (6, IpAddr::V6(_), IpAddr::V6(_)) => true,
        (4 | 6, _, _) => return Err(WrapError::FamilyMismatch),
        _ => return Err(WrapError::NotIp),
    };
    let udp_len = UDP_HEADER + pkt.len();
    let ip_len = udp_len + if v6 { 0 } else { 20 };
    if ip_len > usize::from(u16::MAX) {
        return Err(WrapError::TooLong);
    }
    let byte = |i: usize| pkt.get(i).copied().unwrap_or(0);
    let mut hdr = [0u8; OVERHEAD_V6];
    let at = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let dscp = byte(1) & 0xfc;
            hdr[0] = 0x45;
            hdr[1] = dscp;
            hdr[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            hdr[4..6].copy_from_slice(&ident.to_be_bytes());
            // Flags and fragment offset: 0 (DF clear).
            hdr[8] = TTL;
            hdr[9] = UDP;
            hdr[12..16].copy_from_slice(&s.octets());
            hdr[16..20].copy_from_slice(&d.octets());
            let c = checksum::checksum(&hdr[..20]);
            hdr[10..12].copy_from_slice(&c.to_be_bytes());
            20
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // The inner traffic class straddles bytes 0 and 1; the flow label is the
            // low 20 bits of the first word.
            let dscp = ((byte(0) << 4) | (byte(1) >> 4)) & 0xfc;
            let label = u32::from_be_bytes([0, byte(1) & 0x0f, byte(2), byte(3)]);
            let word = (6 << 28) | (u32::from(dscp) << 20) | label;
            hdr[0..4].copy_from_slice(&word.to_be_bytes());
            hdr[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            hdr[6] = UDP;
            hdr[7] = TTL;
            hdr[8..24].copy_from_slice(&s.octets());
            hdr[24..40].copy_from_slice(&d.octets());
            40
        }
        _ => unreachable!("families checked above"),
    };
    let udp = &mut hdr[at..at + UDP_HEADER];
    udp[0..2].copy_from_slice(&port.to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let acc = u64::from(checksum::pseudo_header(&src, &dst, UDP, udp_len))
        + u64::from(checksum::sum(udp, 0))
        + wide_sum(pkt);
    let c = checksum::udp_final(!fold64(acc));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let n = at + UDP_HEADER;
    pkt.splice(0..0, hdr[..n].iter().copied());
    Ok(())
}

/// The flow of a tunnelled datagram's payload, from this host's point of view (the
/// inner packet arrives: `local` is its destination), checked as far as it can be
/// without a table: an IP packet of the outer addresses' family, exactly as long as
/// its length field says (the datagram's boundary is exact), carrying TCP or UDP (the
/// first fragment at least: the flow rules route nothing else into the tunnel).
pub fn inner_flow(outer_src: IpAddr, outer_dst: IpAddr, payload: &[u8]) -> Result<Tuple, UnwrapError> {
    let first = *payload.first().ok_or(UnwrapError::Empty)?;
    let v6 = match first >> 4 {
        4 => false,
        6 => true,
        v => return Err(UnwrapError::NotIp(v)),
    };
    if outer_src.is_ipv6() != v6 || outer_dst.is_ipv6() != v6 {
        return Err(UnwrapError::FamilyMismatch);
    }
    let (at, base) = if v6 { (4, 40) } else { (2, 0) };
    let field = payload
        .get(at..at + 2)
        .ok_or(UnwrapError::Malformed(PacketError::TruncatedIpHeader))?;
    if base + usize::from(u16::from_be_bytes([field[0], field[1]])) != payload.len() {
        return Err(UnwrapError::LengthMismatch);
    }
    match packet_flow(Direction::Ingress, payload) {
        Ok(PacketFlow::Transport(t)) => Ok(t),
        Ok(_) => Err(UnwrapError::NotTransport),
        Err(e) => Err(UnwrapError::Malformed(e)),
    }
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte
/// padded with zero), unfolded: 32-bit words summed into 64 bits, which folds to the
/// same 16-bit sum (2^16 ≡ 1 modulo 2^16 − 1, RFC 1071 §2 (B)) at a quarter of the
/// additions. Tested against [`checksum::sum`].
fn wide_sum(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a wide one's-complement sum to 16 bits.
fn fold64(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_packet(v6: bool, payload: &[u8]) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6(
                "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                64,
            )
        } else {
            PacketBuilder::ipv4([10, 0, 1, 10], [10, 0, 3, 11], 64)
        };
        let b = b.tcp(40000, 5001, 7, 100).ack(9);
        let mut p = Vec::new();
        b.write(&mut p, payload).unwrap();
        p
    }

    #[test]
    fn the_wide_sum_folds_to_the_same_value_as_the_word_sum() {
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8 ^ 0xa5).collect();
            assert_eq!(
                fold64(wide_sum(&data)),
                checksum::fold(checksum::sum(&data, 0)),
                "{len}"
            );
        }
        let ones = vec![0xff; 65_536];
        assert_eq!(fold64(wide_sum(&ones)), checksum::fold(checksum::sum(&ones, 0)));
    }

    #[test]
    fn a_wrapped_packet_is_a_valid_udp_datagram_carrying_the_packet_unchanged() {
        for v6 in [false, true] {
            let inner = tcp_packet(v6, b"hello, tunnel");
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                ("fd00::9".parse().unwrap(), "fd00::2".parse().unwrap())
            } else {
                ("10.0.2.10".parse().unwrap(), "10.0.3.11".parse().unwrap())
            };
            let mut p = inner.clone();
            wrap(&mut p, src, dst, 4792, 77).unwrap();
            assert_eq!(p.len(), inner.len() + overhead(v6));
            assert_eq!(&p[overhead(v6)..], &inner[..]);
            assert!(crate::fuzzing::checksums_verify(&p), "{p:02x?}");
            let s = SlicedPacket::from_ip(&p).unwrap();
            let Some(TransportSlice::Udp(u)) = &s.transport else {
                panic!("UDP")
            };
            assert_eq!((u.source_port(), u.destination_port()), (4792, 4792));
            assert_eq!(u.payload(), &inner[..]);
            match &s.net {
                Some(NetSlice::Ipv4(h)) => {
                    let h = h.header();
                    assert_eq!((h.identification(), h.dont_fragment(), h.ttl()), (77, false, 64));
                    assert_eq!(IpAddr::from(h.source_addr()), src);
                }
                Some(NetSlice::Ipv6(h)) => {
                    assert_eq!(IpAddr::from(h.header().source_addr()), src);
                    assert_eq!(h.header().hop_limit(), 64);
                }
                _ => panic!("IP"),
            }
            assert_eq!(
                inner_flow(dst, src, &inner).unwrap(),
                Tuple::new(
                    crate::translate::Protocol::Tcp,
                    std::net::SocketAddr::new(
                        if v6 {
                            "fd00::2".parse().unwrap()
                        } else {
                            "10.0.3.11".parse().unwrap()
                        },
                        5001
                    ),
                    std::net::SocketAddr::new(
                        if v6 {
                            "fd00::1".parse().unwrap()
                        } else {
                            "10.0.1.10".parse().unwrap()
                        },
                        40000
                    ),
                )
            );
        }
    }

    #[test]
    fn dscp_is_copied_and_ecn_cleared() {
        let mut inner = tcp_packet(false, b"x");
        // DSCP 46 (EF) and ECN CE on the inner packet; its checksum no longer matters.
        inner[1] = (46 << 2) | 0b11;
        let mut p = inner.clone();
        wrap(
            &mut p,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            1,
            0,
        )
        .unwrap();
        assert_eq!(p[1], 46 << 2);
        let mut inner = tcp_packet(true, b"x");
        // Traffic class 0xbb (DSCP 46, ECN 3), flow label 0x12345.
        inner[0] = 0x6b;
        inner[1] = 0xb1;
        inner[2] = 0x23;
        inner[3] = 0x45;
        let mut p = inner.clone();
        wrap(
            &mut p,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            1,
            0,
        )
        .unwrap();
        assert_eq!(&p[..4], &[0x6b, 0x81, 0x23, 0x45]);
    }

    #[test]
    fn what_cannot_be_wrapped_is_refused_and_left_alone() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        for (mut p, src, dst, e) in [
            (vec![], v4, v4, WrapError::NotIp),
            (vec![0x15, 0], v4, v4, WrapError::NotIp),
            (tcp_packet(false, b""), v6, v6, WrapError::FamilyMismatch),
            (tcp_packet(false, b""), v4, v6, WrapError::FamilyMismatch),
            (tcp_packet(true, b""), v4, v4, WrapError::FamilyMismatch),
            (vec![0x45; 65_535 - 20 - 7], v4, v4, WrapError::TooLong),
            (vec![0x60; 65_535 - 7], v6, v6, WrapError::TooLong),
        ] {
            let before = p.clone();
            assert_eq!(wrap(&mut p, src, dst, 1, 0), Err(e));
            assert_eq!(p, before);
        }
        // The longest that fits.
        let mut p = vec![0x45; 65_535 - 28];
        assert_eq!(wrap(&mut p, v4, v4, 1, 0), Ok(()));
    }

    #[test]
    fn each_malformed_datagram_gets_its_reason() {
        let v4: IpAddr = "10.0.3.11".parse().unwrap();
        let v6: IpAddr = "fd00::2".parse().unwrap();
        let good = tcp_packet(false, b"data");
        let mut long = good.clone();
        long.push(0);
        let mut short_field = good.clone();
        short_field[3] -= 1;
        let mut icmp = Vec::new();
        PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();
        let mut bad_tcp = good.clone();
        bad_tcp.truncate(30);
        bad_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
        for (p, src, e) in [
            (vec![], v4, UnwrapError::Empty),
            (vec![0x00, 1, 2], v4, UnwrapError::NotIp(0)),
            (vec![0xd0; 30], v4, UnwrapError::NotIp(13)),
            (good.clone(), v6, UnwrapError::FamilyMismatch),
            (tcp_packet(true, b""), v4, UnwrapError::FamilyMismatch),
            (long, v4, UnwrapError::LengthMismatch),
            (short_field, v4, UnwrapError::LengthMismatch),
            (
                vec![0x45],
                v4,
                UnwrapError::Malformed(PacketError::TruncatedIpHeader),
            ),
            (bad_tcp, v4, UnwrapError::Malformed(PacketError::TruncatedTcp)),
            (icmp, v4, UnwrapError::NotTransport),
        ] {
            let dst = src;
            assert_eq!(inner_flow(src, dst, &p), Err(e), "{p:02x?}");
            assert!(!e.reason().is_empty());
        }
        assert!(inner_flow(v4, v4, &good).is_ok());
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        let all = [
            UnwrapError::Empty,
            UnwrapError::NotIp(1),
            UnwrapError::FamilyMismatch,
            UnwrapError::LengthMismatch,
            UnwrapError::Malformed(PacketError::Empty),
            UnwrapError::NotTransport,
            UnwrapError::UnknownFlow,
            UnwrapError::WrongSource,
            UnwrapError::WrongDestination,
        ];
        let mut d = UnwrapDrops::default();
        for (i, e) in all.iter().enumerate() {
            *d.of(e) += 1;
            assert_eq!(d.total(), i as u64 + 1);
            assert_eq!(*d.of(e), 1, "{e:?} shares a counter");
        }
        let names: std::collections::BTreeSet<&str> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(names.len(), all.len());
        // The serialised names are the reasons.
        let json = serde_json::to_value(&d).unwrap();
        for e in &all {
            assert_eq!(json[e.reason()], 1, "{e:?}");
        }
    }
}
