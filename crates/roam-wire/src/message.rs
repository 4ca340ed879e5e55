//! A whole control message: header and extensions, in one of two framings.
//!
//! - **Handshake messages** (Handshake Init/Response/Finish, Cookie Reply) travel in
//!   clear: header, then extensions. The Noise handshake they carry authenticates them.
//! - **Every other message is sealed**: header (header flag PROTECTED), then the
//!   extensions encrypted with ChaCha20-Poly1305 under a session key, then the
//!   authentication extension (seed 001 FIG. 6) in clear, last: the SPI (the receiver's
//!   session index) and the AEAD tag. The header, the authentication extension's prefix
//!   and the SPI are the associated data; the Replay Protect ID is the nonce.

use crate::auth::{SessionKey, TAG_LEN};
use crate::error::{DecodeError, EncodeError};
use crate::ext::{EXT_HEADER_LEN, Extension, ExtensionType, Locator, LocatorRole, Migration};
use crate::header::{HEADER_LEN, Header, MessageType, header_flags};

/// Body of the authentication extension: SPI (4 bytes) then the AEAD tag.
const AUTH_BODY_LEN: usize = 4 + TAG_LEN;
/// The authentication extension with its TLV prefix.
pub(crate) const AUTH_EXT_LEN: usize = EXT_HEADER_LEN + AUTH_BODY_LEN;
/// Header, authentication prefix and SPI: the associated data of a sealed message.
const AD_LEN: usize = HEADER_LEN + EXT_HEADER_LEN + 4;

/// A decoded control message (or one about to be encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    /// Every extension but authentication, in wire order.
    pub extensions: Vec<Extension>,
}

impl Message {
    pub fn new(header: Header) -> Message {
        Message {
            header,
            extensions: Vec::new(),
        }
    }

    pub fn with(mut self, ext: Extension) -> Message {
        self.extensions.push(ext);
        self
    }

    pub fn migrations(&self) -> impl Iterator<Item = &Migration> {
        self.extensions.iter().filter_map(|e| match e {
            Extension::Migration(m) => Some(m),
            _ => None,
        })
    }

