//! Properties of the control-message codec, as `docs/PROTOCOL.md` specifies it.
//!
//! The strategies generate every valid message of every type from a table of the rules
//! (`spec`), written here independently of `Message::validate`: the extensions each type
//! requires and allows, migrations of one address family, IPv6 endpoints without flow
//! label or scope, opaque data, and unknown optional extensions (type >= 128).
//!
//! "Decoding" is what a receiver does: `Frame::parse`, then `Frame::open` under the
//! session key for a sealed message or `Frame::decode_clear` for a handshake message.
//! Some tests seal by hand (`seal_by_spec`, with the AEAD crate directly) what the
//! document says a sealed message is; that pins the associated data and the nonce, and
//! lets the tests put arbitrary plaintext inside a valid seal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use proptest::prelude::*;
use proptest::sample::Index;
use roam_wire::{
    Capabilities, DecodeError, EncodeError, Extension, Frame, HEADER_LEN, Header, Locator, LocatorRole,
    Message, MessageType, Migration, MigrationStatus, NodeId, Opaque, ProtoFlags, SessionKey, TAG_LEN,
    decode_extensions, encode_extensions,
};

const KEY_BYTES: [u8; 32] = [0x11; 32];
const SPI: u32 = 0x0102_0304;
/// Authentication extension: type 1, flags 0, length 20 (SPI and tag).
const AUTH_PREFIX: [u8; 4] = [1, 0, 0, 20];
/// The authentication extension with its prefix: what follows the ciphertext.
const AUTH_EXT_LEN: usize = 4 + 4 + TAG_LEN;

fn key() -> SessionKey {
    SessionKey::new(KEY_BYTES)
}

/// Encodes `m` in the framing its type calls for (clear for handshake messages, sealed
/// under the test key and SPI otherwise).
fn encode(m: &Message) -> Result<Vec<u8>, EncodeError> {
    if m.header.msg_type.is_handshake() {
        m.encode_clear()
    } else {
        m.seal(SPI, &key())
    }
}

/// What a receiver holding `key` does with a datagram.
fn decode_with(bytes: &[u8], key: &SessionKey) -> Result<Message, DecodeError> {
    let f = Frame::parse(bytes)?;
    if f.is_sealed() {
        f.open(key)
    } else {
        f.decode_clear()
    }
}

fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_with(bytes, &key())
}

/// The 24-byte common header as docs/PROTOCOL.md lays it out.
fn header_bytes(h: &Header, header_flags: u8, total_len: usize) -> Vec<u8> {
    let mut out = vec![1, h.msg_type as u8, h.flags, header_flags];
    out.extend_from_slice(&h.sequence.to_be_bytes());
    out.extend_from_slice(&u16::try_from(total_len).unwrap().to_be_bytes());
    out.extend_from_slice(&h.sender.get().to_be_bytes()[2..]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&h.replay_id.to_be_bytes());
    out
}

/// A sealed message built from the document, not from the codec: header with PROTECTED
/// set, the plaintext encrypted with ChaCha20-Poly1305 under the nonce 0^32 ||
/// LE64(replay ID), the associated data header || auth prefix || SPI, then the
/// authentication extension (prefix, SPI, tag).
fn seal_by_spec(h: &Header, plaintext: &[u8], spi: u32, key: &[u8; 32]) -> Vec<u8> {
    let total = HEADER_LEN + plaintext.len() + AUTH_EXT_LEN;
    let mut out = header_bytes(h, 0x01, total);
    let mut ad = out.clone();
    ad.extend_from_slice(&AUTH_PREFIX);
    ad.extend_from_slice(&spi.to_be_bytes());
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&h.replay_id.to_le_bytes());
    let mut body = plaintext.to_vec();
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(&nonce.into(), &ad, &mut body)
        .unwrap();
    out.extend_from_slice(&body);
    out.extend_from_slice(&AUTH_PREFIX);
    out.extend_from_slice(&spi.to_be_bytes());
    out.extend_from_slice(&tag);
    out
}

/// A handshake (clear) datagram with `extensions` as its raw extension bytes.
fn clear_by_spec(h: &Header, extensions: &[u8]) -> Vec<u8> {
    let mut out = header_bytes(h, 0, HEADER_LEN + extensions.len());
    out.extend_from_slice(extensions);
    out
}

/// The datagram a sender following the document would send for header `h` and raw
/// extension bytes, in the framing of `h`'s type.
fn frame_by_spec(h: &Header, extensions: &[u8]) -> Vec<u8> {
    if h.msg_type.is_handshake() {
        clear_by_spec(h, extensions)
    } else {
        seal_by_spec(h, extensions, SPI, &KEY_BYTES)
    }
}

fn tlv(t: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![t, 0];
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn is_snake_case(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        && !s.starts_with('_')
        && !s.ends_with('_')
        && !s.contains("__")
}

// ---------------------------------------------------------------------------------------
// The rules, as docs/PROTOCOL.md's message table states them.

/// The kinds of extension whose number `Message::validate` checks (opaque data and
/// unknown optional extensions are allowed in any number in every message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Migration,
    Capabilities,
    Identity,
    Challenge,
    Noise,
    SenderIndex,
    ReceiverIndex,
    Cookie,
    Locator(LocatorRole),
}

const MANY: usize = usize::MAX;

