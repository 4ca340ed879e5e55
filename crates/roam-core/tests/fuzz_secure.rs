//! The `secure` fuzz target (handshake and decryption paths) on stable: its committed
//! corpus (`fuzz/corpus/secure/`), seeded mutations of it, and a property test that no
//! tampered sealed message is ever accepted.
//!
//! The corpus starts from valid messages of each kind (a fuzzer cannot forge a Noise
//! message or a tag, so it needs real ones to mutate). `seeds()` builds them;
//! `ROAM_WRITE_CORPUS=1 cargo test -p roam-core --test fuzz_secure` writes them again
//! after a deliberate change. Without that variable nothing is written.

#[path = "../../roam-wire/tests/support/corpus.rs"]
mod corpus;
#[path = "support/mutations.rs"]
mod mutations;

use std::path::PathBuf;

use mutations::Mutations;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use roam_core::Instant;
use roam_core::fuzzing::{secure, secure_session_keys};
use roam_core::security::{Initiator, Responder, Session, StaticKey};
use roam_wire::{Extension, Frame, Header, Message, MessageType, Migration, NodeId, ProtoFlags};

fn dir() -> PathBuf {
    corpus::dir("secure")
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn update(seq: u16) -> Message {
    let m = Migration::new(
        ProtoFlags::TCP,
        "10.0.1.10:40000".parse().unwrap(),
        "10.0.2.10:40000".parse().unwrap(),
        "10.0.3.11:5001".parse().unwrap(),
    )
    .unwrap();
    Message::new(Header::new(
        MessageType::ConnectionUpdate,
        NodeId::new(0x5a5a_0001).unwrap(),
        seq,
        0,
    ))
    .with(Extension::Migration(m))
}

/// Valid inputs for each mode of the target, built the way the target builds its
/// own state (same keys, same seeded randomness).
fn seeds() -> Vec<(String, Vec<u8>)> {
    let a = StaticKey::from_bytes([1; 32]);
    let b = StaticKey::from_bytes([2; 32]);
    let mut out = Vec::new();
    // 0: an Init.
    let (_, m1) = Initiator::start(&a, &mut ChaCha20Rng::from_seed([9; 32])).unwrap();
    out.push(("seed-init".into(), with_mode(0, &m1)));
    // 1: the responder's real Response to the target's Init.
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let (_, m1) = Initiator::start(&a, &mut rng).unwrap();
    let mut r = Responder::read_init(&b, &mut ChaCha20Rng::from_seed([8; 32]), &m1).unwrap();
    let m2 = r.respond(b"").unwrap();
    out.push(("seed-response".into(), with_mode(1, &m2)));
    // 2: the initiator's real Finish to the target's Response.
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let (mut i2, m1) = Initiator::start(&a, &mut rng).unwrap();
    let mut r = Responder::read_init(&b, &mut rng, &m1).unwrap();
    let m2 = r.respond(b"").unwrap();
    i2.read_response(&m2).unwrap();
    let (m3, _) = i2.finish(b"").unwrap();
    out.push(("seed-finish".into(), with_mode(2, &m3)));
    // 3: sealed messages under the target's session key.
    let (key, index) = secure_session_keys();
    for (n, counter) in [(0u16, 0u64), (1, 1), (2, 1 << 40)] {
        let mut msg = update(n);
        msg.header.replay_id = counter;
        out.push((
            format!("seed-sealed-{n}"),
            with_mode(3, &msg.seal(index, &key).unwrap()),
        ));
    }
    // 4: a sealed update for the endpoint (under a key it does not have), and an Init.
    let mut msg = update(9);
    msg.header.replay_id = 3;
    out.push((
        "seed-endpoint-update".into(),
        with_mode(4, &msg.seal(1, &key).unwrap()),
    ));
    let init = Message::new(Header::new(
        MessageType::HandshakeInit,
        NodeId::new(77).unwrap(),
        1,
        0,
    ))
    .with(Extension::SenderIndex(5))
    .with(Extension::Noise(m1.clone()));
    out.push((
        "seed-endpoint-init".into(),
        with_mode(4, &init.encode_clear().unwrap()),
    ));
    out
}

#[test]
fn the_corpus_seeds_are_current() {
    if std::env::var_os("ROAM_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir().join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds() {
        let path = dir().join(&name);
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            stored, bytes,
            "{name} changed; rewrite the seeds with ROAM_WRITE_CORPUS=1"
        );
    }
}

#[test]
fn the_valid_seeds_reach_the_success_paths() {
    // Each seed is accepted where it should be: the target's invariants are checked on
    // real successes, not only on refusals.
    for (name, data) in seeds() {
        secure(&data);
        let (&mode, rest) = data.split_first().unwrap();
        let a = StaticKey::from_bytes([1; 32]);
        let b = StaticKey::from_bytes([2; 32]);
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        if mode == 1 {
            let (mut i, _) = Initiator::start(&a, &mut rng).unwrap();
            assert_eq!(i.read_response(rest).unwrap().0, b.public(), "{name}");
        }
        if mode == 2 {
            let (_, m1) = Initiator::start(&a, &mut rng).unwrap();
            let mut r = Responder::read_init(&b, &mut rng, &m1).unwrap();
            r.respond(b"").unwrap();
            assert_eq!(r.finish(rest).unwrap().0, a.public(), "{name}");
        }
        if mode == 3 {
            let (key, index) = secure_session_keys();
            let mut s = Session::new(
                NodeId::new(0x5a5a_0001).unwrap(),
                index,
                1,
                key.clone(),
                key,
                Instant::ZERO,
            );
            assert!(
                s.open(&Frame::parse(rest).unwrap(), Instant::ZERO).is_ok(),
                "{name}"
            );
        }
    }
}

#[test]
fn every_corpus_input_keeps_the_invariants() {
    let files = corpus::files("secure");
    assert!(files.len() >= 8, "only {} files", files.len());
    for (name, data) in files {
        let r = std::panic::catch_unwind(|| secure(&data));
        assert!(r.is_ok(), "corpus file {name} breaks an invariant");
    }
}

#[test]
fn seeded_mutations_of_the_corpus_keep_the_invariants() {
    Mutations {
        seed: 0x7365_6375_7265,
        runs: 3_000,
        max_edits: 3,
        // Never the mode byte: the mutation stays an input of the same kind.
        protect: 1,
        selectors: &[],
        min_len: 1,
    }
    .check(&corpus::files("secure"), |data| {
        secure(data);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No tampered sealed message is ever accepted: change any bit of it, or cut it,
    /// and the session refuses it, counts nothing as received, and still opens the
    /// untouched message afterwards.
    #[test]
    fn no_tampered_sealed_message_is_ever_accepted(
        seq in any::<u16>(),
        counter in 0u64..1 << 48,
        flip in any::<usize>(),
        bit in 0u8..8,
        cut in any::<bool>(),
    ) {
        let (key, index) = secure_session_keys();
        let mut msg = update(seq);
        msg.header.replay_id = counter;
        let good = msg.seal(index, &key).unwrap();
        let mut bad = good.clone();
        if cut {
            bad.truncate(flip % good.len());
        } else {
            let at = flip % good.len();
            bad[at] ^= 1 << bit;
        }
        let mut s = Session::new(NodeId::new(0x5a5a_0001).unwrap(), index, 1, key.clone(), key, Instant::ZERO);
        let opened = Frame::parse(&bad).ok().map(|f| s.open(&f, Instant::ZERO));
        prop_assert!(!matches!(opened, Some(Ok(_))), "a tampered message opened");
        prop_assert!(s.open(&Frame::parse(&good).unwrap(), Instant::ZERO).is_ok());
    }
}
