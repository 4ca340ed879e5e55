//! Replays the committed fuzz corpus (`fuzz/corpus/rewrite/`) through the fuzz target's
//! body, so that stable CI checks every input the fuzzer ever kept, and then a few
//! thousand seeded mutations of it (a poor man's fuzzer: bit flips, byte writes,
//! truncation, another table selector), deterministic so that a failure reproduces.

#[path = "../../roam-wire/tests/support/corpus.rs"]
mod corpus;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

#[test]
fn every_rewrite_corpus_input_keeps_the_fuzz_invariants() {
    for (name, data) in corpus::at_least("rewrite", 20) {
        let r = std::panic::catch_unwind(|| roam_core::fuzzing::rewrite(&data));
        assert!(r.is_ok(), "corpus file {name} breaks an invariant");
    }
}

#[test]
fn seeded_mutations_of_the_corpus_keep_the_fuzz_invariants() {
    let files = corpus::at_least("rewrite", 20);
    let mut rng = ChaCha8Rng::seed_from_u64(0x726f_616d);
    // `ROAM_FUZZ_MUTATIONS=10000000 cargo test ...` for a longer run.
    let n: u64 = std::env::var("ROAM_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for i in 0..n {
        let (name, base) = &files[rng.next_u32() as usize % files.len()];
        let mut data = base.clone();
        for _ in 0..1 + rng.next_u32() % 4 {
            if data.is_empty() {
                break;
            }
            let at = rng.next_u32() as usize % data.len();
            match rng.next_u32() % 4 {
                0 => data[at] ^= 1 << (rng.next_u32() % 8),
                1 => data[at] = rng.next_u32() as u8,
                2 => data.truncate(at.max(1)),
                _ => data[0] = rng.next_u32() as u8,
            }
        }
        let r = std::panic::catch_unwind(|| roam_core::fuzzing::rewrite(&data));
        assert!(
            r.is_ok(),
            "mutation {i} of {name} breaks an invariant: {data:02x?}"
        );
    }
}
