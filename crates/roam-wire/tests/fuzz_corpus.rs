//! Replays the committed fuzz corpus (`fuzz/corpus/control_decode/`) through the fuzz
//! target's body, so that stable CI checks every input the fuzzer ever kept.
//!
//! The seeds are valid messages of every type under the corpus key (a fuzzer cannot
//! forge MACs). `ROAM_WRITE_CORPUS=1 cargo test -p roam-wire --test fuzz_corpus`
//! writes them again; otherwise this test only reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use roam_wire::{
    Capabilities, Extension, Header, Locator, LocatorRole, Message, MessageType, Migration, NodeId, Opaque,
    ProtoFlags, fuzzing,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/control_decode")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One valid message of each type.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let id = NodeId::new(0x0000_1234_5678).unwrap();
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
    let own = Extension::Locator(Locator::new(LocatorRole::Own, sa("10.0.1.10:4791")));
    let old = Extension::Locator(Locator::new(LocatorRole::Old, sa("10.0.1.10:0")));
    let new = Extension::Locator(Locator::new(LocatorRole::New, sa("10.0.2.10:0")));
    let mut out = Vec::new();
    for t in MessageType::ALL {
        let h = Header::new(t, id, 7, 1000);
        use MessageType::*;
        let exts: Vec<Extension> = match t {
            RegistrationRequest | RegistrationReply => {
                vec![own.clone(), Extension::Capabilities(Capabilities { flags: 3 })]
            }
            MigrationRequest | ConnectionUpdate => {
                vec![
                    Extension::Migration(mig4),
                    Extension::Migration(mig6),
                    Extension::Opaque(Opaque::outage(20)),
                ]
            }
            MigrationReply | ConnectionUpdateAck | ConnectionUpdateRequest | Termination | TerminationAck => {
                vec![Extension::Migration(mig4)]
            }
            Subscribe => vec![
                Extension::Locator(Locator::new(LocatorRole::Watch, sa("10.0.3.11:4791"))),
                Extension::Locator(Locator::new(LocatorRole::Notify, sa("10.0.1.10:4791"))),
            ],
            Publish | AddressChange | MigrationCompleted => vec![old.clone(), new.clone()],
            Notify => vec![old.clone(), new.clone(), Extension::Identity(id)],
        };
        let m = Message {
            header: h,
            extensions: exts,
        };
        out.push((format!("{t:?}"), m.encode(&fuzzing::corpus_key()).unwrap()));
    }
    out
}

#[test]
fn every_control_decode_corpus_input_keeps_the_fuzz_invariants() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).expect("the control_decode corpus is committed") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        fuzzing::decode(&data);
        n += 1;
    }
    assert!(n >= MessageType::ALL.len(), "only {n} corpus files");
}

#[test]
fn the_seed_messages_in_the_corpus_are_current() {
    if std::env::var_os("ROAM_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir().join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds() {
        let path = dir().join(format!("seed-{name}"));
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            stored, bytes,
            "{name}: the encoding changed; rewrite with ROAM_WRITE_CORPUS=1"
        );
    }
}
