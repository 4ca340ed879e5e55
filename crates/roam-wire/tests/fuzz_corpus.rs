//! Replays the committed fuzz corpus (`fuzz/corpus/control_decode/`) through the fuzz
//! target's body, `roam_wire::fuzzing::decode`, so that stable CI checks every input the
//! fuzzer ever kept.
//!
//! The seed files are named for what they are: `valid-*` files are messages of every
//! type (sealed ones under `fuzzing::corpus_key()`, SPI 7: a fuzzer cannot forge tags, so
//! it needs valid seals to mutate), and `bad-<reason>-*` files are malformed messages
//! that must be refused for `<reason>`. Both are checked here. The seeds are what
//! `seeds()` builds; `ROAM_WRITE_CORPUS=1 cargo test -p roam-wire --test fuzz_corpus`
//! writes them again after a deliberate format change. Without that variable nothing
//! is written.

#[path = "support/corpus.rs"]
mod corpus;

use std::net::SocketAddr;
use std::path::PathBuf;

use roam_wire::{
    Capabilities, DecodeError, Extension, Frame, Header, Locator, LocatorRole, Message, MessageType,
    Migration, MigrationStatus, NodeId, Opaque, ProtoFlags, fuzzing,
};

fn dir() -> PathBuf {
    corpus::dir("control_decode")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const SPI: u32 = 7;

fn encode(m: &Message) -> Vec<u8> {
    if m.header.msg_type.is_handshake() {
        m.encode_clear().unwrap()
    } else {
        m.seal(SPI, &fuzzing::corpus_key()).unwrap()
    }
}

/// What a receiver holding the corpus key makes of `data`.
fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let f = Frame::parse(data)?;
    if f.is_sealed() {
        f.open(&fuzzing::corpus_key())
    } else {
        f.decode_clear()
    }
}

fn set_len(v: &mut [u8]) {
    let n = u16::try_from(v.len()).unwrap();
    v[6..8].copy_from_slice(&n.to_be_bytes());
}

