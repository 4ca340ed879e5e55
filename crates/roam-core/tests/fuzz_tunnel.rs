//! Replays the committed `tunnel_unwrap` fuzz corpus (`fuzz/corpus/tunnel_unwrap/`)
//! through the fuzz target's body (tunnel mode's unwrap parser and acceptance rule
//! against an oracle, and the wrap), then seeded mutations of it, and then datagrams
//! built from random valid packets with every table and outer-address choice, so that
//! stable CI checks the invariants (see `roam_core::fuzzing::tunnel_unwrap`).

#[path = "../../roam-wire/tests/support/corpus.rs"]
mod corpus;

use std::collections::BTreeMap;

use etherparse::PacketBuilder;
use proptest::prelude::*;

#[path = "support/mutations.rs"]
mod mutations;

use mutations::Mutations;

#[test]
fn every_tunnel_corpus_input_keeps_the_fuzz_invariants() {
    let mut seen = BTreeMap::new();
    for (name, data) in corpus::at_least("tunnel_unwrap", 20) {
        let r = std::panic::catch_unwind(|| roam_core::fuzzing::tunnel_unwrap(&data));
        let Ok(outcome) = r else {
            panic!("corpus file {name} breaks an invariant");
        };
        let key = match outcome {
            None => "too short",
            Some(Ok(())) => "accepted",
            Some(Err(e)) => e.reason(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    eprintln!("{seen:?}");
    // The corpus reaches acceptance and every refusal.
    for outcome in [
        "accepted",
        "empty",
        "not_ip",
        "family_mismatch",
        "length_mismatch",
        "malformed",
        "not_transport",
        "unknown_flow",
        "wrong_source",
        "wrong_destination",
    ] {
        assert!(
            seen.contains_key(outcome),
            "no corpus input is {outcome}: {seen:?}"
        );
    }
}

#[test]
fn seeded_mutations_of_the_tunnel_corpus_keep_the_fuzz_invariants() {
    Mutations {
        seed: 0x7475_6e6e,
        runs: 20_000,
        max_edits: 4,
        protect: 0,
        // The harness's selectors: the table and the outer addresses.
        selectors: &[0, 1],
        min_len: 2,
    }
    .check(&corpus::at_least("tunnel_unwrap", 20), |data| {
        let _ = roam_core::fuzzing::tunnel_unwrap(data);
    });
}

/// A valid TCP or UDP packet of either family, between addresses that sometimes are
/// the harness's own (192.0.2.0/24, fd00::/64), with a random payload.
fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![1u8, 2, 10, 20, 30, 40, 200]),
        prop::sample::select(vec![1u8, 2, 11, 21, 99]),
        any::<u16>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(v6, udp, s, d, sp, dp, payload)| {
            let b = if v6 {
                let a = |n: u8| {
                    let mut o = [0u8; 16];
                    o[0] = 0xfd;
                    o[15] = n;
                    o
                };
                PacketBuilder::ipv6(a(s), a(d), 64)
            } else {
                PacketBuilder::ipv4([192, 0, 2, s], [192, 0, 2, d], 64)
            };
            let mut p = Vec::new();
            if udp {
                b.udp(sp, dp).write(&mut p, &payload).unwrap();
            } else {
                b.tcp(sp, dp, 1, 100).write(&mut p, &payload).unwrap();
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Every table and outer-address choice over valid packets: the harness's oracle
    /// and the plane agree on acceptance and on the reason of every refusal.
    #[test]
    fn valid_packets_under_every_table_and_outer_choice(
        selector in any::<u8>(),
        choice in any::<u8>(),
        pkt in arb_packet(),
    ) {
        let mut data = vec![selector, choice];
        data.extend_from_slice(&pkt);
        roam_core::fuzzing::tunnel_unwrap(&data);
    }
}
