//! The committed fuzz corpora (`fuzz/corpus/<target>/`), read by the tests that replay
//! them. Shared by roam-wire's and roam-core's tests (included with `#[path]`).
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

/// The corpus directory of fuzz target `target` (both crates sit two levels under the
/// workspace root).
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Every file of `target`'s corpus as (name, bytes), sorted by name.
pub fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the {target} corpus is committed ({}): {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// [`files`], checked to hold at least `at_least` inputs.
pub fn at_least(target: &str, at_least: usize) -> Vec<(String, Vec<u8>)> {
    let files = files(target);
    assert!(
        files.len() >= at_least,
        "only {} corpus files in {}",
        files.len(),
        dir(target).display()
    );
    files
}
