//! Message protection: ChaCha20-Poly1305 (RFC 8439) under a session key from the Noise
//! handshake's split, as Noise transport messages use it, with the message's header as
//! associated data. No hand-made cryptography: the AEAD is RustCrypto's.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

/// Length of the AEAD tag carried in the authentication extension.
pub const TAG_LEN: usize = 16;

/// A session key for one direction of one session.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn new(key: [u8; 32]) -> SessionKey {
        SessionKey(key)
    }

    /// Noise's nonce encoding for ChaChaPoly (Noise spec §12.3): 32 zero bits, then the
    /// 64-bit counter little-endian.
    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_le_bytes());
        Nonce::from(n)
    }

    pub(crate) fn seal(&self, counter: u64, ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let aead = ChaCha20Poly1305::new((&self.0).into());
        let tag = aead
            .encrypt_in_place_detached(&Self::nonce(counter), ad, buf)
            .expect("ChaCha20-Poly1305 seals any buffer shorter than 2^38 bytes");
        tag.into()
    }

    /// Decrypts in place; `false` (and `buf` unspecified) if the tag does not verify.
    pub(crate) fn open(&self, counter: u64, ad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let aead = ChaCha20Poly1305::new((&self.0).into());
        aead.decrypt_in_place_detached(&Self::nonce(counter), ad, buf, Tag::from_slice(tag))
            .is_ok()
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SessionKey(..)")
    }
}