/// (kind, minimum, maximum) for each type; a kind not listed may not appear.
fn spec(t: MessageType) -> Vec<(Kind, usize, usize)> {
    use Kind::*;
    use LocatorRole as R;
    use MessageType as M;
    match t {
        M::RegistrationRequest | M::RegistrationReply => vec![(Locator(R::Own), 1, 1), (Capabilities, 0, 1)],
        M::MigrationRequest | M::ConnectionUpdate => vec![(Migration, 1, MANY)],
        M::MigrationReply
        | M::ConnectionUpdateAck
        | M::ConnectionUpdateRequest
        | M::Termination
        | M::TerminationAck => {
            vec![(Migration, 0, MANY)]
        }
        M::Subscribe => vec![
            (Locator(R::Watch), 1, 1),
            (Locator(R::Notify), 1, 1),
            (Locator(R::Own), 0, 1),
        ],
        M::Publish | M::AddressChange | M::MigrationCompleted => {
            vec![(Locator(R::Old), 1, 1), (Locator(R::New), 1, 1)]
        }
        M::Notify => vec![(Locator(R::Old), 1, 1), (Locator(R::New), 1, 1), (Identity, 0, 1)],
        M::PathChallenge | M::PathResponse => vec![(Challenge, 1, 1)],
        M::HandshakeInit => vec![(SenderIndex, 1, 1), (Noise, 1, 1), (Cookie, 0, 1)],
        M::HandshakeResponse => vec![(SenderIndex, 1, 1), (ReceiverIndex, 1, 1), (Noise, 1, 1)],
        M::HandshakeFinish => vec![(ReceiverIndex, 1, 1), (Noise, 1, 1)],
        M::CookieReply => vec![(ReceiverIndex, 1, 1), (Cookie, 1, 1)],
    }
}

const ALL_KINDS: [Kind; 13] = [
    Kind::Migration,
    Kind::Capabilities,
    Kind::Identity,
    Kind::Challenge,
    Kind::Noise,
    Kind::SenderIndex,
    Kind::ReceiverIndex,
    Kind::Cookie,
    Kind::Locator(LocatorRole::Own),
    Kind::Locator(LocatorRole::Old),
    Kind::Locator(LocatorRole::New),
    Kind::Locator(LocatorRole::Notify),
    Kind::Locator(LocatorRole::Watch),
];

fn kind(e: &Extension) -> Option<Kind> {
    Some(match e {
        Extension::Migration(_) => Kind::Migration,
        Extension::Capabilities(_) => Kind::Capabilities,
        Extension::Identity(_) => Kind::Identity,
        Extension::Challenge(_) => Kind::Challenge,
        Extension::Noise(_) => Kind::Noise,
        Extension::SenderIndex(_) => Kind::SenderIndex,
        Extension::ReceiverIndex(_) => Kind::ReceiverIndex,
        Extension::Cookie(_) => Kind::Cookie,
        Extension::Locator(l) => Kind::Locator(l.role),
        _ => return None,
    })
}

/// Whether `m` is valid for its type according to the document.
fn spec_valid(m: &Message) -> bool {
    let well_formed = m.extensions.iter().all(|e| match e {
        Extension::Unknown { ext_type, .. } => *ext_type >= 128,
        Extension::Noise(n) => !n.is_empty(),
        _ => true,
    });
    let rules = spec(m.header.msg_type);
    well_formed
        && ALL_KINDS.iter().all(|k| {
            let n = m.extensions.iter().filter(|e| kind(e) == Some(*k)).count();
            let (min, max) = rules
                .iter()
                .find(|(rk, _, _)| rk == k)
                .map_or((0, 0), |(_, a, b)| (*a, *b));
            (min..=max).contains(&n)
        })
}

/// The document's rule: a migration names exactly one flow when it has exactly one
/// protocol flag, non-zero original and peer ports and a specified peer address.
fn spec_wildcard(m: &Migration) -> bool {
    let one_protocol = m.protocols() == ProtoFlags::TCP || m.protocols() == ProtoFlags::UDP;
    !(one_protocol && m.original().port() != 0 && m.peer().port() != 0 && !m.peer().ip().is_unspecified())
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn arb_port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => any::<u16>(), 1 => Just(0)]
}

/// An endpoint of one family. IPv6 ones come with random flow labels and scope ids,
/// which the constructors must clear (they are not carried).
fn arb_sock(v4: bool) -> BoxedStrategy<SocketAddr> {
    if v4 {
        (prop_oneof![4 => any::<[u8; 4]>(), 1 => Just([0; 4])], arb_port())
            .prop_map(|(o, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), p))
            .boxed()
    } else {
        (
            prop_oneof![4 => any::<[u8; 16]>(), 1 => Just([0; 16])],
            arb_port(),
            prop_oneof![Just(0u32), any::<u32>()],
            prop_oneof![Just(0u32), any::<u32>()],
        )
            .prop_map(|(o, p, flow, scope)| {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), p, flow, scope))
            })
            .boxed()
    }
}

fn arb_status() -> impl Strategy<Value = MigrationStatus> {
    prop_oneof![
        Just(MigrationStatus::Ok),
        Just(MigrationStatus::UnknownFlow),
        Just(MigrationStatus::Stale),
        Just(MigrationStatus::Refused),
    ]
}

fn arb_protocols() -> impl Strategy<Value = ProtoFlags> {
    prop_oneof![
        Just(ProtoFlags::ALL),
        Just(ProtoFlags::TCP),
        Just(ProtoFlags::UDP),
        Just(ProtoFlags(3)),
        any::<u8>().prop_map(ProtoFlags),
    ]
}

fn arb_migration() -> impl Strategy<Value = Migration> {
    any::<bool>()
        .prop_flat_map(|v4| {
            (
                arb_protocols(),
                arb_sock(v4),
                arb_sock(v4),
                arb_sock(v4),
                arb_status(),
            )
        })
        .prop_map(|(p, a, b, c, s)| Migration::new(p, a, b, c).expect("one family").with_status(s))
}

fn arb_role() -> impl Strategy<Value = LocatorRole> {
    prop_oneof![
        Just(LocatorRole::Own),
        Just(LocatorRole::Old),
        Just(LocatorRole::New),
        Just(LocatorRole::Notify),
        Just(LocatorRole::Watch),
    ]
}

fn arb_locator(role: LocatorRole) -> BoxedStrategy<Extension> {
    any::<bool>()
        .prop_flat_map(arb_sock)
        .prop_map(move |a| Extension::Locator(Locator::new(role, a)))
        .boxed()
}

fn arb_opaque() -> impl Strategy<Value = Extension> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(sub_type, flags, data)| Extension::Opaque(Opaque {
                sub_type,
                flags,
                data
            })),
        any::<u32>().prop_map(|ms| Extension::Opaque(Opaque::outage(ms))),
    ]
}

fn arb_unknown_optional() -> impl Strategy<Value = Extension> {
    (128u8..=255, proptest::collection::vec(any::<u8>(), 0..40))
        .prop_map(|(ext_type, body)| Extension::Unknown { ext_type, body })
}

