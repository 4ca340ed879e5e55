//! The body of the `control_decode` fuzz target, shared with the corpus replay test.

use crate::{Frame, SessionKey};

/// The key the fuzz corpus's sealed messages are sealed under (bytes 0x42).
pub fn corpus_key() -> SessionKey {
    SessionKey::new([0x42; 32])
}

/// Decodes `data` and checks invariants beyond "does not panic":
/// - a sealed message that opens under the corpus key re-seals to exactly `data`, and
///   does not open under another key;
/// - a handshake message that decodes re-encodes to exactly `data`.
pub fn decode(data: &[u8]) {
    let Ok(frame) = Frame::parse(data) else { return };
    match frame.spi() {
        Some(spi) => {
            if let Ok(msg) = frame.open(&corpus_key()) {
                assert_eq!(
                    msg.seal(spi, &corpus_key()).expect("re-seals"),
                    data,
                    "open then seal is the identity"
                );
                assert!(
                    frame.open(&SessionKey::new([0x43; 32])).is_err(),
                    "another key opens nothing"
                );
            }
        }
        None => {
            if let Ok(msg) = frame.decode_clear() {
                assert_eq!(
                    msg.encode_clear().expect("re-encodes"),
                    data,
                    "decode then encode is the identity"
                );
            }
        }
    }
}
