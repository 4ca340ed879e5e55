//! The common control header (seed 001 FIG. 5), 24 bytes, big-endian:
//!
//! ```text
//!  0       1       2       3       4       5       6       7
//! +-------+-------+-------+-------+---------------+---------------+
//! |Version| Type  | Flags | HFlags|  Sequence #   | Total Length  |
//! +-------+-------+-------+-------+---------------+---------------+
//! |          Identifier cookie (48 bits)          |   Reserved    |
//! +-----------------------------------------------+---------------+
//! |                  Replay Protect ID (64 bits)                  |
//! +---------------------------------------------------------------+
//! ```

use std::fmt;

use crate::error::DecodeError;

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the common header in bytes.
pub const HEADER_LEN: usize = 24;

/// Message type codes. Values 0x40-0x4f are reserved for the key-exchange handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MessageType {
    /// Seed 001 FIG. 3 step 302: register with a peer before moving.
    RegistrationRequest = 1,
    /// Seed 001 FIG. 4 step 403.
    RegistrationReply = 2,
    /// Seed 001 FIG. 2 "migrate req": carries migration extensions.
    MigrationRequest = 3,
    /// Seed 001 FIG. 2 "migrate reply".
    MigrationReply = 4,
    /// Seed 000 ¶0059 Connection Update (CU).
    ConnectionUpdate = 5,
    /// Seed 000 ¶0059 Connection Update Acknowledge (CUA).
    ConnectionUpdateAck = 6,
    /// Seed 000 ¶0059 Connection Update Request (CUR).
    ConnectionUpdateRequest = 7,
    /// Seed 000 ¶0073 subscribe to a peer's attachment-point changes.
    Subscribe = 8,
    /// Seed 000 ¶0073 publish an attachment-point change.
    Publish = 9,
    /// Seed 000 ¶0074 notify a subscriber of a published change.
    Notify = 10,
    /// Seed 003: address change notification message (ACM).
    AddressChange = 11,
    /// Seed 003: "MIGRATION COMPLETED", the acknowledgment of an ACM.
    MigrationCompleted = 12,
    /// Seed 003: termination status, the peer tears down the named flows.
    Termination = 13,
    /// Acknowledges a Termination, so it can be sent reliably.
    TerminationAck = 14,
    /// Return routability: sent to a peer's new address, which must echo it.
    PathChallenge = 15,
    /// The echo of a Path Challenge, from the address it was sent to.
    PathResponse = 16,
    /// Noise XX message 1 (-> e), from the initiator.
    HandshakeInit = 0x40,
    /// Noise XX message 2 (<- e, ee, s, es), from the responder.
    HandshakeResponse = 0x41,
    /// Noise XX message 3 (-> s, se), from the initiator.
    HandshakeFinish = 0x42,
    /// The responder is under load: retry the Handshake Init with this cookie.
    CookieReply = 0x43,
}

impl MessageType {
    pub const ALL: [MessageType; 20] = [
        MessageType::RegistrationRequest,
        MessageType::RegistrationReply,
        MessageType::MigrationRequest,
        MessageType::MigrationReply,
        MessageType::ConnectionUpdate,
        MessageType::ConnectionUpdateAck,
        MessageType::ConnectionUpdateRequest,
        MessageType::Subscribe,
        MessageType::Publish,
        MessageType::Notify,
        MessageType::AddressChange,
        MessageType::MigrationCompleted,
        MessageType::Termination,
        MessageType::TerminationAck,
        MessageType::PathChallenge,
        MessageType::PathResponse,
        MessageType::HandshakeInit,
        MessageType::HandshakeResponse,
        MessageType::HandshakeFinish,
        MessageType::CookieReply,
    ];

    /// Codes kept for future handshake messages.
    pub const RESERVED_HANDSHAKE: std::ops::RangeInclusive<u8> = 0x44..=0x4f;

    pub fn from_u8(v: u8) -> Result<MessageType, DecodeError> {
        MessageType::ALL.iter().copied().find(|t| *t as u8 == v).ok_or(
            if MessageType::RESERVED_HANDSHAKE.contains(&v) {
                DecodeError::ReservedType(v)
            } else {
                DecodeError::UnknownType(v)
            },
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageType::RegistrationRequest => "Registration Request",
            MessageType::RegistrationReply => "Registration Reply",
            MessageType::MigrationRequest => "Migration Request",
            MessageType::MigrationReply => "Migration Reply",
            MessageType::ConnectionUpdate => "Connection Update",
            MessageType::ConnectionUpdateAck => "Connection Update Ack",
            MessageType::ConnectionUpdateRequest => "Connection Update Request",
            MessageType::Subscribe => "Subscribe",
            MessageType::Publish => "Publish",
            MessageType::Notify => "Notify",
            MessageType::AddressChange => "Address Change",
            MessageType::MigrationCompleted => "Migration Completed",
            MessageType::Termination => "Termination",
            MessageType::TerminationAck => "Termination Ack",
            MessageType::PathChallenge => "Path Challenge",
            MessageType::PathResponse => "Path Response",
            MessageType::HandshakeInit => "Handshake Init",
            MessageType::HandshakeResponse => "Handshake Response",
            MessageType::HandshakeFinish => "Handshake Finish",
            MessageType::CookieReply => "Cookie Reply",
        }
    }

