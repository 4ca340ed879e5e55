//! Tunnel mode's unwrap parser and acceptance rule (and the wrap) on arbitrary bytes;
//! the body (with its invariants and oracle) is `roam_core::fuzzing::tunnel_unwrap`,
//! which the corpus replay test also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = roam_core::fuzzing::tunnel_unwrap(data);
});
