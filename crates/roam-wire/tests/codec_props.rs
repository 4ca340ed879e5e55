//! Properties of the control-message codec: every valid message of every type round
//! trips; truncation, bit flips, a wrong key and arbitrary bytes give typed errors and
//! never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use roam_wire::{
    AuthKey, Capabilities, DecodeError, EncodeError, Extension, Frame, Header, Locator, LocatorRole, Message,
    MessageType, Migration, MigrationStatus, NodeId, Opaque, ProtoFlags,
};

static KEY: std::sync::LazyLock<AuthKey> = std::sync::LazyLock::new(|| AuthKey::new(0x0102_0304, [0x11; 32]));

fn key() -> &'static AuthKey {
    &KEY
}

fn arb_ip(v4: bool) -> BoxedStrategy<IpAddr> {
    if v4 {
        any::<[u8; 4]>()
            .prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
            .boxed()
    } else {
        any::<[u8; 16]>()
            .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
            .boxed()
    }
}

fn arb_sock(v4: bool) -> impl Strategy<Value = SocketAddr> {
    (arb_ip(v4), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn arb_status() -> impl Strategy<Value = MigrationStatus> {
    prop_oneof![
        Just(MigrationStatus::Ok),
        Just(MigrationStatus::UnknownFlow),
        Just(MigrationStatus::Stale),
        Just(MigrationStatus::Refused),
    ]
}

fn arb_migration() -> impl Strategy<Value = Migration> {
    any::<bool>()
        .prop_flat_map(|v4| {
            (
                any::<u8>(),
                arb_sock(v4),
                arb_sock(v4),
                arb_sock(v4),
                arb_status(),
            )
        })
        .prop_map(|(p, a, b, c, s)| Migration::new(ProtoFlags(p), a, b, c).unwrap().with_status(s))
}

fn arb_locator(role: LocatorRole) -> impl Strategy<Value = Extension> {
    any::<bool>()
        .prop_flat_map(arb_sock)
        .prop_map(move |a| Extension::Locator(Locator::new(role, a)))
}

/// Extensions any message may carry: opaque data and unknown optional types.
fn arb_free_ext() -> impl Strategy<Value = Extension> {
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
        (128u8..=255, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(ext_type, body)| Extension::Unknown { ext_type, body }),
    ]
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

/// The extensions a message of type `t` requires, plus some it allows.
fn arb_body(t: MessageType) -> BoxedStrategy<Vec<Extension>> {
    use MessageType::*;
    let migrations =
        |min: usize| proptest::collection::vec(arb_migration().prop_map(Extension::Migration), min..12);
    let caps =
        proptest::option::of(any::<u32>().prop_map(|flags| Extension::Capabilities(Capabilities { flags })));
    let base: BoxedStrategy<Vec<Extension>> = match t {
        RegistrationRequest | RegistrationReply => (arb_locator(LocatorRole::Own), caps)
            .prop_map(|(l, c)| std::iter::once(l).chain(c).collect())
            .boxed(),
        MigrationRequest | ConnectionUpdate => migrations(1).boxed(),
        MigrationReply | ConnectionUpdateAck | ConnectionUpdateRequest | Termination | TerminationAck => {
            migrations(0).boxed()
        }
        Subscribe => (
            arb_locator(LocatorRole::Watch),
            arb_locator(LocatorRole::Notify),
            proptest::option::of(arb_locator(LocatorRole::Own)),
        )
            .prop_map(|(w, n, o)| [w, n].into_iter().chain(o).collect())
            .boxed(),
        Publish | AddressChange | MigrationCompleted => {
            (arb_locator(LocatorRole::Old), arb_locator(LocatorRole::New))
                .prop_map(|(o, n)| vec![o, n])
                .boxed()
        }
        Notify => (
            arb_locator(LocatorRole::Old),
            arb_locator(LocatorRole::New),
            proptest::option::of(
                (0..=NodeId::MAX).prop_map(|v| Extension::Identity(NodeId::new(v).unwrap())),
            ),
        )
            .prop_map(|(o, n, i)| [o, n].into_iter().chain(i).collect())
            .boxed(),
    };
    (base, proptest::collection::vec(arb_free_ext(), 0..3))
        .prop_map(|(mut b, free)| {
            b.extend(free);
            b
        })
        .boxed()
}

fn arb_message() -> impl Strategy<Value = Message> {
    proptest::sample::select(MessageType::ALL.to_vec())
        .prop_flat_map(|t| (arb_header(t), arb_body(t)))
        .prop_map(|(header, extensions)| Message { header, extensions })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_valid_message_round_trips(m in arb_message()) {
        let bytes = m.encode(key()).unwrap();
        prop_assert_eq!(bytes.len(), m.encoded_len());
        let back = Message::decode(&bytes, |_, _| Some(key())).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn every_truncation_is_an_error(m in arb_message()) {
        let bytes = m.encode(key()).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes[..cut], |_, _| Some(key())).is_err(), "prefix {}", cut);
        }
    }

    #[test]
    fn any_single_bit_flip_is_an_error(m in arb_message(), pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
        let mut bytes = m.encode(key()).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(Message::decode(&bytes, |_, _| Some(key())).is_err());
    }

    #[test]
    fn another_key_or_spi_fails_authentication(m in arb_message(), k in any::<[u8; 32]>(), spi in any::<u32>()) {
        let bytes = m.encode(key()).unwrap();
        prop_assume!(k != [0x11; 32]);
        let other_key = AuthKey::new(0x0102_0304, k);
        let e = Message::decode(&bytes, |_, _| Some(&other_key)).unwrap_err();
        prop_assert!(e.is_authentication_failure(), "{e}");
        prop_assume!(spi != 0x0102_0304);
        let other_spi = AuthKey::new(spi, [0x11; 32]);
        let e = Message::decode(&bytes, |_, _| Some(&other_spi)).unwrap_err();
        prop_assert!(e.is_authentication_failure(), "{e}");
        prop_assert_eq!(Message::decode(&bytes, |_, _| None).unwrap_err(), DecodeError::UnknownSpi(0x0102_0304));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = Message::decode(&data, |_, _| Some(key())) {
            let r = e.reason();
            prop_assert!(!r.is_empty() && r.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        if let Ok(f) = Frame::parse(&data) {
            let _ = f.decode_unverified();
        }
        roam_wire::fuzzing::decode(&data);
    }

    #[test]
    fn a_message_invalid_for_its_type_is_not_encoded(m in arb_message()) {
        // Take away what the type requires, or add what it forbids.
        let mut bad = m.clone();
        let t = bad.header.msg_type;
        let required_gone = match t {
            MessageType::RegistrationRequest | MessageType::RegistrationReply | MessageType::Subscribe
            | MessageType::Publish | MessageType::Notify | MessageType::AddressChange | MessageType::MigrationCompleted => {
                bad.extensions.retain(|e| !matches!(e, Extension::Locator(_)));
                true
            }
            MessageType::ConnectionUpdate | MessageType::MigrationRequest => {
                bad.extensions.retain(|e| !matches!(e, Extension::Migration(_)));
                true
            }
            _ => {
                bad.extensions.push(Extension::Locator(Locator::new(LocatorRole::Watch, "10.0.0.1:1".parse().unwrap())));
                false
            }
        };
        let _ = required_gone;
        prop_assert!(matches!(bad.encode(key()), Err(EncodeError::Invalid(_))));
    }
}

/// A message with an extension TLV spliced in before the authentication extension.
fn with_raw_extension(t: u8, body: &[u8]) -> Vec<u8> {
    let m = Message::new(Header::new(
        MessageType::TerminationAck,
        NodeId::new(5).unwrap(),
        1,
        1,
    ));
    let bytes = m.encode(key()).unwrap();
    let (head, auth) = bytes.split_at(roam_wire::HEADER_LEN);
    let mut out = head.to_vec();
    out.push(t);
    out.push(0);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(auth);
    let len = out.len() as u16;
    out[6..8].copy_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn unknown_mandatory_extensions_are_refused_and_unknown_optional_ones_kept() {
    for t in 7..=127u8 {
        let bytes = with_raw_extension(t, b"abc");
        let f = Frame::parse(&bytes).unwrap();
        assert_eq!(
            f.decode_unverified().unwrap_err(),
            DecodeError::UnknownExtension(t)
        );
    }
    for t in 128..=255u8 {
        let bytes = with_raw_extension(t, b"abc");
        let f = Frame::parse(&bytes).unwrap();
        let m = f.decode_unverified().unwrap();
        assert_eq!(
            m.extensions,
            vec![Extension::Unknown {
                ext_type: t,
                body: b"abc".to_vec()
            }]
        );
    }
}

#[test]
fn structural_errors_name_their_reason() {
    let good = Message::new(Header::new(
        MessageType::TerminationAck,
        NodeId::new(5).unwrap(),
        1,
        1,
    ))
    .encode(key())
    .unwrap();
    let decode = |b: &[u8]| Message::decode(b, |_, _| Some(key())).unwrap_err().reason();
    assert_eq!(decode(&[]), "truncated");
    let mut v = good.clone();
    v[0] = 9;
    assert_eq!(decode(&v), "bad_version");
    let mut v = good.clone();
    v[1] = 0x42;
    assert_eq!(decode(&v), "reserved_type");
    let mut v = good.clone();
    v[1] = 99;
    assert_eq!(decode(&v), "unknown_type");
    let mut v = good.clone();
    v[3] = 1;
    assert_eq!(decode(&v), "reserved_bits");
    let mut v = good.clone();
    v.push(0);
    assert_eq!(decode(&v), "length_mismatch");
    // No authentication extension at all.
    let mut v = good[..roam_wire::HEADER_LEN].to_vec();
    v[6..8].copy_from_slice(&(roam_wire::HEADER_LEN as u16).to_be_bytes());
    assert_eq!(decode(&v), "missing_auth");
    // Authentication not last.
    let mut v = with_raw_extension(200, b"");
    let auth_at = roam_wire::HEADER_LEN + 4;
    let auth: Vec<u8> = v.drain(auth_at..).collect();
    v.truncate(roam_wire::HEADER_LEN);
    v.extend_from_slice(&auth);
    v.extend_from_slice(&[200, 0, 0, 0]);
    let len = v.len() as u16;
    v[6..8].copy_from_slice(&len.to_be_bytes());
    assert_eq!(decode(&v), "auth_not_last");
}

#[test]
fn the_common_header_layout_is_fixed() {
    // Seed 001 FIG. 5, as docs/PROTOCOL.md lays it out.
    let h = Header {
        msg_type: MessageType::ConnectionUpdateAck,
        flags: 0x02,
        sequence: 0x1234,
        sender: NodeId::new(0x0a0b_0c0d_0e0f).unwrap(),
        replay_id: 0x0102_0304_0506_0708,
    };
    let bytes = Message::new(h).encode(key()).unwrap();
    assert_eq!(
        &bytes[..24],
        &[
            1, 6, 0x02, 0, // version, type, flags/codes, reserved
            0x12, 0x34, 0, 64, // sequence, total length (24 + 40)
            0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0, 0, // identifier cookie, reserved
            1, 2, 3, 4, 5, 6, 7, 8, // replay protect id
        ]
    );
    // Authentication extension: type 1, flags 0, length 36, SPI, then the MAC.
    assert_eq!(&bytes[24..32], &[1, 0, 0, 36, 1, 2, 3, 4]);
    assert_eq!(bytes.len(), 64);
}
