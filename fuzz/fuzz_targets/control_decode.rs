//! The control-message decoder on arbitrary bytes; the body (with its invariants) is
//! `roam_wire::fuzzing::decode`, which the corpus replay test also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roam_wire::fuzzing::decode(data));