/// Extensions every message may carry, in any number.
fn arb_free_ext() -> impl Strategy<Value = Extension> {
    prop_oneof![arb_opaque(), arb_unknown_optional()]
}

fn arb_of(k: Kind) -> BoxedStrategy<Extension> {
    match k {
        Kind::Migration => arb_migration().prop_map(Extension::Migration).boxed(),
        Kind::Capabilities => prop_oneof![Just(7u32), any::<u32>()]
            .prop_map(|flags| Extension::Capabilities(Capabilities { flags }))
            .boxed(),
        Kind::Identity => (0..=NodeId::MAX)
            .prop_map(|v| Extension::Identity(NodeId::new(v).unwrap()))
            .boxed(),
        Kind::Challenge => any::<[u8; 16]>().prop_map(Extension::Challenge).boxed(),
        Kind::Noise => proptest::collection::vec(any::<u8>(), 1..120)
            .prop_map(Extension::Noise)
            .boxed(),
        Kind::SenderIndex => any::<u32>().prop_map(Extension::SenderIndex).boxed(),
        Kind::ReceiverIndex => any::<u32>().prop_map(Extension::ReceiverIndex).boxed(),
        Kind::Cookie => any::<[u8; 16]>().prop_map(Extension::Cookie).boxed(),
        Kind::Locator(role) => arb_locator(role),
    }
}

/// Any extension value a caller can build, including ones no message may carry: an
/// "unknown" extension with a mandatory type code, an empty Noise message.
fn arb_any_ext() -> BoxedStrategy<Extension> {
    let mut options: Vec<BoxedStrategy<Extension>> = ALL_KINDS.iter().map(|k| arb_of(*k)).collect();
    options.push(arb_free_ext().boxed());
    options.push(
        (0u8..128, proptest::collection::vec(any::<u8>(), 0..30))
            .prop_map(|(ext_type, body)| Extension::Unknown { ext_type, body })
            .boxed(),
    );
    options.push(Just(Extension::Noise(Vec::new())).boxed());
    proptest::strategy::Union::new(options).boxed()
}

fn arb_header(t: MessageType) -> impl Strategy<Value = Header> {
    (any::<u8>(), any::<u16>(), 0..=NodeId::MAX, any::<u64>()).prop_map(
        move |(flags, sequence, id, replay_id)| Header {
            msg_type: t,
            flags,
            sequence,
            sender: NodeId::new(id).unwrap(),
            replay_id,
        },
    )
}

/// A valid body for type `t`, generated from `spec`: each kind between its minimum and
/// maximum (a few more than the minimum where there is no maximum), plus opaque data
/// and unknown optional extensions, in any order.
fn arb_body(t: MessageType) -> BoxedStrategy<Vec<Extension>> {
    let parts: Vec<BoxedStrategy<Vec<Extension>>> = spec(t)
        .into_iter()
        .map(|(k, min, max)| {
            let hi = if max == MANY { min + 8 } else { max };
            proptest::collection::vec(arb_of(k), min..=hi).boxed()
        })
        .collect();
    (parts, proptest::collection::vec(arb_free_ext(), 0..3))
        .prop_map(|(parts, free)| parts.into_iter().flatten().chain(free).collect::<Vec<_>>())
        .prop_shuffle()
        .boxed()
}

fn arb_message_of(types: Vec<MessageType>) -> impl Strategy<Value = Message> {
    proptest::sample::select(types)
        .prop_flat_map(|t| (arb_header(t), arb_body(t)))
        .prop_map(|(header, extensions)| Message { header, extensions })
}

/// A valid message of any type.
fn arb_message() -> impl Strategy<Value = Message> {
    arb_message_of(MessageType::ALL.to_vec())
}

/// A valid message of a type that is sealed.
fn arb_sealed_message() -> impl Strategy<Value = Message> {
    arb_message_of(
        MessageType::ALL
            .into_iter()
            .filter(|t| !t.is_handshake())
            .collect(),
    )
}

#[derive(Clone, Debug)]
enum Mutation {
    Insert(Index, Extension),
    Remove(Index),
    Replace(Index, Extension),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), arb_any_ext()).prop_map(|(i, e)| Mutation::Insert(i, e)),
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), arb_any_ext()).prop_map(|(i, e)| Mutation::Replace(i, e)),
    ]
}

