//! Replays the committed fuzz corpus (`fuzz/corpus/rewrite/`) through the fuzz target's
//! body, so that stable CI checks every input the fuzzer ever kept.

use std::path::Path;

#[test]
fn every_rewrite_corpus_input_keeps_the_fuzz_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/rewrite");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the rewrite corpus is committed") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        roam_core::fuzzing::rewrite(&data);
        n += 1;
    }
    assert!(n >= 20, "only {n} corpus files in {}", dir.display());
}
