//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The rewriter only ever *updates* checksums ([`update`], [`update_addr`],
//! [`update_u16`]; per packet, one `updated` with every changed field's `replaced`
//! term): RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, costs a few additions per
//! changed field whatever the packet's length, and it preserves a checksum that was
//! wrong (a corrupted packet stays detectably corrupted after translation instead of
//! being "repaired" by a recomputation). The full computations ([`checksum`],
//! [`pseudo_header`], [`verifies`]) are for tests, fuzz invariants and verification.
//!
//! Two zeros: one's complement has +0 (`0000`) and -0 (`ffff`). A full computation never
//! yields `ffff` unless every summed word is zero; eqn. 3 may yield `0000` where a full
//! computation would give `0000` too. Both forms verify. UDP gives `0000` a meaning of
//! its own (below, [`udp_final`]).

use std::net::IpAddr;

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is
/// padded with zero), added to `acc`. Not folded: the result is congruent to the sum
/// modulo `0xffff` and zero only if `acc` and every byte are (all [`fold`] needs).
///
/// Summed four bytes at a time into 64 bits (RFC 1071 §2 (B), "parallel summation"): a
/// 32-bit word `hi << 16 | lo` is congruent to `hi + lo` modulo `0xffff`, because
/// 2^16 is congruent to 1. Packets are far below the 16 GiB that could carry out of
/// the accumulator.
pub fn sum(data: &[u8], acc: u32) -> u32 {
    let mut wide = u64::from(acc);
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        wide += u64::from(u32::from_be_bytes([q[0], q[1], q[2], q[3]]));
    }
    match *quads.remainder() {
        [a, b, c] => wide += u64::from(u32::from_be_bytes([a, b, c, 0])),
        [a, b] => wide += u64::from(u16::from_be_bytes([a, b])),
        [a] => wide += u64::from(a) << 8,
        _ => {}
    }
    // 2^32 is congruent to 1 too: two folds bring 64 bits into 32 (the first leaves at
    // most 2^33 - 2, the second at most 2^32 - 1).
    let wide = (wide & 0xffff_ffff) + (wide >> 32);
    ((wide & 0xffff_ffff) + (wide >> 32)) as u32
}

/// Folds carries back in: the 16-bit one's-complement sum. Two folds suffice for any
/// `u32` (the first leaves at most `0x1fffe`, the second at most `0xffff`); the result
/// is zero only if `acc` is.
pub fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    ((acc & 0xffff) + (acc >> 16)) as u16
}

/// The checksum of `data` (RFC 1071): the complement of its one's-complement sum.
/// `data` must hold zero where its checksum field is.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The unfolded sum of a TCP/UDP/ICMPv6 pseudo-header: RFC 793 §3.1 / RFC 768 for IPv4
/// (source, destination, zero, protocol, length), RFC 8200 §8.1 for IPv6 (source,
/// destination, 32-bit upper-layer length, zeros, next header). `len` is the length of
/// the transport header plus payload. Both addresses are of one family (the layout
/// follows `src`'s).
pub fn pseudo_header(src: &IpAddr, dst: &IpAddr, protocol: u8, len: usize) -> u32 {
    let mut acc = addr_sum(dst, addr_sum(src, 0));
    match src {
        IpAddr::V4(_) => {
            acc = sum(&[0, protocol], acc);
            sum(&(len as u16).to_be_bytes(), acc)
        }
        IpAddr::V6(_) => {
            acc = sum(&(len as u32).to_be_bytes(), acc);
            sum(&[0, 0, 0, protocol], acc)
        }
    }
}

/// Whether `data`, which contains its own checksum field, verifies: its sum plus `acc`
/// (a pseudo-header's, or 0) is all ones (RFC 1071 §1 "the result is checked").
pub fn verifies(acc: u32, data: &[u8]) -> bool {
    fold(sum(data, acc)) == 0xffff
}

/// RFC 1624 eqn. 3: the checksum `hc` after the bytes `old` (of even length, at an even
/// offset of the checksummed data) became `new`: HC' = ~(~HC + ~m + m').
pub fn update(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    // ~m summed word by word is the complement of the sum of m (one's complement).
    let acc = u32::from(!hc) + u32::from(!fold(sum(old, 0))) + u32::from(fold(sum(new, 0)));
    !fold(acc)
}

/// RFC 1624 eqn. 3's term for one replaced field, `~m + m'`, from the field's old and
/// new sums (`m = fold(old)`, `m' = fold(new)`, as [`sum`] gives them). The terms of
/// several fields add up (as `u32`: a few dozen cannot carry out) into one [`updated`].
pub(crate) fn replaced(old: u32, new: u32) -> u32 {
    u32::from(!fold(old)) + u32::from(fold(new))
}

/// RFC 1624 eqn. 3 for every replaced field at once: `HC' = ~fold(~HC + terms)`, with
/// the [`replaced`] terms of the fields. It gives the same 16 bits as [`update`]
/// applied field by field, including which of the two zeros: `fold` of a positive
/// number is the one representative of its residue modulo `0xffff` in `1..=0xffff`
/// (and `fold(0) = 0`), so `fold(fold(a) + b) = fold(a + b)` for all `a, b >= 0`, and
/// the complements taken between two updates cancel (`!!x = x`).
pub(crate) fn updated(hc: u16, terms: u32) -> u16 {
    !fold(u32::from(!hc) + terms)
}

/// The sum of an address's 16-bit words (unfolded), for [`replaced`].
pub(crate) fn address_sum(a: &IpAddr) -> u32 {
    addr_sum(a, 0)
}

/// [`update`] for a 16-bit field (a port).
pub fn update_u16(hc: u16, old: u16, new: u16) -> u16 {
    update(hc, &old.to_be_bytes(), &new.to_be_bytes())
}