    pub fn locator(&self, role: LocatorRole) -> Option<&Locator> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Locator(l) if l.role == role => Some(l),
            _ => None,
        })
    }

    /// The sender's reported outage (ms), from an [`crate::Opaque::OUTAGE`] extension.
    pub fn outage_ms(&self) -> Option<u32> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Opaque(o) => o.as_outage(),
            _ => None,
        })
    }

    pub fn capabilities(&self) -> Option<crate::Capabilities> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Capabilities(c) => Some(*c),
            _ => None,
        })
    }

    /// The first extension `f` picks.
    pub fn find<T>(&self, f: impl Fn(&Extension) -> Option<T>) -> Option<T> {
        self.extensions.iter().find_map(f)
    }

    /// The Sender Index extension's value (handshake messages).
    pub fn sender_index(&self) -> Option<u32> {
        self.find(|e| {
            if let Extension::SenderIndex(i) = e {
                Some(*i)
            } else {
                None
            }
        })
    }

    /// The Receiver Index extension's value (handshake messages).
    pub fn receiver_index(&self) -> Option<u32> {
        self.find(|e| {
            if let Extension::ReceiverIndex(i) = e {
                Some(*i)
            } else {
                None
            }
        })
    }

    /// The Noise handshake message a handshake message carries.
    pub fn noise(&self) -> Option<&[u8]> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Noise(n) => Some(n.as_slice()),
            _ => None,
        })
    }

    pub fn cookie(&self) -> Option<[u8; 16]> {
        self.find(|e| {
            if let Extension::Cookie(c) = e {
                Some(*c)
            } else {
                None
            }
        })
    }

    /// A Path Challenge's (or Response's) 16 bytes.
    pub fn challenge(&self) -> Option<[u8; 16]> {
        self.find(|e| {
            if let Extension::Challenge(c) = e {
                Some(*c)
            } else {
                None
            }
        })
    }

    /// Encoded length in bytes, authentication included where the type is sealed.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + extensions_len(&self.extensions)
            + if self.header.msg_type.is_handshake() {
                0
            } else {
                AUTH_EXT_LEN
            }
    }

    /// Checks the extensions this message type requires and allows (docs/PROTOCOL.md,
    /// "Message types").
    pub fn validate(&self) -> Result<(), DecodeError> {
        let t = self.header.msg_type;
        let msg = t.name();
        let mut count = [0usize; 16];
        let mut roles = [0usize; 6];
        for e in &self.extensions {
            match e {
                Extension::Locator(l) => roles[l.role as usize] += 1,
                // An unknown extension must have an optional type: a mandatory code would be
                // refused by the receiver, or decoded as another extension.
                Extension::Unknown { ext_type, .. } if *ext_type < 128 => {
                    return Err(DecodeError::MalformedExtension {
                        ext: "unknown",
                        why: "type is mandatory (below 128)",
                    });
                }
                // The decoder refuses an empty Noise message; so does the encoder.
                Extension::Noise(n) if n.is_empty() => {
                    return Err(DecodeError::MalformedExtension {
                        ext: "noise",
                        why: "empty",
                    });
                }
                Extension::Opaque(_) | Extension::Unknown { .. } => {}
                other => count[usize::from(other.type_code())] += 1,
            }
        }
        use LocatorRole::{New, Old, Own, Watch};
        use MessageType::*;
        // (extension type, minimum, maximum) for each type; absent: (0, 0).
        let rules: &[(ExtensionType, usize, usize)] = match t {
            RegistrationRequest | RegistrationReply => &[(ExtensionType::Capabilities, 0, 1)],
            MigrationRequest | ConnectionUpdate => &[(ExtensionType::Migration, 1, usize::MAX)],
            MigrationReply | ConnectionUpdateAck | ConnectionUpdateRequest | Termination | TerminationAck => {
                &[(ExtensionType::Migration, 0, usize::MAX)]
            }
            MessageType::Notify => &[(ExtensionType::Identity, 0, 1)],
            PathChallenge | PathResponse => &[(ExtensionType::Challenge, 1, 1)],
            HandshakeInit => &[
                (ExtensionType::SenderIndex, 1, 1),
                (ExtensionType::Noise, 1, 1),
                (ExtensionType::Cookie, 0, 1),
            ],
            HandshakeResponse => &[
                (ExtensionType::SenderIndex, 1, 1),
                (ExtensionType::ReceiverIndex, 1, 1),
                (ExtensionType::Noise, 1, 1),
            ],
            HandshakeFinish => &[(ExtensionType::ReceiverIndex, 1, 1), (ExtensionType::Noise, 1, 1)],
            CookieReply => &[
                (ExtensionType::ReceiverIndex, 1, 1),
                (ExtensionType::Cookie, 1, 1),
            ],
            Subscribe | Publish | AddressChange | MigrationCompleted => &[],
        };
        for et in [
            ExtensionType::Migration,
            ExtensionType::Capabilities,
            ExtensionType::Identity,
            ExtensionType::Challenge,
            ExtensionType::Noise,
            ExtensionType::SenderIndex,
            ExtensionType::ReceiverIndex,
            ExtensionType::Cookie,
        ] {
            let (min, max) = rules
                .iter()
                .find(|(r, _, _)| *r == et)
                .map(|(_, a, b)| (*a, *b))
                .unwrap_or((0, 0));
            let n = count[et as usize];
            if n < min {
                return Err(DecodeError::MissingExtension { msg, what: et.name() });
            }
            if n > max {
                return Err(DecodeError::UnexpectedExtension { msg, what: et.name() });
            }
        }
        // Which locator roles each type carries: (role, minimum, maximum).
        let locators: &[(LocatorRole, usize, usize)] = match t {
            RegistrationRequest | RegistrationReply => &[(Own, 1, 1)],
            Subscribe => &[(Watch, 1, 1), (LocatorRole::Notify, 1, 1), (Own, 0, 1)],
            Publish | AddressChange | MigrationCompleted | MessageType::Notify => &[(Old, 1, 1), (New, 1, 1)],
            _ => &[],
        };
        for r in [Own, Old, New, LocatorRole::Notify, Watch] {
            let (min, max) = locators
                .iter()
                .find(|(lr, _, _)| *lr == r)
                .map(|(_, a, b)| (*a, *b))
                .unwrap_or((0, 0));
            let n = roles[r as usize];
            if n < min {
                return Err(DecodeError::MissingExtension {
                    msg,
                    what: locator_name(r),
                });
            }
            if n > max {
                return Err(DecodeError::UnexpectedExtension {
                    msg,
                    what: locator_name(r),
                });
            }
        }
        Ok(())
    }

    fn check_len(&self) -> Result<u16, EncodeError> {
        let total = self.encoded_len();
        u16::try_from(total).map_err(|_| EncodeError::TooLong(total))
    }

    /// Encodes a handshake message (in clear).
    pub fn encode_clear(&self) -> Result<Vec<u8>, EncodeError> {
        if !self.header.msg_type.is_handshake() {
            return Err(EncodeError::MustBeSealed(self.header.msg_type));
        }
        self.validate().map_err(EncodeError::Invalid)?;
        let total = self.check_len()?;
        let mut out = Vec::with_capacity(total.into());
        self.header.write(&mut out, total, 0);
        write_extensions(&self.extensions, &mut out)?;
        Ok(out)
    }

    /// Seals any other message for the peer whose session index is `spi`, under `key`,
    /// with the header's Replay Protect ID as the nonce (it must never repeat under one
    /// key: the session counts it).
    pub fn seal(&self, spi: u32, key: &SessionKey) -> Result<Vec<u8>, EncodeError> {
        if self.header.msg_type.is_handshake() {
            return Err(EncodeError::HandshakeNotSealed(self.header.msg_type));
        }
        self.validate().map_err(EncodeError::Invalid)?;
        let total = self.check_len()?;
        let mut out = Vec::with_capacity(total.into());
        self.header.write(&mut out, total, header_flags::PROTECTED);
        write_extensions(&self.extensions, &mut out)?;
        let body_end = out.len();
        out.push(ExtensionType::Authentication as u8);
        out.push(0);
        out.extend_from_slice(&(AUTH_BODY_LEN as u16).to_be_bytes());
        out.extend_from_slice(&spi.to_be_bytes());
        let ad = associated_data(&out, body_end);
        let tag = key.seal(self.header.replay_id, &ad, &mut out[HEADER_LEN..body_end]);
        out.extend_from_slice(&tag);
        debug_assert_eq!(out.len(), usize::from(total));
        Ok(out)
    }
}

