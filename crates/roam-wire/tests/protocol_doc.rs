//! docs/PROTOCOL.md's worked example must be what the encoder produces: the hex between
//! the `<!-- example:begin -->` and `<!-- example:end -->` markers is compared with the
//! encoding of the message built here, so the document cannot drift from the code.

use std::path::Path;

use roam_wire::{AuthKey, Extension, Header, Message, MessageType, Migration, NodeId, Opaque, ProtoFlags};

/// The example: a Connection Update from node 00005a5a0001 moving one TCP flow from
/// 10.0.1.10:40000 to 10.0.2.10:40000 (peer end 10.0.3.11:5001), after a 3 ms outage,
/// authenticated under SPI 1 with the key of 32 bytes 0x01..0x20.
pub fn example() -> Vec<u8> {
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
        1000,
    );
    let key: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
    Message::new(header)
        .with(Extension::Migration(m))
        .with(Extension::Opaque(Opaque::outage(3)))
        .encode(&AuthKey::new(1, key))
        .unwrap()
}

#[test]
fn the_worked_example_in_protocol_md_is_what_the_encoder_produces() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md"))
        .unwrap();
    let begin = doc.find("<!-- example:begin -->").expect("begin marker");
    let end = doc.find("<!-- example:end -->").expect("end marker");
    // Each line of the block: an offset, then hex bytes, then `|` and a comment.
    let mut bytes = Vec::new();
    for line in doc[begin..end].lines() {
        let Some((data, _)) = line.split_once('|') else {
            continue;
        };
        let mut words = data.split_whitespace();
        let Some(offset) = words.next() else { continue };
        if !offset.ends_with(':') {
            continue;
        }
        for w in words {
            bytes.push(u8::from_str_radix(w, 16).unwrap_or_else(|_| panic!("not hex: {w:?} in {line:?}")));
        }
    }
    let expected = example();
    if bytes != expected {
        let dump: Vec<String> = expected
            .chunks(4)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
            .collect();
        panic!(
            "docs/PROTOCOL.md's example differs from the encoder; the encoder gives:\n{}",
            dump.join("\n")
        );
    }
}