    /// Handshake messages travel in clear (the Noise handshake authenticates itself);
    /// every other message is sealed under a session key.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            MessageType::HandshakeInit
                | MessageType::HandshakeResponse
                | MessageType::HandshakeFinish
                | MessageType::CookieReply
        )
    }

    /// Whether this type answers a request (its Flags/Codes byte is a [`ReplyCode`]
    /// and its sequence number echoes the request's).
    pub fn is_reply(self) -> bool {
        matches!(
            self,
            MessageType::RegistrationReply
                | MessageType::MigrationReply
                | MessageType::ConnectionUpdateAck
                | MessageType::MigrationCompleted
                | MessageType::TerminationAck
                | MessageType::PathResponse
                | MessageType::HandshakeResponse
        )
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Status codes carried in the Flags/Codes byte of replies (seed 001: "a 1 indicates
/// the registration request is accepted"; roam uses 0 for accepted so that a zeroed
/// byte is never mistaken for a refusal of a new kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    Accepted = 0,
    /// The request was understood but refused by policy.
    Denied = 1,
    /// The request named flows or a peer the responder does not know.
    Unknown = 2,
}

impl ReplyCode {
    pub fn from_u8(v: u8) -> Option<ReplyCode> {
        match v {
            0 => Some(ReplyCode::Accepted),
            1 => Some(ReplyCode::Denied),
            2 => Some(ReplyCode::Unknown),
            _ => None,
        }
    }
}

/// A node's identifier cookie (seed 001 FIG. 5): 48 bits naming a host independently
/// of its addresses. Seed 001 derives it from a one-way hash of the host's name; roam
/// derives it from the host's identity (configured, later its public key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(u64);

impl NodeId {
    pub const MAX: u64 = (1 << 48) - 1;

    /// `None` if `v` does not fit in 48 bits.
    pub const fn new(v: u64) -> Option<NodeId> {
        if v <= Self::MAX { Some(NodeId(v)) } else { None }
    }

    /// Keeps the low 48 bits (for identifiers derived from a hash).
    pub const fn from_low_bits(v: u64) -> NodeId {
        NodeId(v & Self::MAX)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}

/// Bits of the header-flags byte (offset 3).
pub mod header_flags {
    /// Everything between the header and the authentication extension is ciphertext.
    pub const PROTECTED: u8 = 0x01;
}

/// The common header. `length` and the header-flags byte are not stored: they are
/// computed when encoding and checked when decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: MessageType,
    /// Flags in requests, a [`ReplyCode`] in replies.
    pub flags: u8,
    /// Transaction number: a reply echoes the sequence number of its request.
    pub sequence: u16,
    /// The sender's identifier cookie.
    pub sender: NodeId,
    /// Strictly increasing per sender and session (seed 001: "based on a timestamp or a
    /// random value to protect against replay attacks"): the AEAD nonce of a sealed
    /// message; receivers keep a sliding window.
    pub replay_id: u64,
}

impl Header {
    pub fn new(msg_type: MessageType, sender: NodeId, sequence: u16, replay_id: u64) -> Header {
        Header {
            msg_type,
            flags: 0,
            sequence,
            sender,
            replay_id,
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>, total_len: u16, header_flags: u8) {
        out.push(VERSION);
        out.push(self.msg_type as u8);
        out.push(self.flags);
        out.push(header_flags);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&total_len.to_be_bytes());
        out.extend_from_slice(&self.sender.0.to_be_bytes()[2..8]);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.replay_id.to_be_bytes());
    }

    /// Parses the header and checks the length field against `bytes.len()`; also returns
    /// the header-flags byte.
    pub(crate) fn parse(bytes: &[u8]) -> Result<(Header, u8), DecodeError> {
        let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::Truncated {
                len: bytes.len(),
                need: HEADER_LEN,
            });
        };
        if h[0] != VERSION {
            return Err(DecodeError::Version(h[0]));
        }
        let msg_type = MessageType::from_u8(h[1])?;
        if h[3] & !header_flags::PROTECTED != 0 || h[14] != 0 || h[15] != 0 {
            return Err(DecodeError::ReservedBits);
        }
        let length = u16::from_be_bytes([h[6], h[7]]) as usize;
        if length != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                field: length,
                actual: bytes.len(),
            });
        }
        let mut id = [0u8; 8];
        id[2..8].copy_from_slice(&h[8..14]);
        let mut replay = [0u8; 8];
        replay.copy_from_slice(&h[16..24]);
        Ok((
            Header {
                msg_type,
                flags: h[2],
                sequence: u16::from_be_bytes([h[4], h[5]]),
                sender: NodeId(u64::from_be_bytes(id)),
                replay_id: u64::from_be_bytes(replay),
            },
            h[3],
        ))
    }
}
