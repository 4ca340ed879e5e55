//! The rewriter's fast path: a TCP or UDP packet without extension headers (nearly
//! every packet a data plane sees), translated in one pass over its headers.
//!
//! The table key is built straight from the header bytes (the addresses and ports as
//! they sit in the packet, [`Key4`] / [`Key6`]), looked up once (twice on a miss, to
//! tell a conflict from a stranger, seed 000 ¶0067-¶0069), and the changed fields are
//! written with one RFC 1624 update per checksum: nothing allocates, no `SocketAddr` or
//! `Tuple` is built unless a verdict must carry one.
//!
//! It decides exactly what [`translate_general`](super::rewrite::translate_general)
//! decides, byte for byte (tested below against it): same verdicts, same checksums.
//! Whatever it does not handle (other protocols, fragments past the first, extension
//! headers, headers cut short, anything malformed, and the family mix-ups a table
//! refuses) it leaves to the general path, untouched, by returning `None`.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::checksum;
use super::rewrite::{Direction, PacketFlow, Rewrite, Transport, Verdict, tuple_of};
use super::table::{Key4, Key6, PathIndex, TranslationTable};

/// IPv4 Authentication Header (RFC 4302), which etherparse parses as an IPv4 extension.
const AUTH: u8 = 51;

/// The IPv6 extension headers etherparse walks (RFC 8200 §4: Hop-by-Hop Options,
/// Routing, Fragment, Destination Options; and AH). Any other next header is the
/// upper-layer header (or an unknown one: payload either way).
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60)
}

/// Where the upper-layer payload of an IP packet without extension headers is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Bounds {
    pub(super) v6: bool,
    /// The IPv4 protocol / IPv6 next header.
    pub(super) proto: u8,
    /// The upper-layer payload, within the buffer.
    pub(super) l4: Range<usize>,
    /// A fragment other than the first (IPv4 fragment offset > 0): no ports.
    pub(super) later_fragment: bool,
}

