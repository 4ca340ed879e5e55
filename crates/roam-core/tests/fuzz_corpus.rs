//! Replays the committed fuzz corpus (`fuzz/corpus/rewrite/`) through the fuzz target's
//! body, so that stable CI checks every input the fuzzer ever kept, and then a few
//! thousand seeded mutations of it (a poor man's fuzzer: bit flips, byte writes,
//! truncation, another table selector), deterministic so that a failure reproduces.

#[path = "../../roam-wire/tests/support/corpus.rs"]
mod corpus;

#[path = "support/mutations.rs"]
mod mutations;

use mutations::Mutations;

#[test]
fn every_rewrite_corpus_input_keeps_the_fuzz_invariants() {
    for (name, data) in corpus::at_least("rewrite", 20) {
        let r = std::panic::catch_unwind(|| roam_core::fuzzing::rewrite(&data));
        assert!(r.is_ok(), "corpus file {name} breaks an invariant");
    }
}

#[test]
fn seeded_mutations_of_the_corpus_keep_the_fuzz_invariants() {
    Mutations {
        seed: 0x726f_616d,
        runs: 20_000,
        max_edits: 4,
        protect: 0,
        // The harness's table selector.
        selectors: &[0],
        min_len: 1,
    }
    .check(&corpus::at_least("rewrite", 20), |data| {
        roam_core::fuzzing::rewrite(data);
    });
}
