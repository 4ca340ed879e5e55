//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is
/// padded with zero), added to `acc`. Not folded.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold early so that long buffers cannot overflow the accumulator.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds carries back in: the 16-bit one's-complement sum.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data` (RFC 1071): the complement of its one's-complement sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// RFC 1624 eqn. 3: the checksum `hc` after the bytes `old` (of even length, at an even
/// offset of the checksummed data) became `new`: HC' = ~(~HC + ~m + m').
pub fn update(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    // ~m summed word by word is the complement of the sum of m (one's complement).
    let acc = u32::from(!hc) + u32::from(!fold(sum(old, 0))) + u32::from(fold(sum(new, 0)));
    !fold(acc)
}

/// [`update`] for a 16-bit field.
pub fn update_u16(hc: u16, old: u16, new: u16) -> u16 {
    update(hc, &old.to_be_bytes(), &new.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(checksum(&data), 0);
        let old = data[12..16].to_vec();
        data[12..16].copy_from_slice(&[192, 168, 200, 77]);
        let hc = update(c, &old, &data[12..16]);
        data[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(hc, checksum(&data));
    }
}
