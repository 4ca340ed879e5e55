use thiserror::Error;

/// Why a byte string is not a valid control message. Every variant is a reason a
/// receiver counts and drops the datagram; `reason()` names it for counters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message truncated: {len} bytes, need at least {need}")]
    Truncated { len: usize, need: usize },
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {0:#04x} is reserved for the key-exchange handshake")]
    ReservedType(u8),
    #[error("length field says {field} bytes but the datagram has {actual}")]
    LengthMismatch { field: usize, actual: usize },
    #[error("reserved header bits are not zero")]
    ReservedBits,
    #[error("extension at offset {offset} overruns the message")]
    ExtensionOverrun { offset: usize },
    #[error("unknown mandatory extension type {0}")]
    UnknownExtension(u8),
    #[error("malformed {ext} extension: {why}")]
    MalformedExtension { ext: &'static str, why: &'static str },
    #[error("the authentication extension is missing or malformed")]
    MissingAuthentication,
    #[error("{0} must be sealed")]
    Unsealed(&'static str),
    #[error("{0} is a handshake message and travels in clear")]
    SealedHandshake(&'static str),
    #[error("the authentication extension is not the last extension")]
    AuthenticationNotLast,
    #[error("no key for security parameter index {0:#010x}")]
    UnknownSpi(u32),
    #[error("the authentication tag does not verify")]
    BadMac,
    #[error("{msg} requires {what}")]
    MissingExtension { msg: &'static str, what: &'static str },
    #[error("{msg} does not allow {what}")]
    UnexpectedExtension { msg: &'static str, what: &'static str },
}

impl DecodeError {
    /// A stable snake_case name for drop counters.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Version(_) => "bad_version",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::ReservedType(_) => "reserved_type",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::ReservedBits => "reserved_bits",
            DecodeError::ExtensionOverrun { .. } => "extension_overrun",
            DecodeError::UnknownExtension(_) => "unknown_extension",
            DecodeError::MalformedExtension { .. } => "malformed_extension",
            DecodeError::MissingAuthentication => "missing_auth",
            DecodeError::Unsealed(_) => "unsealed",
            DecodeError::SealedHandshake(_) => "sealed_handshake",
            DecodeError::AuthenticationNotLast => "auth_not_last",
            DecodeError::UnknownSpi(_) => "unknown_spi",
            DecodeError::BadMac => "bad_mac",
            DecodeError::MissingExtension { .. } => "missing_extension",
            DecodeError::UnexpectedExtension { .. } => "unexpected_extension",
        }
    }

    /// Whether the datagram failed authentication (as opposed to being malformed).
    pub fn is_authentication_failure(&self) -> bool {
        matches!(self, DecodeError::UnknownSpi(_) | DecodeError::BadMac)
    }
}

/// Why a [`crate::Message`] cannot be encoded. These are caller bugs or limits, never
/// something a peer can cause.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("message would be {0} bytes, more than the 65535 the length field can say")]
    TooLong(usize),
    #[error("extension body of {0} bytes does not fit its 16-bit length")]
    ExtensionTooLong(usize),
    #[error("the message is not valid for its type: {0}")]
    Invalid(DecodeError),
    #[error("identifier {0:#x} does not fit in 48 bits")]
    NodeIdTooLarge(u64),
    #[error("{0} must be sealed under a session key")]
    MustBeSealed(crate::MessageType),
    #[error("{0} is a handshake message: it is sent in clear")]
    HandshakeNotSealed(crate::MessageType),
}
