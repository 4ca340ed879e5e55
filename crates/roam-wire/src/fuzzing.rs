//! The body of the `control_decode` fuzz target, shared with the corpus replay test.

use crate::{AuthKey, Frame, Message};

/// The key the fuzz corpus is authenticated with (SPI 7, bytes 0x42).
pub fn corpus_key() -> AuthKey {
    AuthKey::new(7, [0x42; 32])
}

/// Decodes `data` both ways and checks invariants beyond "does not panic":
/// - a message that decodes with its MAC verified re-encodes to exactly `data`;
/// - a message whose extensions decode (MAC unchecked) re-encodes to a datagram of the
///   same length whose bytes before the SPI and MAC equal `data`'s;
/// - decoding never succeeds under a different key.
pub fn decode(data: &[u8]) {
    let key = corpus_key();
    match Message::decode(data, |_, _| Some(&key)) {
        Ok(msg) => {
            let again = msg.encode(&key).expect("a decoded message re-encodes");
            assert_eq!(again, data, "decode then encode is the identity");
            let other = AuthKey::new(7, [0x43; 32]);
            assert!(Message::decode(data, |_, _| Some(&other)).is_err());
        }
        Err(e) => {
            let _ = e.reason();
        }
    }
    if let Ok(frame) = Frame::parse(data)
        && let Ok(msg) = frame.decode_unverified()
    {
        let again = msg.encode(&key).expect("a decoded message re-encodes");
        assert_eq!(again.len(), data.len());
        let auth_body = 4 + crate::MAC_LEN;
        assert_eq!(again[..data.len() - auth_body], data[..data.len() - auth_body]);
    }
}