fn mutate(m: &mut Message, mutation: Mutation) {
    let n = m.extensions.len();
    match mutation {
        Mutation::Insert(i, e) => m.extensions.insert(i.index(n + 1), e),
        Mutation::Remove(i) if n > 0 => {
            m.extensions.remove(i.index(n));
        }
        Mutation::Replace(i, e) if n > 0 => m.extensions[i.index(n)] = e,
        Mutation::Remove(_) | Mutation::Replace(..) => {}
    }
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) Every valid message decodes, under the key it was sealed with, to itself.
    #[test]
    fn every_valid_message_round_trips(m in arb_message()) {
        prop_assert!(spec_valid(&m));
        let bytes = encode(&m).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), m);
    }

    /// (f) `encoded_len` is the length of the datagram the encoder produces.
    #[test]
    fn encoded_len_is_the_encoded_length(m in arb_message()) {
        prop_assert_eq!(encode(&m).unwrap().len(), m.encoded_len());
    }

    /// The encoder produces what the document describes, byte for byte: the header,
    /// the extensions as `encode_extensions` writes them, and for sealed types the
    /// ChaCha20-Poly1305 seal with the documented nonce and associated data.
    #[test]
    fn the_encoder_follows_the_documented_framing(m in arb_message()) {
        let exts = encode_extensions(&m.extensions).unwrap();
        prop_assert_eq!(encode(&m).unwrap(), frame_by_spec(&m.header, &exts));
        // A decoded extension run re-encodes to the same bytes.
        prop_assert_eq!(decode_extensions(&exts).unwrap(), m.extensions);
    }

    /// (b) No strict prefix of a message decodes: a short one is `truncated`, any other
    /// disagrees with the Total Length field.
    #[test]
    fn every_truncation_is_an_error(m in arb_message()) {
        let bytes = encode(&m).unwrap();
        for cut in 0..bytes.len() {
            let e = decode(&bytes[..cut]).unwrap_err();
            if cut < HEADER_LEN {
                prop_assert_eq!(e, DecodeError::Truncated { len: cut, need: HEADER_LEN });
            } else {
                prop_assert_eq!(e, DecodeError::LengthMismatch { field: bytes.len(), actual: cut });
            }
        }
    }

    /// (c) Any single bit flip anywhere in a sealed message makes decoding fail: the
    /// header, the authentication prefix and the SPI are associated data, the extensions
    /// are ciphertext, and the tag covers both. A handshake message travels in clear
    /// with nothing to detect a flip in its free fields, so there a flip either fails
    /// or gives a different message that is exactly what the flipped bytes say.
    #[test]
    fn any_single_bit_flip_is_an_error(m in arb_message()) {
        let bytes = encode(&m).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                match decode(&flipped) {
                    Err(e) => prop_assert!(is_snake_case(e.reason())),
                    Ok(other) => {
                        prop_assert!(m.header.msg_type.is_handshake(), "a flip of byte {} bit {} of a sealed message decoded", i, bit);
                        prop_assert_ne!(&other, &m);
                        prop_assert_eq!(encode(&other).unwrap(), flipped);
                    }
                }
            }
        }
    }

    /// (d) A sealed message does not open under another key, nor once its SPI names
    /// another session: both are authentication failures.
    #[test]
    fn another_key_or_spi_fails_authentication(
        m in arb_sealed_message(),
        other_key in any::<[u8; 32]>(),
        other_spi in any::<u32>(),
    ) {
        let bytes = encode(&m).unwrap();
        prop_assume!(other_key != KEY_BYTES && other_spi != SPI);
        let e = decode_with(&bytes, &SessionKey::new(other_key)).unwrap_err();
        prop_assert!(e.is_authentication_failure(), "{}", e);
        prop_assert_eq!(e.reason(), "bad_mac");
        let mut moved = bytes.clone();
        let at = bytes.len() - TAG_LEN - 4;
        moved[at..at + 4].copy_from_slice(&other_spi.to_be_bytes());
        prop_assert_eq!(Frame::parse(&moved).unwrap().spi(), Some(other_spi));
        let e = decode(&moved).unwrap_err();
        prop_assert!(e.is_authentication_failure(), "{}", e);
        // The same message sealed by the sender for the other SPI opens.
        prop_assert_eq!(decode(&m.seal(other_spi, &key()).unwrap()).unwrap(), m);
    }

    /// (e) Arbitrary bytes never panic, and every refusal names a snake_case reason.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = decode(&data) {
            prop_assert!(is_snake_case(e.reason()), "{:?}", e.reason());
        }
        if let Err(e) = decode_extensions(&data) {
            prop_assert!(is_snake_case(e.reason()), "{:?}", e.reason());
        }
        roam_wire::fuzzing::decode(&data);
    }

    /// (e) Arbitrary bytes behind a well-formed header, in clear or sealed by the
    /// document's rules (so that they reach the extension decoder), never panic; what
    /// decodes re-encodes to the same bytes (the encoding is canonical).
    #[test]
    fn arbitrary_extension_bytes_behind_a_valid_header_never_panic(
        h in proptest::sample::select(MessageType::ALL.to_vec()).prop_flat_map(arb_header),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let bytes = frame_by_spec(&h, &body);
        match decode(&bytes) {
            Ok(m) => prop_assert_eq!(encode(&m).unwrap(), bytes.clone()),
            Err(e) => prop_assert!(is_snake_case(e.reason()), "{:?}", e.reason()),
        }
        roam_wire::fuzzing::decode(&bytes);
    }

    /// (e) Valid extension runs with a few bytes overwritten: deep inside the bodies,
    /// where random bytes rarely reach. What decodes re-encodes to the same bytes.
    #[test]
    fn corrupted_extensions_never_panic_and_decode_canonically(
        m in arb_message(),
        edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut exts = encode_extensions(&m.extensions).unwrap();
        prop_assume!(!exts.is_empty());
        for (i, v) in edits {
            let n = exts.len();
            exts[i.index(n)] = v;
        }
        match decode_extensions(&exts) {
            Ok(d) => prop_assert_eq!(encode_extensions(&d).unwrap(), exts.clone()),
            Err(e) => prop_assert!(is_snake_case(e.reason()), "{:?}", e.reason()),
        }
        let bytes = frame_by_spec(&m.header, &exts);
        match decode(&bytes) {
            Ok(d) => prop_assert_eq!(encode(&d).unwrap(), bytes.clone()),
            Err(e) => prop_assert!(is_snake_case(e.reason()), "{:?}", e.reason()),
        }
        roam_wire::fuzzing::decode(&bytes);
    }

    /// (g) `Message::validate` is the document's table, and the encoder refuses, as
    /// `EncodeError::Invalid`, exactly the messages that break it (a required extension
    /// taken away, a forbidden or surplus one added, a malformed one), while the decoder
    /// refuses the same message put on the wire.
    #[test]
    fn a_message_invalid_for_its_type_is_refused(
        mut m in arb_message(),
        mutations in proptest::collection::vec(arb_mutation(), 1..3),
    ) {
        for mu in mutations {
            mutate(&mut m, mu);
        }
        let valid = spec_valid(&m);
        prop_assert_eq!(m.validate().is_ok(), valid, "{:?}", m.validate());
        match encode(&m) {
            Ok(bytes) => {
                prop_assert!(valid);
                prop_assert_eq!(decode(&bytes).unwrap(), m);
            }
            Err(EncodeError::Invalid(e)) => {
                prop_assert!(!valid);
                prop_assert!(is_snake_case(e.reason()));
                // Written on the wire anyway, the decoder refuses it too: when the wire
                // form is this message. (An unknown extension given a known type code
                // whose body happens to parse as that extension is another message on
                // the wire, possibly a valid one.)
                if let Ok(exts) = encode_extensions(&m.extensions)
                    && decode_extensions(&exts).map_or(true, |d| d == m.extensions)
                {
                    prop_assert!(decode(&frame_by_spec(&m.header, &exts)).is_err());
                }
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// (h) An extension of an undefined mandatory type (0, 12-127) anywhere in a message
    /// makes it refused as `unknown_extension`.
    #[test]
    fn unknown_mandatory_extensions_are_refused(
        m in arb_message(),
        t in prop_oneof![Just(0u8), 12u8..=127],
        body in proptest::collection::vec(any::<u8>(), 0..30),
        at in any::<Index>(),
    ) {
        let mut runs: Vec<Vec<u8>> = m.extensions.iter().map(|e| encode_extensions(std::slice::from_ref(e)).unwrap()).collect();
        runs.insert(at.index(runs.len() + 1), tlv(t, &body));
        let exts = runs.concat();
        prop_assert_eq!(decode_extensions(&exts).unwrap_err(), DecodeError::UnknownExtension(t));
        prop_assert_eq!(decode(&frame_by_spec(&m.header, &exts)).unwrap_err(), DecodeError::UnknownExtension(t));
    }

    /// (h) An extension of an optional type (128-255) is kept, in place, and re-encodes
    /// to the same bytes.
    #[test]
    fn unknown_optional_extensions_round_trip(
        m in arb_message(),
        t in 128u8..=255,
        body in proptest::collection::vec(any::<u8>(), 0..30),
        at in any::<Index>(),
    ) {
        let mut runs: Vec<Vec<u8>> = m.extensions.iter().map(|e| encode_extensions(std::slice::from_ref(e)).unwrap()).collect();
        let i = at.index(runs.len() + 1);
        runs.insert(i, tlv(t, &body));
        let bytes = frame_by_spec(&m.header, &runs.concat());
        let mut expected = m.clone();
        expected.extensions.insert(i, Extension::Unknown { ext_type: t, body });
        prop_assert_eq!(decode(&bytes).unwrap(), expected.clone());
        prop_assert_eq!(encode(&expected).unwrap(), bytes);
    }

    /// Migration endpoints are of one family, and IPv6 flow labels and scope ids are not
    /// carried: the constructors refuse the first and clear the second.
    #[test]
    fn migration_endpoints_are_of_one_family_without_flow_label_or_scope(
        p in arb_protocols(),
        a in any::<bool>().prop_flat_map(arb_sock),
        b in any::<bool>().prop_flat_map(arb_sock),
        c in any::<bool>().prop_flat_map(arb_sock),
    ) {
        let same = a.is_ipv4() == b.is_ipv4() && b.is_ipv4() == c.is_ipv4();
        let mig = Migration::new(p, a, b, c);
        prop_assert_eq!(mig.is_some(), same);
        if let Some(mig) = mig {
            for e in [mig.original(), mig.new_endpoint(), mig.peer()] {
                if let SocketAddr::V6(v6) = e {
                    prop_assert_eq!((v6.flowinfo(), v6.scope_id()), (0, 0));
                }
            }
            prop_assert_eq!((mig.original().ip(), mig.new_endpoint().ip(), mig.peer().ip()), (a.ip(), b.ip(), c.ip()));
            prop_assert_eq!((mig.original().port(), mig.new_endpoint().port(), mig.peer().port()), (a.port(), b.port(), c.port()));
        }
        let l = Locator::new(LocatorRole::Own, a);
        if let SocketAddr::V6(v6) = l.addr() {
            prop_assert_eq!((v6.flowinfo(), v6.scope_id()), (0, 0));
        }
    }

    /// `Migration::is_wildcard` is the document's rule.
    #[test]
    fn migration_wildcards_follow_the_documented_rule(m in arb_migration()) {
        prop_assert_eq!(m.is_wildcard(), spec_wildcard(&m));
    }

    /// Locators of any role round trip through an extension run.
    #[test]
    fn locators_of_every_role_round_trip(role in arb_role(), e in any::<bool>().prop_flat_map(arb_sock)) {
        let l = Extension::Locator(Locator::new(role, e));
        let bytes = encode_extensions(std::slice::from_ref(&l)).unwrap();
        prop_assert_eq!(decode_extensions(&bytes).unwrap(), vec![l]);
    }
}

// ---------------------------------------------------------------------------------------
// Hand-written bytes (golden vectors): a layout change fails here.

fn sample_header(t: MessageType) -> Header {
    Header {
        msg_type: t,
        flags: 0x02,
        sequence: 0x1234,
        sender: NodeId::new(0x0a0b_0c0d_0e0f).unwrap(),
        replay_id: 0x0102_0304_0506_0708,
    }
}

/// A handshake message, in clear, entirely by hand: the common header (seed 001 FIG. 5)
/// and two extensions.
#[test]
fn the_common_header_layout_is_fixed() {
    let m = Message::new(sample_header(MessageType::HandshakeFinish))
        .with(Extension::ReceiverIndex(0xcafe_f00d))
        .with(Extension::Noise(vec![0xaa, 0xbb, 0xcc]));
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x01, 0x42, 0x02, 0x00,                         // version 1, type 0x42, flags/codes, header flags
        0x12, 0x34, 0x00, 0x27,                         // sequence 0x1234, total length 39
        0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x00, 0x00, // identifier cookie, reserved
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // replay protect id
        0x0a, 0x00, 0x00, 0x04, 0xca, 0xfe, 0xf0, 0x0d, // receiver index (type 10)
        0x08, 0x00, 0x00, 0x03, 0xaa, 0xbb, 0xcc,       // noise (type 8)
    ];
    assert_eq!(m.encode_clear().unwrap(), expected);
    assert_eq!(decode(expected).unwrap(), m);
    assert_eq!(m.encoded_len(), 39);
}

/// The framing of a sealed message: header with PROTECTED set, ciphertext, then the
/// authentication extension (type 1, flags 0, length 20, SPI, 16-byte tag).
#[test]
fn the_sealed_framing_layout_is_fixed() {
    let m = Message::new(sample_header(MessageType::PathChallenge)).with(Extension::Challenge([0x5a; 16]));
    let bytes = m.seal(0xdead_beef, &key()).unwrap();
    assert_eq!(bytes.len(), 24 + 20 + 24);
    #[rustfmt::skip]
    assert_eq!(&bytes[..24], &[
        0x01, 0x0f, 0x02, 0x01,                         // version, type 15, flags/codes, PROTECTED
        0x12, 0x34, 0x00, 0x44,                         // sequence, total length 68
        0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x00, 0x00, // identifier cookie, reserved
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // replay protect id (the nonce)
    ]);
    assert_eq!(&bytes[44..52], &[0x01, 0x00, 0x00, 0x14, 0xde, 0xad, 0xbe, 0xef]);
    // The ciphertext is as long as the plaintext and is not the plaintext.
    let plain = tlv(7, &[0x5a; 16]);
    assert_ne!(&bytes[24..44], &plain[..]);
    // A complete sealed message under the key 0x11 * 32 (computed independently with
    // Python's `cryptography` ChaCha20Poly1305).
    assert_eq!(hex(&bytes), GOLDEN_SEALED);
    assert_eq!(decode_with(&bytes, &key()).unwrap(), m);
}

const GOLDEN_SEALED: &str = concat!(
    "010f0201123400440a0b0c0d0e0f00000102030405060708", // header
    "b37348ec47c98bd7262bb3b11bc03fc5aa63bb26",         // ciphertext of the challenge
    "01000014deadbeef",                                 // authentication prefix, SPI
    "7cae81d4dfa957b0d13955fa687b88f4",                 // tag
);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every extension body, by hand (docs/PROTOCOL.md "Extensions").
#[test]
fn extension_bodies_have_the_documented_layout() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let cases: Vec<(Extension, Vec<u8>)> = vec![
        (
            Extension::Migration(
                Migration::new(
                    ProtoFlags::UDP,
                    sa("1.2.3.4:80"),
                    sa("5.6.7.8:81"),
                    sa("9.10.11.12:82"),
                )
                .unwrap()
                .with_status(MigrationStatus::Stale),
            ),
            [
                &[2, 0, 0, 24][..],
                &[2, 4, 2, 0, 0, 80, 0, 81, 0, 82, 0, 0],
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            ]
            .concat(),
        ),
        (
            Extension::Migration(
                Migration::new(
                    ProtoFlags::ALL,
                    sa("[fd00::1]:0"),
                    sa("[fd00::2]:0"),
                    sa("[::]:0"),
                )
                .unwrap(),
            ),
            [
                &[2, 0, 0, 60][..],
                &[0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                &[0; 16],
            ]
            .concat(),
        ),
        (
            Extension::Opaque(Opaque::outage(0x0102_0304)),
            vec![3, 0, 0, 6, 1, 0, 1, 2, 3, 4],
        ),
        (
            Extension::Opaque(Opaque {
                sub_type: 9,
                flags: 0x80,
                data: vec![],
            }),
            vec![3, 0, 0, 2, 9, 0x80],
        ),
        (
            Extension::Locator(Locator::new(LocatorRole::Watch, sa("10.0.0.1:4791"))),
            vec![4, 0, 0, 8, 5, 4, 0x12, 0xb7, 10, 0, 0, 1],
        ),
        (
            Extension::Locator(Locator::new(LocatorRole::Own, sa("[2001:db8::7]:1"))),
            [
                &[4, 0, 0, 20, 1, 6, 0, 1][..],
                &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            ]
            .concat(),
        ),
        (
            Extension::Capabilities(Capabilities {
                flags: Capabilities::MOBILE | Capabilities::RENDEZVOUS,
            }),
            vec![5, 0, 0, 4, 0, 0, 0, 5],
        ),
        (
            Extension::Identity(NodeId::new(0x0102_0304_0506).unwrap()),
            vec![6, 0, 0, 8, 1, 2, 3, 4, 5, 6, 0, 0],
        ),
        (
            Extension::Challenge([7; 16]),
            [&[7, 0, 0, 16][..], &[7; 16]].concat(),
        ),
        (Extension::Noise(vec![1, 2]), vec![8, 0, 0, 2, 1, 2]),
        (Extension::SenderIndex(0x0102_0304), vec![9, 0, 0, 4, 1, 2, 3, 4]),
        (Extension::ReceiverIndex(5), vec![10, 0, 0, 4, 0, 0, 0, 5]),
        (
            Extension::Cookie([0xc0; 16]),
            [&[11, 0, 0, 16][..], &[0xc0; 16]].concat(),
        ),
        (
            Extension::Unknown {
                ext_type: 200,
                body: vec![1],
            },
            vec![200, 0, 0, 1, 1],
        ),
    ];
    for (e, bytes) in cases {
        assert_eq!(
            encode_extensions(std::slice::from_ref(&e)).unwrap(),
            bytes,
            "{e:?}"
        );
        assert_eq!(decode_extensions(&bytes).unwrap(), vec![e]);
    }
}

/// Each of the 256 type codes, in a header-only datagram: defined, reserved for the
/// handshake, or unknown.
#[test]
fn every_type_code_decodes_as_specified() {
    for code in 0..=255u8 {
        let mut bytes = header_bytes(&sample_header(MessageType::Subscribe), 0, HEADER_LEN);
        bytes[1] = code;
        let e = decode(&bytes).unwrap_err();
        match code {
            1..=16 => {
                let t = MessageType::from_u8(code).unwrap();
                assert_eq!(t as u8, code);
                assert!(!t.is_handshake());
                assert_eq!(e, DecodeError::Unsealed(t.name()));
            }
            0x40..=0x43 => {
                let t = MessageType::from_u8(code).unwrap();
                assert_eq!(t as u8, code);
                assert!(t.is_handshake());
                assert_eq!(e.reason(), "missing_extension", "{t}");
            }
            0x44..=0x4f => assert_eq!(e, DecodeError::ReservedType(code)),
            _ => assert_eq!(e, DecodeError::UnknownType(code)),
        }
    }
    assert_eq!(MessageType::ALL.len(), 20);
}

/// Every extension type code alone in a run: defined (possibly malformed with this
/// body), authentication (never inside the run), undefined mandatory, or optional.
#[test]
fn every_extension_type_code_decodes_as_specified() {
    for t in 0..=255u8 {
        let r = decode_extensions(&tlv(t, b"abc"));
        match t {
            1 => assert_eq!(r.unwrap_err(), DecodeError::AuthenticationNotLast),
            3 | 8 => assert!(r.is_ok()),
            2..=11 => assert_eq!(r.unwrap_err().reason(), "malformed_extension", "type {t}"),
            0 | 12..=127 => assert_eq!(r.unwrap_err(), DecodeError::UnknownExtension(t)),
            _ => assert_eq!(
                r.unwrap(),
                vec![Extension::Unknown {
                    ext_type: t,
                    body: b"abc".to_vec()
                }]
            ),
        }
    }
}

#[test]
fn reasons_are_distinct_snake_case() {
    let all = [
        DecodeError::Truncated { len: 0, need: 24 },
        DecodeError::Version(2),
        DecodeError::UnknownType(99),
        DecodeError::ReservedType(0x44),
        DecodeError::LengthMismatch { field: 1, actual: 2 },
        DecodeError::ReservedBits,
        DecodeError::ExtensionOverrun { offset: 0 },
        DecodeError::UnknownExtension(12),
        DecodeError::MalformedExtension { ext: "x", why: "y" },
        DecodeError::MissingAuthentication,
        DecodeError::Unsealed("x"),
        DecodeError::SealedHandshake("x"),
        DecodeError::AuthenticationNotLast,
        DecodeError::UnknownSpi(1),
        DecodeError::BadMac,
        DecodeError::MissingExtension { msg: "x", what: "y" },
        DecodeError::UnexpectedExtension { msg: "x", what: "y" },
    ];
    let mut reasons: Vec<&str> = all.iter().map(DecodeError::reason).collect();
    assert!(reasons.iter().all(|r| is_snake_case(r)), "{reasons:?}");
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
    let auth: Vec<_> = all.iter().filter(|e| e.is_authentication_failure()).collect();
    assert_eq!(auth, [&DecodeError::UnknownSpi(1), &DecodeError::BadMac]);
}

/// One datagram per refusal reason the codec gives, by hand from a valid one.
#[test]
fn structural_errors_name_their_reason() {
    let sealed = Message::new(Header::new(
        MessageType::TerminationAck,
        NodeId::new(5).unwrap(),
        1,
        1,
    ));
    let good = encode(&sealed).unwrap();
    assert_eq!(good.len(), 48);
    let reason = |b: &[u8]| decode(b).unwrap_err().reason();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let set_len = |v: &mut Vec<u8>| {
        let n = u16::try_from(v.len()).unwrap();
        v[6..8].copy_from_slice(&n.to_be_bytes());
    };
    assert_eq!(reason(&[]), "truncated");
    assert_eq!(reason(&with(&|v| v[0] = 2)), "bad_version");
    assert_eq!(reason(&with(&|v| v[1] = 0x44)), "reserved_type");
    assert_eq!(reason(&with(&|v| v[1] = 99)), "unknown_type");
    assert_eq!(reason(&with(&|v| v[3] |= 0x02)), "reserved_bits");
    assert_eq!(reason(&with(&|v| v[14] = 1)), "reserved_bits");
    assert_eq!(reason(&with(&|v| v[15] = 1)), "reserved_bits");
    assert_eq!(reason(&with(&|v| v.push(0))), "length_mismatch");
    assert_eq!(reason(&with(&|v| v[3] = 0)), "unsealed");
    assert_eq!(reason(&with(&|v| v[1] = 0x40)), "sealed_handshake");
    assert_eq!(reason(&with(&|v| v[24] = 2)), "missing_auth");
    assert_eq!(reason(&with(&|v| v[25] = 1)), "missing_auth");
    assert_eq!(reason(&with(&|v| v[27] = 21)), "missing_auth");
    assert_eq!(reason(&with(&|v| v[40] ^= 1)), "bad_mac");
    assert_eq!(reason(&with(&|v| v[2] ^= 1)), "bad_mac");
    // Too short to hold the authentication extension.
    let mut short = good[..HEADER_LEN].to_vec();
    short[3] = 1;
    set_len(&mut short);
    assert_eq!(reason(&short), "missing_auth");

    // Errors behind a valid seal: the plaintext decides.
    let h = sealed.header;
    let sealed_with = |plain: &[u8]| reason(&seal_by_spec(&h, plain, SPI, &KEY_BYTES));
    assert!(decode(&seal_by_spec(&h, &[], SPI, &KEY_BYTES)).is_ok());
    assert_eq!(sealed_with(&[200, 0, 0]), "extension_overrun");
    assert_eq!(sealed_with(&[200, 0, 0, 1]), "extension_overrun");
    assert_eq!(sealed_with(&[200, 1, 0, 0]), "reserved_bits");
    assert_eq!(sealed_with(&tlv(1, &[0; 20])), "auth_not_last");
    assert_eq!(sealed_with(&tlv(12, &[])), "unknown_extension");
    assert_eq!(sealed_with(&tlv(2, &[0; 24])), "malformed_extension");
    assert_eq!(sealed_with(&tlv(7, &[0; 16])), "unexpected_extension");
    let ch = Header::new(MessageType::PathChallenge, NodeId::new(5).unwrap(), 1, 1);
    assert_eq!(
        reason(&seal_by_spec(&ch, &[], SPI, &KEY_BYTES)),
        "missing_extension"
    );

    // A handshake message sent sealed-style, and one in clear with a bad run.
    let init = Message::new(Header::new(
        MessageType::HandshakeInit,
        NodeId::new(5).unwrap(),
        1,
        0,
    ))
    .with(Extension::SenderIndex(1))
    .with(Extension::Noise(vec![0; 32]));
    let clear = encode(&init).unwrap();
    let mut v = clear.clone();
    v[3] = 1;
    assert_eq!(reason(&v), "sealed_handshake");
    let mut v = clear.clone();
    v.extend_from_slice(&[200, 0, 0, 9]);
    set_len(&mut v);
    assert_eq!(reason(&v), "extension_overrun");
}

/// Each malformed extension body the decoder refuses, with the body the document
/// says is wrong.
#[test]
fn malformed_extension_bodies_are_refused() {
    let mig4 = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = vec![
            1, 4, 0, 0, 0, 80, 0, 81, 0, 82, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
        ];
        assert!(decode_extensions(&tlv(2, &b)).is_ok());
        f(&mut b);
        tlv(2, &b)
    };
    let bad: Vec<Vec<u8>> = vec![
        mig4(&|b| b.truncate(11)),
        mig4(&|b| b[1] = 5),
        mig4(&|b| b[1] = 6),
        mig4(&|b| b.push(0)),
        mig4(&|b| b[2] = 4),
        mig4(&|b| b[3] = 1),
        mig4(&|b| b[10] = 1),
        mig4(&|b| b[11] = 1),
        tlv(3, &[1]),
        tlv(4, &[1, 4, 0, 1, 1, 2, 3]),
        tlv(4, &[0, 4, 0, 1, 1, 2, 3, 4]),
        tlv(4, &[6, 4, 0, 1, 1, 2, 3, 4]),
        tlv(4, &[1, 6, 0, 1, 1, 2, 3, 4]),
        tlv(5, &[0, 0, 0]),
        tlv(5, &[0, 0, 0, 0, 0]),
        tlv(6, &[1, 2, 3, 4, 5, 6, 0]),
        tlv(6, &[1, 2, 3, 4, 5, 6, 0, 1]),
        tlv(7, &[0; 15]),
        tlv(8, &[]),
        tlv(9, &[0; 3]),
        tlv(10, &[0; 5]),
        tlv(11, &[0; 17]),
    ];
    for b in bad {
        let e = decode_extensions(&b).unwrap_err();
        assert_eq!(e.reason(), "malformed_extension", "{b:?}: {e}");
    }
}