/// The bounds of a packet without extension headers (IPv4 without AH, IPv6 whose next
/// header is not an extension header), read from its header, with exactly etherparse's
/// rules: `lax = false` as `IpSlice` (the length fields must hold), `lax = true` as
/// `LaxIpSlice` (the IP header must be whole; a length field that overshoots or makes
/// no sense gives way to the buffer's end). `None`: not such a packet, or one etherparse
/// refuses (it then names the error).
pub(super) fn bounds(pkt: &[u8], lax: bool) -> Option<Bounds> {
    match pkt.first()? >> 4 {
        4 => {
            let h: &[u8; 20] = pkt.first_chunk()?;
            // RFC 791: IHL counts 32-bit words, at least 5.
            let header_len = usize::from(h[0] & 0xf) * 4;
            if header_len < 20 || pkt.len() < header_len || h[9] == AUTH {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let end = if (header_len..=pkt.len()).contains(&total) {
                total
            } else if lax {
                pkt.len()
            } else {
                return None;
            };
            Some(Bounds {
                v6: false,
                proto: h[9],
                l4: header_len..end,
                later_fragment: u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0,
            })
        }
        6 => {
            let h: &[u8; 40] = pkt.first_chunk()?;
            if is_ipv6_extension(h[6]) {
                return None;
            }
            // RFC 8200 §3: the payload length excludes the 40-byte header. Zero (a
            // jumbogram's, RFC 2675) is taken by etherparse as "the rest of the buffer".
            let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let end = if payload_len == 0 {
                pkt.len()
            } else if 40 + payload_len <= pkt.len() {
                40 + payload_len
            } else if lax {
                pkt.len()
            } else {
                return None;
            };
            Some(Bounds {
                v6: true,
                proto: h[6],
                l4: 40..end,
                later_fragment: false,
            })
        }
        _ => None,
    }
}

/// What the fast path needs of an address family. `Addr` is the address as an integer
/// (the big-endian bytes of the header); the IPv4 and IPv6 paths are monomorphised.
trait Family {
    type Addr: Copy + Eq;
    type Key: Copy;
    /// Offsets of the source and destination addresses in the IP header.
    const SRC_AT: usize;
    const DST_AT: usize;
    /// Whether the IP header has a checksum (IPv4's, RFC 791 §3.1, at offset 10).
    const HEADER_CHECKSUM: bool;

    fn read(pkt: &[u8], at: usize) -> Option<Self::Addr>;
    fn write(pkt: &mut [u8], at: usize, a: Self::Addr);
    /// The sum of the address's 16-bit words (unfolded).
    fn word_sum(a: Self::Addr) -> u32;
    fn key(local: Self::Addr, remote: Self::Addr, ports: u32, protocol: u8) -> Self::Key;
    /// A [`PathIndex`] value: the local and remote addresses, local port << 16 | remote
    /// port, and the hold flag.
    fn unpack(k: Self::Key) -> (Self::Addr, Self::Addr, u32, bool);
    fn lookup(index: &PathIndex, k: &Self::Key) -> Option<Self::Key>;
    /// `None` for an address of the other family.
    fn of_ip(a: IpAddr) -> Option<Self::Addr>;
    fn ip(a: Self::Addr) -> IpAddr;
}

struct V4;
struct V6;

impl Family for V4 {
    type Addr = u32;
    type Key = Key4;
    const SRC_AT: usize = 12;
    const DST_AT: usize = 16;
    const HEADER_CHECKSUM: bool = true;

    #[inline(always)]
    fn read(pkt: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(*pkt.get(at..)?.first_chunk()?))
    }

    #[inline(always)]
    fn write(pkt: &mut [u8], at: usize, a: u32) {
        pkt[at..at + 4].copy_from_slice(&a.to_be_bytes());
    }

    #[inline(always)]
    fn word_sum(a: u32) -> u32 {
        (a >> 16) + (a & 0xffff)
    }

    #[inline(always)]
    fn key(local: u32, remote: u32, ports: u32, protocol: u8) -> Key4 {
        Key4::new((u64::from(local) << 32) | u64::from(remote), ports, protocol)
    }

    #[inline(always)]
    fn unpack(k: Key4) -> (u32, u32, u32, bool) {
        (k.local(), k.remote(), k.ports(), k.hold())
    }

    #[inline(always)]
    fn lookup(index: &PathIndex, k: &Key4) -> Option<Key4> {
        index.get4(k)
    }

    fn of_ip(a: IpAddr) -> Option<u32> {
        match a {
            IpAddr::V4(a) => Some(a.to_bits()),
            IpAddr::V6(_) => None,
        }
    }

    fn ip(a: u32) -> IpAddr {
        IpAddr::V4(a.into())
    }
}

impl Family for V6 {
    type Addr = u128;
    type Key = Key6;
    const SRC_AT: usize = 8;
    const DST_AT: usize = 24;
    const HEADER_CHECKSUM: bool = false;

    #[inline(always)]
    fn read(pkt: &[u8], at: usize) -> Option<u128> {
        Some(u128::from_be_bytes(*pkt.get(at..)?.first_chunk()?))
    }

    #[inline(always)]
    fn write(pkt: &mut [u8], at: usize, a: u128) {
        pkt[at..at + 16].copy_from_slice(&a.to_be_bytes());
    }

    #[inline(always)]
    fn word_sum(a: u128) -> u32 {
        // Eight words: pairs of them side by side in two 32-bit lanes of each half,
        // then the four lane sums (each at most 0x1fffe) added.
        let lanes = |x: u64| (x & 0x0000_ffff_0000_ffff) + ((x >> 16) & 0x0000_ffff_0000_ffff);
        let s = lanes(a as u64) + lanes((a >> 64) as u64);
        ((s >> 32) + (s & 0xffff_ffff)) as u32
    }

    #[inline(always)]
    fn key(local: u128, remote: u128, ports: u32, protocol: u8) -> Key6 {
        Key6::new(local, remote, ports, protocol)
    }

    #[inline(always)]
    fn unpack(k: Key6) -> (u128, u128, u32, bool) {
        (k.local(), k.remote(), k.ports(), k.hold())
    }

    #[inline(always)]
    fn lookup(index: &PathIndex, k: &Key6) -> Option<Key6> {
        index.get6(k)
    }