/// The associated data of a sealed message: its header, the authentication extension's
/// prefix and the SPI (the ciphertext sits in between and is not part of it).
fn associated_data(bytes: &[u8], body_end: usize) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    ad[..HEADER_LEN].copy_from_slice(&bytes[..HEADER_LEN]);
    ad[HEADER_LEN..].copy_from_slice(&bytes[body_end..body_end + EXT_HEADER_LEN + 4]);
    ad
}

fn extensions_len(exts: &[Extension]) -> usize {
    exts.iter().map(|e| EXT_HEADER_LEN + e.body_len()).sum()
}

fn write_extensions(exts: &[Extension], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    for e in exts {
        let len = e.body_len();
        let len16 = u16::try_from(len).map_err(|_| EncodeError::ExtensionTooLong(len))?;
        out.push(e.type_code());
        out.push(0);
        out.extend_from_slice(&len16.to_be_bytes());
        e.write_body(out);
    }
    Ok(())
}

/// Encodes extensions on their own (the payloads of Noise handshake messages).
pub fn encode_extensions(exts: &[Extension]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(extensions_len(exts));
    write_extensions(exts, &mut out)?;
    Ok(out)
}

/// Decodes a run of extensions (a handshake payload, or a sealed message's plaintext).
/// The authentication type is not allowed inside.
pub fn decode_extensions(bytes: &[u8]) -> Result<Vec<Extension>, DecodeError> {
    let mut exts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (t, len) = tlv(bytes, at)?;
        if t == ExtensionType::Authentication as u8 {
            return Err(DecodeError::AuthenticationNotLast);
        }
        exts.push(Extension::parse(
            t,
            &bytes[at + EXT_HEADER_LEN..at + EXT_HEADER_LEN + len],
        )?);
        at += EXT_HEADER_LEN + len;
    }
    Ok(exts)
}