#[test]
fn each_type_has_its_framing() {
    let init = Message::new(Header::new(
        MessageType::HandshakeInit,
        NodeId::new(5).unwrap(),
        1,
        0,
    ))
    .with(Extension::SenderIndex(1))
    .with(Extension::Noise(vec![0; 32]));
    assert_eq!(
        init.seal(SPI, &key()).unwrap_err(),
        EncodeError::HandshakeNotSealed(MessageType::HandshakeInit)
    );
    let ack = Message::new(Header::new(
        MessageType::TerminationAck,
        NodeId::new(5).unwrap(),
        1,
        0,
    ));
    assert_eq!(
        ack.encode_clear().unwrap_err(),
        EncodeError::MustBeSealed(MessageType::TerminationAck)
    );
    for t in MessageType::ALL {
        assert_eq!(t.is_handshake(), (0x40..=0x43).contains(&(t as u8)), "{t}");
    }
}

/// The Total Length field says at most 65535: a message of exactly that length
/// encodes, one byte more is `TooLong`.
#[test]
fn the_largest_message_is_65535_bytes() {
    let base = Message::new(Header::new(
        MessageType::TerminationAck,
        NodeId::new(5).unwrap(),
        1,
        1,
    ));
    let room = 65535 - base.encoded_len() - 4 - 2;
    let with_data = |n: usize| {
        base.clone().with(Extension::Opaque(Opaque {
            sub_type: 0,
            flags: 0,
            data: vec![0; n],
        }))
    };
    let m = with_data(room);
    let bytes = m.seal(SPI, &key()).unwrap();
    assert_eq!(bytes.len(), 65535);
    assert_eq!(decode(&bytes).unwrap(), m);
    assert_eq!(
        with_data(room + 1).seal(SPI, &key()).unwrap_err(),
        EncodeError::TooLong(65536)
    );
    // On its own, an extension body longer than 65535 bytes cannot be written.
    let huge = Extension::Unknown {
        ext_type: 200,
        body: vec![0; 65536],
    };
    assert_eq!(
        encode_extensions(&[huge]).unwrap_err(),
        EncodeError::ExtensionTooLong(65536)
    );
}

