//! The authentication extension's MAC (seed 001 FIG. 6): HMAC-SHA-256 (RFC 2104,
//! FIPS 180-4) under a key chosen by the SPI. Until the security layer's key exchange
//! exists the key is a configured pre-shared key; a message is never sent without one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the MAC carried in the authentication extension.
pub const MAC_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A key and the security parameter index that names it.
#[derive(Clone)]
pub struct AuthKey {
    spi: u32,
    key: [u8; 32],
}

impl AuthKey {
    pub fn new(spi: u32, key: [u8; 32]) -> AuthKey {
        AuthKey { spi, key }
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub(crate) fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Constant-time check (the `hmac` crate compares in constant time).
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        m.update(data);
        m.verify_slice(tag).is_ok()
    }
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("AuthKey")
            .field("spi", &self.spi)
            .finish_non_exhaustive()
    }
}