/// The seed files: one valid message of each type (and a few variants), then
/// malformed ones named for the reason they are refused.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let id = NodeId::new(0x0000_1234_5678).unwrap();
    let other = NodeId::new(0x0000_9abc_def0).unwrap();
    let mig4 = Migration::new(
        ProtoFlags::TCP,
        sa("10.0.1.10:40000"),
        sa("10.0.2.10:40000"),
        sa("10.0.3.11:5001"),
    )
    .unwrap();
    let mig6 = Migration::new(
        ProtoFlags::UDP,
        sa("[fd00::a]:41000"),
        sa("[fd00:2::a]:41000"),
        sa("[fd00:3::b]:6000"),
    )
    .unwrap();
    let wildcard = Migration::new(
        ProtoFlags::ALL,
        sa("10.0.1.10:0"),
        sa("10.0.2.10:0"),
        sa("0.0.0.0:0"),
    )
    .unwrap();
    let loc = |role, a: &str| Extension::Locator(Locator::new(role, sa(a)));
    let old = loc(LocatorRole::Old, "10.0.1.10:0");
    let new = loc(LocatorRole::New, "10.0.2.10:0");
    let noise = |n: usize, fill: u8| Extension::Noise(vec![fill; n]);

    let mut valid: Vec<(&str, Message)> = Vec::new();
    for (i, t) in MessageType::ALL.into_iter().enumerate() {
        let replay = if t.is_handshake() { 0 } else { 1000 + i as u64 };
        let mut m = Message::new(Header::new(t, id, 7 + i as u16, replay));
        use MessageType::*;
        m.extensions = match t {
            RegistrationRequest => vec![
                loc(LocatorRole::Own, "10.0.1.10:4791"),
                Extension::Capabilities(Capabilities {
                    flags: Capabilities::MOBILE | Capabilities::HOLDS_PACKETS,
                }),
            ],
            RegistrationReply => vec![loc(LocatorRole::Own, "[fd00:3::b]:4791")],
            MigrationRequest => vec![Extension::Migration(mig4), Extension::Opaque(Opaque::outage(20))],
            MigrationReply => vec![Extension::Migration(mig4)],
            ConnectionUpdate => vec![
                Extension::Migration(mig4),
                Extension::Migration(mig6),
                Extension::Opaque(Opaque::outage(350)),
            ],
            ConnectionUpdateAck => vec![Extension::Migration(mig6.with_status(MigrationStatus::Stale))],
            ConnectionUpdateRequest => vec![],
            Subscribe => vec![
                loc(LocatorRole::Watch, "10.0.3.11:4791"),
                loc(LocatorRole::Notify, "10.0.1.10:4791"),
                loc(LocatorRole::Own, "10.0.1.10:4791"),
            ],
            Publish | AddressChange | MigrationCompleted => vec![old.clone(), new.clone()],
            Notify => vec![old.clone(), new.clone(), Extension::Identity(other)],
            Termination => vec![Extension::Migration(wildcard)],
            TerminationAck => vec![],
            PathChallenge | PathResponse => vec![Extension::Challenge(*b"0123456789abcdef")],
            HandshakeInit => vec![Extension::SenderIndex(0x1111_2222), noise(32, 0xe1)],
            HandshakeResponse => vec![
                Extension::SenderIndex(0x3333_4444),
                Extension::ReceiverIndex(0x1111_2222),
                noise(48, 0xe2),
            ],
            HandshakeFinish => vec![Extension::ReceiverIndex(0x3333_4444), noise(48, 0xe3)],
            CookieReply => vec![
                Extension::ReceiverIndex(0x1111_2222),
                Extension::Cookie(*b"cookie-cookie-16"),
            ],
        };
        if t.is_reply() {
            m.header.flags = 0;
        }
        valid.push((t.name(), m));
    }
    let mut out: Vec<(String, Vec<u8>)> = valid
        .iter()
        .map(|(name, m)| {
            let file = format!("valid-{}", name.to_lowercase().replace(' ', "-"));
            (file, encode(m))
        })
        .collect();
    // Variants: an Init retried with a cookie, a sealed message with an unknown
    // optional extension and an opaque of an unknown sub-type.
    let init_cookie = Message::new(Header::new(MessageType::HandshakeInit, id, 30, 0))
        .with(Extension::SenderIndex(0x1111_2222))
        .with(noise(32, 0xe1))
        .with(Extension::Cookie(*b"cookie-cookie-16"));
    out.push(("valid-handshake-init-with-cookie".into(), encode(&init_cookie)));
    let optional = Message::new(Header::new(MessageType::Termination, id, 31, 5000))
        .with(Extension::Unknown {
            ext_type: 200,
            body: b"later".to_vec(),
        })
        .with(Extension::Opaque(Opaque {
            sub_type: 77,
            flags: 1,
            data: vec![1, 2, 3],
        }));
    out.push((
        "valid-termination-with-optional-extensions".into(),
        encode(&optional),
    ));

    let find = |name: &str| out.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let update = find("valid-connection-update");
    let init = find("valid-handshake-init");
    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut v = update.clone();
    *v.last_mut().unwrap() ^= 0x01;
    bad.push(("bad_mac-tag-bit-flipped", v));
    let mut v = update.clone();
    v[30] ^= 0x80;
    bad.push(("bad_mac-ciphertext-bit-flipped", v));
    bad.push(("truncated-short-header", update[..10].to_vec()));
    bad.push(("length_mismatch-cut-short", update[..update.len() - 1].to_vec()));
    let mut v = init.clone();
    v.extend_from_slice(&[12, 0, 0, 2, 0xab, 0xcd]);
    set_len(&mut v);
    bad.push(("unknown_extension-type-12-in-handshake", v));
    let mut v = init.clone();
    v[3] = 0x01;
    bad.push(("sealed_handshake-protected-init", v));
    let mut v = update[..24].to_vec();
    v[3] = 0;
    v.extend_from_slice(&[2, 0, 0, 24]);
    v.extend_from_slice(&[1, 4, 0, 0, 0x9c, 0x40, 0x9c, 0x40, 0x13, 0x89, 0, 0]);
    v.extend_from_slice(&[10, 0, 1, 10, 10, 0, 2, 10, 10, 0, 3, 11]);
    set_len(&mut v);
    bad.push(("unsealed-connection-update-in-clear", v));
    let mut v = init.clone();
    v[1] = 0x44;
    bad.push(("reserved_type-0x44", v));
    let mut v = update[..24].to_vec();
    v.extend_from_slice(&[3, 0, 0, 2, 1, 0]);
    set_len(&mut v);
    bad.push(("missing_auth-no-authentication-extension", v));
    out.extend(bad.into_iter().map(|(n, b)| (format!("bad-{n}"), b)));
    out
}

#[test]
fn every_control_decode_corpus_input_keeps_the_fuzz_invariants() {
    let files = corpus::files("control_decode");
    for (_, data) in &files {
        fuzzing::decode(data);
    }
    assert!(
        files.len() >= MessageType::ALL.len(),
        "only {} corpus files",
        files.len()
    );
}

#[test]
fn the_corpus_seeds_are_what_their_names_say() {
    let files = corpus::files("control_decode");
    let mut types = std::collections::BTreeSet::new();
    for (name, data) in &files {
        if name.starts_with("valid-") {
            let m = decode(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            types.insert(m.header.msg_type as u8);
        } else if let Some(rest) = name.strip_prefix("bad-") {
            let reason = rest.split('-').next().unwrap();
            let e = decode(data).expect_err(name);
            assert_eq!(e.reason(), reason, "{name}: {e}");
        }
    }
    let all: std::collections::BTreeSet<u8> = MessageType::ALL.iter().map(|t| *t as u8).collect();
    assert_eq!(types, all, "a valid seed of every message type");
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
            "{name}: the encoding changed; after a deliberate change, rewrite the seeds with ROAM_WRITE_CORPUS=1"
        );
    }
}
