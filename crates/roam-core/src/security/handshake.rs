//! The Noise XX handshake (Noise Protocol Framework rev. 34, §7.5):
//!
//! ```text
//! -> e
//! <- e, ee, s, es
//! -> s, se
//! ```
//!
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s`, with `snow`. XX rather than IK because roam
//! meets its peers through flows to arbitrary addresses: the initiator does not know in
//! advance which key (if any) is at the far end, and XX authenticates both static keys
//! without that knowledge; the trust policy then decides. It costs one and a half round
//! trips once per peer (and per rekey), off the path of a move.
//!
//! The handshake's randomness (ephemeral keys) comes from bytes the endpoint draws from
//! its own RNG, so the core stays free of ambient randomness and simulations replay.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use roam_wire::SessionKey;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use thiserror::Error;

use super::identity::{PublicKey, StaticKey};

pub const NOISE_PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Binds every handshake to this protocol and version (Noise §6 prologue).
const PROLOGUE: &[u8] = b"roam control protocol v1";

/// Largest Noise message (Noise §3).
const MAX_NOISE: usize = 65535;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("handshake message does not verify or is malformed")]
    Noise,
    #[error("the peer presented no static key")]
    NoStaticKey,
}

impl From<snow::Error> for HandshakeError {
    fn from(_: snow::Error) -> HandshakeError {
        HandshakeError::Noise
    }
}

/// Keys for one direction each.
pub struct Keys {
    pub send: SessionKey,
    pub recv: SessionKey,
}

/// snow's resolver with our randomness.
struct Resolver {
    seed: [u8; 32],
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A handshake state for our key, seeded from `rng`.
fn build(
    key: &StaticKey,
    rng: &mut dyn RngCore,
    initiator: bool,
) -> Result<snow::HandshakeState, HandshakeError> {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let params = NOISE_PATTERN.parse().map_err(|_| HandshakeError::Noise)?;
    let b = snow::Builder::with_resolver(params, Box::new(Resolver { seed }))
        .local_private_key(key.secret_bytes())?
        .prologue(PROLOGUE)?;
    Ok(if initiator {
        b.build_initiator()?
    } else {
        b.build_responder()?
    })
}

fn remote_static(hs: &snow::HandshakeState) -> Result<PublicKey, HandshakeError> {
    let s = hs.get_remote_static().ok_or(HandshakeError::NoStaticKey)?;
    Ok(PublicKey(s.try_into().map_err(|_| HandshakeError::NoStaticKey)?))
}

/// The initiator's side.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Starts a handshake; returns the state and message 1.
    pub fn start(key: &StaticKey, rng: &mut dyn RngCore) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let mut hs = build(key, rng, true)?;
        let mut buf = vec![0u8; MAX_NOISE];
        let n = hs.write_message(&[], &mut buf)?;
        buf.truncate(n);
        Ok((Initiator { hs }, buf))
    }

    /// Reads message 2: the responder's static key and its payload.
    pub fn read_response(&mut self, msg: &[u8]) -> Result<(PublicKey, Vec<u8>), HandshakeError> {
        let mut payload = vec![0u8; MAX_NOISE];
        let n = self.hs.read_message(msg, &mut payload)?;
        payload.truncate(n);
        Ok((remote_static(&self.hs)?, payload))
    }

    /// Writes message 3 carrying `payload`; the handshake is complete.
    pub fn finish(mut self, payload: &[u8]) -> Result<(Vec<u8>, Keys), HandshakeError> {
        let mut buf = vec![0u8; MAX_NOISE];
        let n = self.hs.write_message(payload, &mut buf)?;
        buf.truncate(n);
        // Noise §5.2 Split: the initiator sends with the first key.
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        Ok((
            buf,
            Keys {
                send: SessionKey::new(k1),
                recv: SessionKey::new(k2),
            },
        ))
    }
}

/// The responder's side.
pub struct Responder {
    hs: snow::HandshakeState,
}

impl Responder {
    /// Reads message 1 (an ephemeral key only: nothing is authenticated yet, and no
    /// Diffie-Hellman is computed).
    pub fn read_init(
        key: &StaticKey,
        rng: &mut dyn RngCore,
        msg: &[u8],
    ) -> Result<Responder, HandshakeError> {
        let mut hs = build(key, rng, false)?;
        let mut payload = vec![0u8; MAX_NOISE];
        hs.read_message(msg, &mut payload)?;
        Ok(Responder { hs })
    }

    /// Writes message 2 carrying `payload` (encrypted, after `ee` and `es`).
    pub fn respond(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut buf = vec![0u8; MAX_NOISE];
        let n = self.hs.write_message(payload, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads message 3: the initiator's static key, its payload, and the session keys.
    pub fn finish(mut self, msg: &[u8]) -> Result<(PublicKey, Vec<u8>, Keys), HandshakeError> {
        let mut payload = vec![0u8; MAX_NOISE];
        let n = self.hs.read_message(msg, &mut payload)?;
        payload.truncate(n);
        let peer = remote_static(&self.hs)?;
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        Ok((
            peer,
            payload,
            Keys {
                send: SessionKey::new(k2),
                recv: SessionKey::new(k1),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_wire::{Header, Message, MessageType, NodeId};

    #[test]
    fn both_ends_learn_each_others_key_and_agree_on_session_keys() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = StaticKey::generate(&mut rng);
        let b = StaticKey::generate(&mut rng);
        let (mut i, m1) = Initiator::start(&a, &mut rng).unwrap();
        let mut r = Responder::read_init(&b, &mut rng, &m1).unwrap();
        let m2 = r.respond(b"from b").unwrap();
        let (b_pub, p2) = i.read_response(&m2).unwrap();
        assert_eq!((b_pub, p2.as_slice()), (b.public(), &b"from b"[..]));
        let (m3, ik) = i.finish(b"from a").unwrap();
        let (a_pub, p3, rk) = r.finish(&m3).unwrap();
        assert_eq!((a_pub, p3.as_slice()), (a.public(), &b"from a"[..]));
        // What the initiator seals, the responder opens, and the reverse.
        let msg = Message::new(Header::new(
            MessageType::TerminationAck,
            NodeId::new(1).unwrap(),
            1,
            5,
        ));
        let sealed = msg.seal(9, &ik.send).unwrap();
        let f = roam_wire::Frame::parse(&sealed).unwrap();
        assert_eq!(f.open(&rk.recv).unwrap(), msg);
        assert!(f.open(&rk.send).is_err());
        let back = msg.seal(9, &rk.send).unwrap();
        assert_eq!(
            roam_wire::Frame::parse(&back).unwrap().open(&ik.recv).unwrap(),
            msg
        );
    }

    #[test]
    fn a_tampered_or_replayed_handshake_message_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = StaticKey::generate(&mut rng);
        let b = StaticKey::generate(&mut rng);
        let (mut i, m1) = Initiator::start(&a, &mut rng).unwrap();
        let mut r = Responder::read_init(&b, &mut rng, &m1).unwrap();
        let mut m2 = r.respond(b"x").unwrap();
        let last = m2.len() - 1;
        m2[last] ^= 1;
        assert_eq!(i.read_response(&m2).unwrap_err(), HandshakeError::Noise);
        // Message 3 of one handshake does not complete another.
        let (mut i2, m1b) = Initiator::start(&a, &mut rng).unwrap();
        let mut r2 = Responder::read_init(&b, &mut rng, &m1b).unwrap();
        let m2b = r2.respond(b"").unwrap();
        i2.read_response(&m2b).unwrap();
        let (m3b, _) = i2.finish(b"").unwrap();
        let mut r3 = Responder::read_init(&b, &mut rng, &m1).unwrap();
        r3.respond(b"").unwrap();
        assert!(
            r3.finish(&m3b).is_err(),
            "a captured message 3 is useless elsewhere"
        );
    }
}