    fn of_ip(a: IpAddr) -> Option<u128> {
        match a {
            IpAddr::V6(a) => Some(a.to_bits()),
            IpAddr::V4(_) => None,
        }
    }

    fn ip(a: u128) -> IpAddr {
        IpAddr::V6(a.into())
    }
}

/// [`translate`](super::translate) for a TCP or UDP packet without extension headers;
/// `None` (the packet untouched) for anything else.
#[inline]
pub(super) fn translate(table: &TranslationTable, dir: Direction, pkt: &mut [u8]) -> Option<Verdict> {
    match pkt.first()? >> 4 {
        4 => transport::<V4>(table, dir, pkt),
        6 => transport::<V6>(table, dir, pkt),
        _ => None,
    }
}

/// The flow of a TCP or UDP packet without extension headers; `None` for anything else.
pub(super) fn packet_flow(dir: Direction, pkt: &[u8]) -> Option<PacketFlow> {
    let (t, l4) = transport_at(pkt)?;
    let ports = u32::from_be_bytes(*pkt.get(l4..)?.first_chunk()?);
    let (src, dst) = match pkt.first()? >> 4 {
        4 => (
            V4::ip(V4::read(pkt, V4::SRC_AT)?),
            V4::ip(V4::read(pkt, V4::DST_AT)?),
        ),
        _ => (
            V6::ip(V6::read(pkt, V6::SRC_AT)?),
            V6::ip(V6::read(pkt, V6::DST_AT)?),
        ),
    };
    Some(PacketFlow::Transport(tuple_of(
        dir,
        t.protocol,
        SocketAddr::new(src, (ports >> 16) as u16),
        SocketAddr::new(dst, ports as u16),
    )))
}

/// A TCP or UDP packet (or first fragment) without extension headers whose transport
/// header holds its ports and checksum: its protocol and where the header starts.
#[inline(always)]
fn transport_at(pkt: &[u8]) -> Option<(Transport, usize)> {
    let b = bounds(pkt, false)?;
    if b.later_fragment {
        return None;
    }
    let t = Transport::of(b.proto)?;
    // A header cut short is an error, which the general path names.
    if b.l4.len() < t.checksum_at + 2 {
        return None;
    }
    Some((t, b.l4.start))
}

#[inline(always)]
fn transport<F: Family>(table: &TranslationTable, dir: Direction, pkt: &mut [u8]) -> Option<Verdict> {
    let (t, l4) = transport_at(pkt)?;
    let src = F::read(pkt, F::SRC_AT)?;
    let dst = F::read(pkt, F::DST_AT)?;
    // Source port << 16 | destination port.
    let ports = u32::from_be_bytes(*pkt.get(l4..)?.first_chunk()?);
    let protocol = t.protocol.ip_number();
    // The key is the tuple from this host's point of view: egress local = source.
    let (key, this, other) = match dir {
        Direction::Egress => (
            F::key(src, dst, ports, protocol),
            table.egress_path(),
            table.ingress_path(),
        ),
        Direction::Ingress => (
            F::key(dst, src, ports.rotate_left(16), protocol),
            table.ingress_path(),
            table.egress_path(),
        ),
    };
    let (new_src, new_dst, new_ports) = match F::lookup(this, &key) {
        Some(to) => {
            let (local, remote, to_ports, hold) = F::unpack(to);
            match dir {
                // Hold gates egress only (seed 001 FIG. 3 step 305).
                Direction::Egress if hold => return Some(Verdict::Hold),
                Direction::Egress => (local, remote, Some(to_ports)),
                Direction::Ingress => (remote, local, Some(to_ports.rotate_left(16))),
            }
        }
        // Seed 000 ¶0067-¶0069: the tuple is a moved flow's other one (see
        // `Verdict::Conflict`).
        None if F::lookup(other, &key).is_some() => {
            return Some(Verdict::Conflict(tuple_of(
                dir,
                t.protocol,
                SocketAddr::new(F::ip(src), (ports >> 16) as u16),
                SocketAddr::new(F::ip(dst), ports as u16),
            )));
        }
        None if !table.has_addresses() => return Some(Verdict::Untouched),
        None => {
            let rw = Rewrite::from_addresses(table, dir, F::ip(src), F::ip(dst));
            (
                rw.src.map_or(Some(src), F::of_ip)?,
                rw.dst.map_or(Some(dst), F::of_ip)?,
                None,
            )
        }
    };
    if new_src == src && new_dst == dst && new_ports.is_none_or(|p| p == ports) {
        return Some(Verdict::Untouched);
    }
    patch::<F>(
        pkt,
        (src, new_src),
        (dst, new_dst),
        new_ports.map(|p| (ports, p)),
        l4,
        t,
    );
    Some(Verdict::Translated)
}