/// [`update`] for an address (4 or 16 bytes; always at an even offset of an IPv4 or
/// IPv6 header or pseudo-header). Addresses of different families do not replace one
/// another: `hc` is returned unchanged (the table refuses such mappings).
pub fn update_addr(hc: u16, old: &IpAddr, new: &IpAddr) -> u16 {
    match (old, new) {
        (IpAddr::V4(o), IpAddr::V4(n)) => update(hc, &o.octets(), &n.octets()),
        (IpAddr::V6(o), IpAddr::V6(n)) => update(hc, &o.octets(), &n.octets()),
        _ => hc,
    }
}

/// What a UDP checksum field must hold once computed or updated to `c`: RFC 768 sends a
/// computed zero as all ones, because a zero field means "no checksum" (over IPv4;
/// RFC 8200 §8.1 keeps the rule for IPv6, where zero is not allowed at all).
pub fn udp_final(c: u16) -> u16 {
    if c == 0 { 0xffff } else { c }
}

fn addr_sum(a: &IpAddr, acc: u32) -> u32 {
    match a {
        IpAddr::V4(v4) => sum(&v4.octets(), acc),
        IpAddr::V6(v6) => sum(&v6.octets(), acc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn the_rfc1071_example_sums_to_ddf2() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)),
            0xddf2
        );
    }

    #[test]
    fn an_incremental_update_equals_recomputation() {
        let mut data = [
            0x45u8, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 0x40, 0x06, 0, 0, 10, 0, 1, 2, 10, 0, 9, 2,
        ];
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verifies(0, &data));
        let old = data[12..16].to_vec();
        data[12..16].copy_from_slice(&[192, 168, 200, 77]);
        let hc = update(c, &old, &data[12..16]);
        data[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(hc, checksum(&data));
    }

    #[test]
    fn rfc1624_section_4_example_gives_0000_not_ffff() {
        // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285: eqn. 3 gives 0x0000
        // (eqn. 2 of RFC 1141 would give the -0 form 0xffff).
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn a_udp_checksum_that_computes_to_zero_is_sent_as_ffff() {
        assert_eq!(udp_final(0), 0xffff);
        assert_eq!(udp_final(0x1234), 0x1234);
    }

    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        ]
    }

    fn naive_sum(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
            .sum()
    }

    proptest! {
        /// The four-bytes-at-a-time sum folds to the word-by-word sum of RFC 1071.
        #[test]
        fn the_parallel_sum_is_rfc1071s(
            data in proptest::collection::vec(any::<u8>(), 0..200), acc in any::<u16>(),
        ) {
            prop_assert_eq!(fold(sum(&data, u32::from(acc))), fold(naive_sum(&data) + u32::from(acc)));
            prop_assert_eq!(sum(&data, 0) == 0, data.iter().all(|&b| b == 0));
        }

        /// One update with every field's term gives the same 16 bits as one update per
        /// field, whichever zero: also from the checksums `0000` and `ffff`, and fields
        /// that do not change or change from all ones to all zeros.
        #[test]
        fn one_update_for_all_fields_equals_one_per_field(
            hc in prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
            fields in proptest::collection::vec(
                (
                    prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
                    prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
                ),
                0..12,
            ),
            addresses in proptest::collection::vec((addr(), addr()), 0..3),
        ) {
            let mut one_by_one = hc;
            let mut terms = 0u32;
            for (old, new) in &fields {
                one_by_one = update_u16(one_by_one, *old, *new);
                terms += replaced(u32::from(*old), u32::from(*new));
            }
            for (old, new) in &addresses {
                if old.is_ipv4() == new.is_ipv4() {
                    one_by_one = update_addr(one_by_one, old, new);
                    terms += replaced(address_sum(old), address_sum(new));
                }
            }
            prop_assert_eq!(updated(hc, terms), one_by_one);
        }

        #[test]
        fn incremental_updates_of_addresses_and_ports_equal_full_recomputation(
            a in addr(), b in addr(), sp in any::<u16>(), dp in any::<u16>(),
            np in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
            seed in any::<[u8; 16]>(),
        ) {
            // A UDP-like segment: ports, length, checksum, payload.
            let mut seg = Vec::new();
            seg.extend_from_slice(&sp.to_be_bytes());
            seg.extend_from_slice(&dp.to_be_bytes());
            seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
            seg.extend_from_slice(&payload);
            let src = a;
            let dst = match a {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&seed[..4]).unwrap())),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(seed)),
            };
            let full = |src: &IpAddr, dst: &IpAddr, seg: &[u8]| {
                !fold(sum(seg, pseudo_header(src, dst, 17, seg.len())))
            };
            let c = full(&src, &dst, &seg);
            seg[6..8].copy_from_slice(&c.to_be_bytes());
            prop_assert!(verifies(pseudo_header(&src, &dst, 17, seg.len()), &seg));
            // Replace the source address (same family) and the source port.
            let new_src = match (a, b) {
                (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => b,
                _ => dst,
            };
            let mut hc = update_addr(c, &src, &new_src);
            hc = update_u16(hc, sp, np);
            seg[0..2].copy_from_slice(&np.to_be_bytes());
            seg[6..8].copy_from_slice(&hc.to_be_bytes());
            prop_assert!(verifies(pseudo_header(&new_src, &dst, 17, seg.len()), &seg));
            // Both zeros verify, so compare with the recomputation up to -0 == +0.
            seg[6..8].copy_from_slice(&[0, 0]);
            let recomputed = full(&new_src, &dst, &seg);
            prop_assert!(hc == recomputed || (hc, recomputed) == (0, 0xffff) || (hc, recomputed) == (0xffff, 0));
        }
    }
}
