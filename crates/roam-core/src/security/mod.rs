//! roam's security layer (docs/SECURITY.md): host identities, trust, the Noise XX
//! handshake, sessions that seal every later control message, cookies and rate limits.
//! No hand-made cryptography: X25519, ChaCha20-Poly1305 and BLAKE2s come from `snow`
//! and RustCrypto; HMAC-SHA-256 (cookies) from RustCrypto.

pub mod handshake;
pub mod identity;
pub mod limits;
pub mod session;
pub mod trust;

pub use handshake::{HandshakeError, Initiator, NOISE_PATTERN, Responder};
pub use identity::{KeyError, PublicKey, StaticKey};
pub use limits::{CookieJar, RateLimiter};
pub use session::Session;
pub use trust::{Trust, TrustDecision};
