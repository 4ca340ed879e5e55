//! docs/PROTOCOL.md's worked example must be what the codec does. The document holds
//! three annotated hex blocks between marker lines:
//!
//! - `<!-- example:plaintext:begin -->` / `<!-- example:plaintext:end -->`: the
//!   extensions before encryption;
//! - `<!-- example:aead:begin -->` / `<!-- example:aead:end -->`: the nonce, then the
//!   associated data;
//! - `<!-- example:datagram:begin -->` / `<!-- example:datagram:end -->`: the sealed
//!   datagram.
//!
//! Each line of a block is `OFFSET: hex bytes | comment`. The message is built here and
//! compared with all three, so the document cannot drift from the code.

use std::path::Path;

use roam_wire::{
    Extension, Frame, Header, Message, MessageType, Migration, NodeId, ProtoFlags, SessionKey,
    encode_extensions,
};

const SPI: u32 = 0x8f3a_10c4;

fn session_key() -> SessionKey {
    SessionKey::new(std::array::from_fn(|i| i as u8 + 1))
}

/// The example: a Connection Update from node 00005a5a0001, sequence 0x0c22, moving
/// one TCP flow from 10.0.1.10:40000 to 10.0.2.10:40000 (peer end 10.0.3.11:5001),
/// Replay Protect ID 5, sealed for SPI 0x8f3a10c4 under the key 01 02 .. 20.
fn example() -> Message {
    let m = Migration::new(
        ProtoFlags::TCP,
        "10.0.1.10:40000".parse().unwrap(),
        "10.0.2.10:40000".parse().unwrap(),
        "10.0.3.11:5001".parse().unwrap(),
    )
    .unwrap();
    let header = Header::new(
        MessageType::ConnectionUpdate,
        NodeId::new(0x5a5a_0001).unwrap(),
        0x0c22,
        5,
    );
    Message::new(header).with(Extension::Migration(m))
}

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md")).unwrap()
}

/// The bytes of the block between `<!-- example:NAME:begin -->` and `...:end -->`, one
/// `Vec` per line.
fn block(doc: &str, name: &str) -> Vec<Vec<u8>> {
    let begin_marker = format!("<!-- example:{name}:begin -->");
    let end_marker = format!("<!-- example:{name}:end -->");
    let begin = doc
        .find(&begin_marker)
        .unwrap_or_else(|| panic!("no {begin_marker}"));
    let end = doc.find(&end_marker).unwrap_or_else(|| panic!("no {end_marker}"));
    assert!(begin < end, "{name}: markers out of order");
    let mut lines = Vec::new();
    for line in doc[begin..end].lines() {
        let Some((data, _)) = line.split_once('|') else {
            continue;
        };
        let mut words = data.split_whitespace();
        let Some(offset) = words.next() else { continue };
        if !offset.ends_with(':') {
            continue;
        }
        lines.push(
            words
                .map(|w| u8::from_str_radix(w, 16).unwrap_or_else(|_| panic!("not hex: {w:?} in {line:?}")))
                .collect(),
        );
    }
    assert!(!lines.is_empty(), "{name}: empty block");
    lines
}

fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(4)
        .enumerate()
        .map(|(i, c)| {
            let hex: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}: {} |", i * 4, hex.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_block(name: &str, doc_bytes: &[u8], actual: &[u8]) {
    assert!(
        doc_bytes == actual,
        "docs/PROTOCOL.md's example:{name} block differs from the codec, which gives:\n{}",
        dump(actual)
    );
}

#[test]
fn the_worked_example_in_protocol_md_is_what_the_codec_produces() {
    let doc = doc();
    let m = example();
    let datagram = m.seal(SPI, &session_key()).unwrap();

    let plaintext = encode_extensions(&m.extensions).unwrap();
    assert_block("plaintext", &block(&doc, "plaintext").concat(), &plaintext);

    let aead = block(&doc, "aead");
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&m.header.replay_id.to_le_bytes());
    assert_block("aead (nonce)", &aead[0], &nonce);
    let n = datagram.len();
    let ad = [&datagram[..24], &datagram[n - 24..n - 16]].concat();
    assert_block("aead (associated data)", &aead[1..].concat(), &ad);

    assert_block("datagram", &block(&doc, "datagram").concat(), &datagram);
    assert_eq!(datagram.len(), m.encoded_len());
    assert_eq!(datagram.len(), 24 + plaintext.len() + 24);
}

#[test]
fn the_worked_example_decodes_to_the_message() {
    let datagram: Vec<u8> = block(&doc(), "datagram").concat();
    let frame = Frame::parse(&datagram).unwrap();
    assert_eq!(frame.spi(), Some(SPI));
    assert_eq!(frame.open(&session_key()).unwrap(), example());
}
