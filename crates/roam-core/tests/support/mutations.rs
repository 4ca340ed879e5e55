//! Seeded mutations of a fuzz corpus (a poor man's fuzzer: bit flips, byte writes,
//! truncation, re-rolled selector bytes), deterministic so that a failure reproduces.
//! Shared by roam-core's corpus replays (included with `#[path]`).
//! `ROAM_FUZZ_MUTATIONS=10000000 cargo test ...` runs longer.

use std::panic::RefUnwindSafe;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// How a target's inputs may be mutated.
pub struct Mutations {
    /// Seed of the run.
    pub seed: u64,
    /// Mutations when `ROAM_FUZZ_MUTATIONS` does not say.
    pub runs: u64,
    /// At most this many edits of one input (at least one).
    pub max_edits: u32,
    /// Leading bytes never edited in place (a mode byte that keeps the input of one
    /// kind); they change only as `selectors`.
    pub protect: usize,
    /// Bytes re-rolled as an edit of their own (the harness's selectors: which table,
    /// which outer addresses).
    pub selectors: &'static [usize],
    /// Truncation never goes below this length.
    pub min_len: usize,
}

impl Mutations {
    /// Runs `body` on every mutation of `files` (name, bytes); a panic is the failure.
    pub fn check(&self, files: &[(String, Vec<u8>)], body: impl Fn(&[u8]) + RefUnwindSafe) {
        assert!(!files.is_empty(), "no corpus to mutate");
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let runs: u64 = std::env::var("ROAM_FUZZ_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.runs);
        let kinds = 3 + self.selectors.len() as u32;
        for i in 0..runs {
            let (name, base) = &files[rng.next_u32() as usize % files.len()];
            let mut data = base.clone();
            for _ in 0..1 + rng.next_u32() % self.max_edits {
                if data.len() <= self.protect {
                    break;
                }
                let at = self.protect + rng.next_u32() as usize % (data.len() - self.protect);
                match rng.next_u32() % kinds {
                    0 => data[at] ^= 1 << (rng.next_u32() % 8),
                    1 => data[at] = rng.next_u32() as u8,
                    2 => data.truncate(at.max(self.min_len)),
                    k => {
                        let s = self.selectors[(k - 3) as usize];
                        if let Some(b) = data.get_mut(s) {
                            *b = rng.next_u32() as u8;
                        }
                    }
                }
            }
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(
                r.is_ok(),
                "mutation {i} of {name} breaks an invariant: {data:02x?}"
            );
        }
    }
}