/// Regression: the encoder used to accept an `Extension::Unknown` with a mandatory type
/// code and an empty Noise message, which the receiver then refuses (or, for a defined
/// code, decodes as another extension).
#[test]
fn the_encoder_refuses_extensions_the_decoder_refuses() {
    let ack = Message::new(Header::new(
        MessageType::TerminationAck,
        NodeId::new(5).unwrap(),
        1,
        1,
    ));
    for ext_type in [0u8, 2, 12, 127] {
        let m = ack.clone().with(Extension::Unknown {
            ext_type,
            body: vec![],
        });
        let e = m.seal(SPI, &key()).unwrap_err();
        assert!(
            matches!(e, EncodeError::Invalid(DecodeError::MalformedExtension { .. })),
            "{e}"
        );
    }
    let init = Message::new(Header::new(
        MessageType::HandshakeInit,
        NodeId::new(5).unwrap(),
        1,
        0,
    ))
    .with(Extension::SenderIndex(1))
    .with(Extension::Noise(vec![]));
    let e = init.encode_clear().unwrap_err();
    assert!(
        matches!(e, EncodeError::Invalid(DecodeError::MalformedExtension { .. })),
        "{e}"
    );
}

/// Regression: `Migration::is_wildcard` used to call a migration with an unspecified
/// peer address, or with both protocol flags, one flow.
#[test]
fn a_migration_names_one_flow_only_when_fully_specified() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let m = |p, o: &str, peer: &str| Migration::new(p, sa(o), sa("10.0.2.10:1000"), sa(peer)).unwrap();
    assert!(!m(ProtoFlags::TCP, "10.0.1.10:1000", "10.0.3.11:80").is_wildcard());
    assert!(!m(ProtoFlags::UDP, "10.0.1.10:1000", "10.0.3.11:80").is_wildcard());
    assert!(m(ProtoFlags::ALL, "10.0.1.10:1000", "10.0.3.11:80").is_wildcard());
    assert!(m(ProtoFlags(3), "10.0.1.10:1000", "10.0.3.11:80").is_wildcard());
    assert!(m(ProtoFlags::TCP, "10.0.1.10:0", "10.0.3.11:80").is_wildcard());
    assert!(m(ProtoFlags::TCP, "10.0.1.10:1000", "10.0.3.11:0").is_wildcard());
    assert!(m(ProtoFlags::TCP, "10.0.1.10:1000", "0.0.0.0:80").is_wildcard());
}
