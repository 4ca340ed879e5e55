//! The handshake and the decryption path on arbitrary bytes; the body (with its
//! invariants) is `roam_core::fuzzing::secure`, which the corpus replay test also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roam_core::fuzzing::secure(data));
