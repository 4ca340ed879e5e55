//! Cost of encoding and decoding roam's main control messages (issue 7), next to a
//! baseline measured in the same run.
//!
//!     cargo bench -p roam-wire --bench codec              # everything, then a ratio table
//!     cargo bench -p roam-wire --bench codec -- update    # a filter, as criterion takes
//!
//! Per message, what a daemon does with it:
//! - `seal`: `Message::seal` (validate, encode, ChaCha20-Poly1305 over the extensions,
//!   RFC 8439) for sealed messages; `encode_clear` for the handshake message;
//! - `open`: `Frame::parse` then `Frame::open` (tag check, decrypt, decode, validate);
//!   `Frame::decode_clear` for the handshake message;
//! - `encode_plain` / `decode_plain` (sealed messages): `encode_extensions` /
//!   `decode_extensions` of the same extensions, the codec without the AEAD, so the
//!   cipher's share of `seal` and `open` shows.
//!
//! Baseline, per message: `memcpy`, a copy of as many bytes as the sealed datagram into
//! a buffer allocated once (the least a receiver pays to take the datagram in).
//! `seal`, `open` and the plain codec allocate (the datagram, the plaintext, the
//! extension list); the baseline does not, so the ratio includes the allocator.
//!
//! Every message is sealed and opened under one key and one Replay Protect ID: fine
//! for timing (nothing secret here), never what a session does (the ID is the nonce).
//! Before anything is timed each message round-trips once and is checked, so a
//! benchmark cannot quietly measure an error path (this also runs under
//! `cargo test --benches`, where criterion runs each routine once).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::SystemTime;

#[path = "support/ratio.rs"]
mod ratio;

use criterion::Criterion;
use roam_wire::{
    Extension, Frame, Header, Locator, LocatorRole, MAX_DATAGRAM_LEN, Message, MessageType, Migration,
    NodeId, Opaque, ProtoFlags, SessionKey, decode_extensions, encode_extensions,
};

const SPI: u32 = 0x0bad_cafe;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a literal socket address")
}

fn header(t: MessageType) -> Header {
    Header::new(
        t,
        NodeId::from_low_bits(0x0a0b_0c0d_0e0f),
        0x1234,
        0x0102_0304_0506_0708,
    )
}

/// One moved IPv4 TCP flow (RFC 5737 documentation addresses).
fn migration_v4() -> Migration {
    Migration::new(
        ProtoFlags::TCP,
        sa("192.0.2.10:10000"),
        sa("203.0.113.20:40000"),
        sa("198.51.100.30:443"),
    )
    .expect("one family")
}

/// Moved IPv6 flow `i` (RFC 3849 documentation prefix).
fn migration_v6(i: u16) -> Migration {
    Migration::new(
        ProtoFlags::TCP,
        SocketAddr::new(sa("[2001:db8:a::10]:1").ip(), 10_000 + i),
        SocketAddr::new(sa("[2001:db8:b::20]:1").ip(), 40_000 + i),
        sa("[2001:db8:c::30]:443"),
    )
    .expect("one family")
}

/// The messages measured: (name, message). The control traffic of one move: the
/// mover's Connection Update (one flow; and sixteen IPv6 flows, about the most one
/// datagram holds), the peer's acknowledgment, the return-routability challenge, an
/// address-change notice, and the first handshake message (in clear).
fn messages() -> Vec<(&'static str, Message)> {
    let update_16 = (0..16).fold(Message::new(header(MessageType::ConnectionUpdate)), |m, i| {
        m.with(Extension::Migration(migration_v6(i)))
    });
    vec![
        (
            "connection_update_1",
            Message::new(header(MessageType::ConnectionUpdate))
                .with(Extension::Migration(migration_v4()))
                .with(Extension::Opaque(Opaque::outage(180))),
        ),
        ("connection_update_16_v6", update_16),
        (
            "connection_update_ack_1",
            Message::new(header(MessageType::ConnectionUpdateAck)).with(Extension::Migration(migration_v4())),
        ),
        (
            "path_challenge",
            Message::new(header(MessageType::PathChallenge)).with(Extension::Challenge([0x5a; 16])),
        ),
        (
            "address_change",
            Message::new(header(MessageType::AddressChange))
                .with(Extension::Locator(Locator::new(
                    LocatorRole::Old,
                    sa("192.0.2.10:0"),
                )))
                .with(Extension::Locator(Locator::new(
                    LocatorRole::New,
                    sa("203.0.113.20:0"),
                ))),
        ),
        (
            "handshake_init",
            // Noise XX message 1: the initiator's ephemeral key, 32 bytes.
            Message::new(header(MessageType::HandshakeInit))
                .with(Extension::SenderIndex(7))
                .with(Extension::Noise(vec![0x42; 32])),
        ),
    ]
}

fn encode(m: &Message, key: &SessionKey) -> Vec<u8> {
    if m.header.msg_type.is_handshake() {
        m.encode_clear().expect("a valid handshake message")
    } else {
        m.seal(SPI, key).expect("a valid message")
    }
}

fn decode(bytes: &[u8], key: &SessionKey) -> Message {
    let f = Frame::parse(bytes).expect("well framed");
    if f.is_sealed() {
        f.open(key).expect("opens under its key")
    } else {
        f.decode_clear().expect("decodes")
    }
}

use ratio::Pairs;

fn bench_message(c: &mut Criterion, name: &str, msg: &Message, key: &SessionKey, pairs: &mut Pairs) {
    let group_name = format!("codec_{name}");
    let bytes = encode(msg, key);
    assert_eq!(bytes.len(), msg.encoded_len());
    assert!(bytes.len() <= MAX_DATAGRAM_LEN, "{name} fits one datagram");
    assert_eq!(&decode(&bytes, key), msg, "{name} round-trips");
    let sealed = !msg.header.msg_type.is_handshake();
    let plain = encode_extensions(&msg.extensions).expect("valid extensions");
    assert_eq!(decode_extensions(&plain).as_ref(), Ok(&msg.extensions));

    let mut group = c.benchmark_group(&group_name);
    let baseline = format!("{group_name}/memcpy");
    let mut buf = vec![0u8; bytes.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&bytes));
            black_box(&mut buf);
        })
    });
    group.bench_function("seal", |b| b.iter(|| encode(black_box(msg), black_box(key))));
    group.bench_function("open", |b| b.iter(|| decode(black_box(&bytes), black_box(key))));
    pairs.push((format!("{group_name}/seal"), baseline.clone()));
    pairs.push((format!("{group_name}/open"), baseline.clone()));
    if sealed {
        group.bench_function("encode_plain", |b| {
            b.iter(|| encode_extensions(black_box(&msg.extensions)))
        });
        group.bench_function("decode_plain", |b| {
            b.iter(|| decode_extensions(black_box(&plain)))
        });
        pairs.push((format!("{group_name}/encode_plain"), baseline.clone()));
        pairs.push((format!("{group_name}/decode_plain"), baseline));
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = ratio::criterion();
    let key = SessionKey::new([0x11; 32]);
    let mut pairs = Pairs::new();
    let mut sizes = Vec::new();
    for (name, msg) in messages() {
        sizes.push((name, msg.encoded_len()));
        bench_message(&mut c, name, &msg, &key, &mut pairs);
    }
    c.final_summary();
    if ratio::measuring() {
        println!("\ndatagram sizes (bytes, sealed unless a handshake message):");
        for (name, len) in sizes {
            println!("  {name:<26} {len:>5}");
        }
        ratio::ratio_table(
            "codec, median ns per message against a memcpy of the datagram's length",
            &pairs,
            started,
        );
    }
}
