//! roam's control protocol on the wire: message formats, encoding, decoding and
//! message authentication. No runtime, no I/O, no clock.
//!
//! Framing follows seed 001 (FIG. 5-8): a common header carrying version, type,
//! flags/codes, a 16-bit sequence number, a 48-bit identifier cookie naming the sender
//! and a 64-bit replay-protect ID, followed by typed extensions (authentication,
//! migration, opaque data, and roam's own). The message types are seed 000's (Connection
//! Update, Update-Ack, Update-Request, Subscribe, Publish, Notify), seed 001's
//! (Registration and Migration Request/Reply), seed 003's (Address Change, Migration
//! Completed, Termination), and roam's handshake and return-routability messages.
//! Handshake messages travel in clear; every other message is sealed (AEAD) under a
//! session key. `docs/PROTOCOL.md` specifies every byte.
//!
//! Decoding is total: any byte string gives a [`Message`] or a typed [`DecodeError`].
#![forbid(unsafe_code)]

mod auth;
mod error;
mod ext;
pub mod fuzzing;
mod header;
mod message;

pub use auth::{SessionKey, TAG_LEN};
pub use error::{DecodeError, EncodeError};
pub use ext::{
    Capabilities, Extension, ExtensionType, Locator, LocatorRole, Migration, MigrationStatus, Opaque,
    ProtoFlags,
};
pub use header::{HEADER_LEN, Header, MessageType, NodeId, ReplyCode, VERSION, header_flags};
pub use message::{Frame, Message, decode_extensions, encode_extensions};

/// The largest control datagram roam sends: the IPv6 minimum MTU (1280) less the IPv6
/// and UDP headers, so a control message is never fragmented (RFC 8200 §5).
pub const MAX_DATAGRAM_LEN: usize = 1280 - 40 - 8;

/// The UDP port roam daemons listen on for control messages unless configured otherwise.
pub const DEFAULT_CONTROL_PORT: u16 = 4791;