/// Writes the new addresses and ports and updates the checksums they enter, with one
/// RFC 1624 update per checksum ([`checksum::updated`], the same bits as one update per
/// field). The fields are the general path's: an address only if it changes, both
/// ports whenever a flow entry applies (an address mapping leaves them).
#[inline(always)]
fn patch<F: Family>(
    pkt: &mut [u8],
    (src, new_src): (F::Addr, F::Addr),
    (dst, new_dst): (F::Addr, F::Addr),
    ports: Option<(u32, u32)>,
    l4: usize,
    t: Transport,
) {
    let mut addresses = 0u32;
    if new_src != src {
        addresses += checksum::replaced(F::word_sum(src), F::word_sum(new_src));
        F::write(pkt, F::SRC_AT, new_src);
    }
    if new_dst != dst {
        addresses += checksum::replaced(F::word_sum(dst), F::word_sum(new_dst));
        F::write(pkt, F::DST_AT, new_dst);
    }
    if F::HEADER_CHECKSUM {
        put_u16(pkt, 10, checksum::updated(get_u16(pkt, 10), addresses));
    }
    // The transport checksum covers the addresses through its pseudo-header (RFC 9293
    // §3.1, RFC 768, RFC 8200 §8.1) and the ports.
    let mut terms = addresses;
    if let Some((old, new)) = ports {
        terms += checksum::replaced(old >> 16, new >> 16) + checksum::replaced(old & 0xffff, new & 0xffff);
        pkt[l4..l4 + 4].copy_from_slice(&new.to_be_bytes());
    }
    let at = l4 + t.checksum_at;
    let c = get_u16(pkt, at);
    if t.zero_means_none() {
        // RFC 768: zero means "no checksum", and stays zero; a computed zero is sent
        // as all ones.
        if c != 0 {
            put_u16(pkt, at, checksum::udp_final(checksum::updated(c, terms)));
        }
    } else {
        put_u16(pkt, at, checksum::updated(c, terms));
    }
}

