//! A host's long-term X25519 key pair. The identifier cookie of seed 001 (FIG. 5,
//! "a one-way hash ... yields a unique 48-bit entry") is derived from the public key, so
//! a node's identifier and its key cannot disagree.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::RngCore;
use roam_wire::NodeId;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("a key is 32 bytes, this is {0}")]
    Length(usize),
}

/// A public key, written as base64 (as WireGuard writes them).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Seed 001's identifier cookie: the low 48 bits of SHA-256 over the key.
    pub fn node_id(&self) -> NodeId {
        let h = Sha256::digest(self.0);
        NodeId::from_low_bits(u64::from_be_bytes(h[..8].try_into().expect("8 bytes")))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let v = B64.decode(s.trim()).map_err(|_| KeyError::Base64)?;
    let n = v.len();
    v.try_into().map_err(|_| KeyError::Length(n))
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        decode32(s).map(PublicKey)
    }
}

/// A host's private key (and its public key). Never printed.
#[derive(Clone)]
pub struct StaticKey {
    secret: [u8; 32],
    public: PublicKey,
}

impl StaticKey {
    /// From 32 secret bytes (X25519 clamps them, RFC 7748 §5).
    pub fn from_bytes(secret: [u8; 32]) -> StaticKey {
        let s = x25519_dalek::StaticSecret::from(secret);
        let public = PublicKey(x25519_dalek::PublicKey::from(&s).to_bytes());
        StaticKey { secret, public }
    }

    /// A fresh key from `rng` (the OS's, for `roam keygen`; a seeded one in tests).
    pub fn generate(rng: &mut dyn RngCore) -> StaticKey {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        StaticKey::from_bytes(secret)
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The private key as base64, for a key file.
    pub fn to_base64(&self) -> String {
        B64.encode(self.secret)
    }

    pub fn from_base64(s: &str) -> Result<StaticKey, KeyError> {
        decode32(s).map(StaticKey::from_bytes)
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKey(public {})", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_base64_and_name_their_node() {
        let k = StaticKey::from_bytes([7; 32]);
        let again = StaticKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(k.public().to_string().parse::<PublicKey>().unwrap(), k.public());
        assert!(k.public().node_id().get() <= NodeId::MAX);
        assert!(
            !format!("{k:?}").contains(&k.to_base64()),
            "the secret is never printed"
        );
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
        assert_eq!("!!".parse::<PublicKey>(), Err(KeyError::Base64));
    }
}