fn locator_name(r: LocatorRole) -> &'static str {
    match r {
        LocatorRole::Own => "an own-address locator",
        LocatorRole::Old => "an old-address locator",
        LocatorRole::New => "a new-address locator",
        LocatorRole::Notify => "a notification-address locator",
        LocatorRole::Watch => "a watched-address locator",
    }
}

/// A datagram whose framing has been checked but which has not been opened yet.
/// Receivers read the header (and, for sealed messages, the SPI to find the session),
/// then [`Frame::open`] or [`Frame::decode_clear`].
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    header: Header,
    /// `Some(spi)` for a sealed message.
    spi: Option<u32>,
}

impl<'a> Frame<'a> {
    /// Checks the header and the framing its type calls for.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, DecodeError> {
        let (header, hflags) = Header::parse(bytes)?;
        let sealed = hflags & header_flags::PROTECTED != 0;
        let t = header.msg_type;
        if t.is_handshake() {
            if sealed {
                return Err(DecodeError::SealedHandshake(t.name()));
            }
            return Ok(Frame {
                bytes,
                header,
                spi: None,
            });
        }
        if !sealed {
            return Err(DecodeError::Unsealed(t.name()));
        }
        if bytes.len() < HEADER_LEN + AUTH_EXT_LEN {
            return Err(DecodeError::MissingAuthentication);
        }
        let a = bytes.len() - AUTH_EXT_LEN;
        let p = &bytes[a..a + EXT_HEADER_LEN];
        if p[0] != ExtensionType::Authentication as u8
            || p[1] != 0
            || usize::from(u16::from_be_bytes([p[2], p[3]])) != AUTH_BODY_LEN
        {
            return Err(DecodeError::MissingAuthentication);
        }
        let s = a + EXT_HEADER_LEN;
        let spi = u32::from_be_bytes([bytes[s], bytes[s + 1], bytes[s + 2], bytes[s + 3]]);
        Ok(Frame {
            bytes,
            header,
            spi: Some(spi),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The receiver's session index of a sealed message.
    pub fn spi(&self) -> Option<u32> {
        self.spi
    }

    pub fn is_sealed(&self) -> bool {
        self.spi.is_some()
    }

    /// Decrypts and decodes a sealed message. The tag is checked (in constant time, by
    /// the AEAD) before any extension is decoded.
    pub fn open(&self, key: &SessionKey) -> Result<Message, DecodeError> {
        if self.spi.is_none() {
            return Err(DecodeError::Unsealed(self.header.msg_type.name()));
        }
        let body_end = self.bytes.len() - AUTH_EXT_LEN;
        let ad = associated_data(self.bytes, body_end);
        let mut plain = self.bytes[HEADER_LEN..body_end].to_vec();
        let tag: [u8; TAG_LEN] = self.bytes[self.bytes.len() - TAG_LEN..]
            .try_into()
            .expect("fixed length");
        if !key.open(self.header.replay_id, &ad, &mut plain, &tag) {
            return Err(DecodeError::BadMac);
        }
        let msg = Message {
            header: self.header,
            extensions: decode_extensions(&plain)?,
        };
        msg.validate()?;
        Ok(msg)
    }

    /// Decodes a handshake message (in clear).
    pub fn decode_clear(&self) -> Result<Message, DecodeError> {
        if self.spi.is_some() {
            return Err(DecodeError::SealedHandshake(self.header.msg_type.name()));
        }
        let msg = Message {
            header: self.header,
            extensions: decode_extensions(&self.bytes[HEADER_LEN..])?,
        };
        msg.validate()?;
        Ok(msg)
    }
}

/// Reads the TLV prefix at `at`: (type, body length), with bounds and flags checked.
fn tlv(bytes: &[u8], at: usize) -> Result<(u8, usize), DecodeError> {
    let Some(p) = bytes.get(at..at + EXT_HEADER_LEN) else {
        return Err(DecodeError::ExtensionOverrun { offset: at });
    };
    if p[1] != 0 {
        return Err(DecodeError::ReservedBits);
    }
    let len = u16::from_be_bytes([p[2], p[3]]) as usize;
    if at + EXT_HEADER_LEN + len > bytes.len() {
        return Err(DecodeError::ExtensionOverrun { offset: at });
    }
    Ok((p[0], len))
}