#[inline(always)]
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::translate::rewrite::{packet_flow_general, translate_general};
    use crate::translate::table::TupleKey;
    use crate::translate::{AddressMapping, FlowMapping, Protocol, Side, TableChange, Tuple};

    /// A TCP or UDP packet as the fast path takes it (and some it leaves).
    #[derive(Clone, Debug)]
    pub(in crate::translate) struct Plain {
        pub src: IpAddr,
        pub dst: IpAddr,
        pub sport: u16,
        pub dport: u16,
        pub udp: bool,
        /// IPv4 option words (NOPs): the transport header moves.
        pub option_words: u8,
        /// The IPv4 fragment field (flags and offset).
        pub fragment: u16,
        pub payload: Vec<u8>,
        /// Bytes after the IP packet (link-layer padding).
        pub trailer: Vec<u8>,
        /// Overrides of the transport checksum: none (computed), or this value (0 and
        /// ffff: the two zeros, where an update could pick the wrong one).
        pub checksum: Option<u16>,
    }

    impl Plain {
        pub fn bytes(&self) -> Vec<u8> {
            let l4_len = if self.udp { 8 } else { 20 } + self.payload.len();
            let mut l4 = Vec::with_capacity(l4_len);
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            let proto = if self.udp {
                l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                17
            } else {
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
                6
            };
            l4.extend_from_slice(&self.payload);
            let at = if self.udp { 6 } else { 16 };
            let c = self.checksum.unwrap_or_else(|| {
                let c = !checksum::fold(checksum::sum(
                    &l4,
                    checksum::pseudo_header(&self.src, &self.dst, proto, l4.len()),
                ));
                if self.udp { checksum::udp_final(c) } else { c }
            });
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
            let mut p = match (self.src, self.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let hl = 20 + 4 * usize::from(self.option_words);
                    let mut h = vec![0u8; hl];
                    h[0] = 0x40 | (hl / 4) as u8;
                    h[2..4].copy_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
                    h[6..8].copy_from_slice(&self.fragment.to_be_bytes());
                    h[8] = 64;
                    h[9] = proto;
                    h[12..16].copy_from_slice(&s.octets());
                    h[16..20].copy_from_slice(&d.octets());
                    h[20..].fill(1);
                    let c = checksum::checksum(&h);
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    h
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let mut h = vec![0u8; 40];
                    h[0] = 0x60;
                    h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                    h[6] = proto;
                    h[7] = 64;
                    h[8..24].copy_from_slice(&s.octets());
                    h[24..40].copy_from_slice(&d.octets());
                    h
                }
                _ => unreachable!("one family"),
            };
            p.extend_from_slice(&l4);
            p.extend_from_slice(&self.trailer);
            p
        }

        /// The tuple seen from the sender: local = source.
        pub fn egress_tuple(&self) -> Tuple {
            Tuple::new(
                if self.udp { Protocol::Udp } else { Protocol::Tcp },
                SocketAddr::new(self.src, self.sport),
                SocketAddr::new(self.dst, self.dport),
            )
        }
    }

    /// Addresses from a small pool (so that entries and packets meet) with the edge
    /// values of one's-complement arithmetic: all zeros, all ones.
    fn arb_addr(v6: bool) -> impl Strategy<Value = IpAddr> {
        let pick = prop_oneof![
            Just(0u128),
            Just(u128::MAX),
            (0u128..4).prop_map(|n| 0x2001_0db8_0000_0000_0000_0000_0000_0000 | n),
            any::<u128>(),
        ];
        pick.prop_map(move |n| {
            if v6 {
                IpAddr::V6(Ipv6Addr::from_bits(n))
            } else {
                IpAddr::V4(Ipv4Addr::from_bits(n as u32))
            }
        })
    }

    fn arb_port() -> impl Strategy<Value = u16> {
        prop_oneof![Just(0u16), Just(u16::MAX), 1000u16..1004, any::<u16>()]
    }

    pub(in crate::translate) fn arb_plain() -> impl Strategy<Value = Plain> {
        any::<bool>().prop_flat_map(|v6| {
            (
                (arb_addr(v6), arb_addr(v6), arb_port(), arb_port(), any::<bool>()),
                (
                    prop_oneof![3 => Just(0u8), 1 => 1u8..10],
                    prop_oneof![Just(0u16), Just(0x4000), Just(0x2000), 1u16..0x1fff],
                    proptest::collection::vec(any::<u8>(), 0..24),
                    prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec(any::<u8>(), 1..8)],
                    prop_oneof![3 => Just(None), 1 => Just(Some(0u16)), 1 => Just(Some(0xffff)), 1 => any::<u16>().prop_map(Some)],
                ),
            )
                .prop_map(
                    move |((src, dst, sport, dport, udp), (words, fragment, payload, trailer, checksum))| Plain {
                        src,
                        dst,
                        sport,
                        dport,
                        udp,
                        option_words: if v6 { 0 } else { words },
                        fragment: if v6 { 0 } else { fragment },
                        payload,
                        trailer,
                        checksum,
                    },
                )
        })
    }

    /// Where a generated entry takes a tuple: another address and/or port (or
    /// neither: an identity entry).
    fn moved(t: &Tuple, how: u8, n: u16) -> Tuple {
        let other = |a: IpAddr| match a {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() ^ u32::from(n) ^ 0x0a00_0000)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() ^ u128::from(n) ^ (1 << 100))),
        };
        let mut local = t.local;
        match how % 4 {
            0 => local.set_ip(other(local.ip())),
            1 => local.set_port(local.port() ^ n ^ 1),
            2 => {
                local.set_ip(other(local.ip()));
                local.set_port(local.port().wrapping_add(n | 1));
            }
            _ => {}
        }
        Tuple::new(t.protocol, local, t.remote)
    }

    /// A table whose entries meet the packet's tuple `t` in the ways `selector`'s bits
    /// pick (as the fuzz target's table does): egress hits, holds, conflicts both ways,
    /// ingress hits, address mappings both ways.
    fn table_for(t: &Tuple, selector: u16, how: u8, n: u16) -> TranslationTable {
        let mut table = TranslationTable::new(u64::from(selector));
        let mut flow = |original: Tuple, current: Tuple, hold: bool| {
            let _ = table.apply(&TableChange::InstallFlow(FlowMapping {
                original,
                current,
                hold,
            }));
        };
        let r = t.reversed();
        if selector & 0x01 != 0 {
            flow(*t, moved(t, how, n), selector & 0x100 != 0);
        }
        if selector & 0x02 != 0 {
            flow(moved(t, how.wrapping_add(1), n ^ 7), *t, false);
        }
        if selector & 0x04 != 0 {
            flow(moved(&r, how, n), r, selector & 0x100 != 0);
        }
        if selector & 0x08 != 0 {
            flow(r, moved(&r, how.wrapping_add(2), n ^ 3), false);
        }
        if selector & 0x10 != 0 {
            flow(r, r, true);
        }
        let mut address = |side: Side, original: IpAddr, current: IpAddr| {
            let _ = table.apply(&TableChange::InstallAddress(AddressMapping {
                side,
                original,
                current,
            }));
        };
        let elsewhere = |a: IpAddr| {
            moved(&Tuple::new(t.protocol, SocketAddr::new(a, 1), t.remote), 0, n)
                .local
                .ip()
        };
        if selector & 0x20 != 0 {
            address(Side::Local, t.local.ip(), elsewhere(t.local.ip()));
        }
        if selector & 0x40 != 0 {
            address(Side::Remote, t.remote.ip(), elsewhere(t.remote.ip()));
        }
        if selector & 0x80 != 0 {
            address(Side::Local, elsewhere(t.remote.ip()), t.remote.ip());
            address(Side::Remote, elsewhere(t.local.ip()), t.local.ip());
        }
        table
    }

    /// The generated cases reach every verdict of the fast path, flow entries and
    /// address mappings both, so that the comparison below covers them.
    #[test]
    fn the_generated_cases_reach_every_verdict() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let case = (arb_plain(), any::<u16>(), any::<u8>(), any::<u16>());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2048 {
            let (p, selector, how, n) = case.new_tree(&mut runner).unwrap().current();
            let table = table_for(&p.egress_tuple(), selector, how, n);
            for dir in [Direction::Egress, Direction::Ingress] {
                let seen_as = match translate(&table, dir, &mut p.bytes()) {
                    Some(Verdict::Translated) if selector & 0x1f == 0 => "translated by an address",
                    Some(Verdict::Translated) => "translated",
                    Some(Verdict::Untouched) => "untouched",
                    Some(Verdict::Hold) => "hold",
                    Some(Verdict::Conflict(_)) => "conflict",
                    None => "general path",
                };
                seen.insert((dir == Direction::Egress, seen_as));
            }
        }
        for egress in [true, false] {
            for v in [
                "translated by an address",
                "translated",
                "untouched",
                "conflict",
                "general path",
            ] {
                assert!(seen.contains(&(egress, v)), "egress {egress}: {v} never seen");
            }
        }
        assert!(seen.contains(&(true, "hold")));
    }

    /// Every value a checksum field can hold, in every shape, both ways: the fast path
    /// writes what the general path writes, including the rare update that computes to
    /// zero (UDP sends it as `ffff`, RFC 768) and the fields that start as either zero.
    #[test]
    fn every_checksum_value_is_updated_as_the_general_path_does() {
        for (src, dst) in [
            (IpAddr::from([192, 0, 2, 10]), IpAddr::from([198, 51, 100, 30])),
            (
                IpAddr::from([0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 10u16]),
                IpAddr::from([0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 30u16]),
            ),
        ] {
            for udp in [false, true] {
                let p = Plain {
                    src,
                    dst,
                    sport: 10_000,
                    dport: 443,
                    udp,
                    option_words: 0,
                    fragment: 0,
                    payload: vec![0x5a; 32],
                    trailer: vec![],
                    checksum: None,
                };
                let t = p.egress_tuple();
                let table = table_for(&t, 0x01 | 0x08, 2, 0x1234);
                let at = if src.is_ipv4() { 20 } else { 40 } + if udp { 6 } else { 16 };
                let mut pkt = p.bytes();
                for c in 0..=u16::MAX {
                    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
                    for dir in [Direction::Egress, Direction::Ingress] {
                        let (mut fast, mut general) = (pkt.clone(), pkt.clone());
                        let f = translate(&table, dir, &mut fast);
                        assert_eq!(f.map(Ok), Some(translate_general(&table, dir, &mut general)));
                        assert_eq!(fast, general, "{t} {dir:?} checksum {c:04x}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The fast path decides what the general path decides, to the byte, and takes
        /// every well-formed first fragment or whole packet.
        #[test]
        fn the_fast_path_equals_the_general_path(
            p in arb_plain(), selector in any::<u16>(), how in any::<u8>(), n in any::<u16>(),
        ) {
            let pkt = p.bytes();
            let table = table_for(&p.egress_tuple(), selector, how, n);
            for dir in [Direction::Egress, Direction::Ingress] {
                let mut fast = pkt.clone();
                let mut general = pkt.clone();
                let f = translate(&table, dir, &mut fast);
                let g = translate_general(&table, dir, &mut general);
                let later = p.fragment & 0x1fff != 0;
                prop_assert_eq!(f.is_some(), !later, "{:?}", dir);
                match f {
                    Some(v) => {
                        prop_assert_eq!(Ok(v), g, "{:?}", dir);
                        prop_assert_eq!(&fast, &general, "{:?} {:?}", dir, v);
                    }
                    None => prop_assert_eq!(&fast, &pkt, "untouched when not taken"),
                }
                prop_assert_eq!(packet_flow(dir, &pkt).map(Ok), (!later).then(|| packet_flow_general(dir, &pkt)));
            }
        }

        /// The key the fast path builds from a packet's bytes is the key of the tuple
        /// the general path reads from it, both ways.
        #[test]
        fn the_key_from_the_bytes_is_the_key_from_the_tuple(p in arb_plain()) {
            // A later fragment has no ports to name a flow by.
            let p = Plain { fragment: p.fragment & !0x1fff, ..p };
            let pkt = p.bytes();
            let t = p.egress_tuple();
            prop_assert_eq!(packet_flow_general(Direction::Egress, &pkt), Ok(PacketFlow::Transport(t)));
            let ports = (u32::from(p.sport) << 16) | u32::from(p.dport);
            let proto = t.protocol.ip_number();
            let (egress, ingress) = match p.src {
                IpAddr::V4(_) => {
                    let (s, d) = (V4::read(&pkt, V4::SRC_AT).unwrap(), V4::read(&pkt, V4::DST_AT).unwrap());
                    (TupleKey::V4(V4::key(s, d, ports, proto)), TupleKey::V4(V4::key(d, s, ports.rotate_left(16), proto)))
                }
                _ => {
                    let (s, d) = (V6::read(&pkt, V6::SRC_AT).unwrap(), V6::read(&pkt, V6::DST_AT).unwrap());
                    (TupleKey::V6(V6::key(s, d, ports, proto)), TupleKey::V6(V6::key(d, s, ports.rotate_left(16), proto)))
                }
            };
            prop_assert_eq!(egress, TupleKey::of(&t));
            prop_assert_eq!(ingress, TupleKey::of(&t.reversed()));
        }

        /// An address's word sum as the fast path computes it is RFC 1071's.
        #[test]
        fn address_word_sums_are_rfc1071_sums(a in any::<u128>()) {
            prop_assert_eq!(checksum::fold(V6::word_sum(a)), checksum::fold(checksum::sum(&a.to_be_bytes(), 0)));
            let b = a as u32;
            prop_assert_eq!(checksum::fold(V4::word_sum(b)), checksum::fold(checksum::sum(&b.to_be_bytes(), 0)));
        }
    }
}
