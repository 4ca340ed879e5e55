//! A whole control message: header, extensions, and the authentication extension last.

use crate::auth::{AuthKey, MAC_LEN};
use crate::error::{DecodeError, EncodeError};
use crate::ext::{EXT_HEADER_LEN, Extension, ExtensionType, Locator, LocatorRole, Migration};
use crate::header::{HEADER_LEN, Header, MessageType};

/// Body of the authentication extension: SPI (4 bytes) then the MAC.
const AUTH_BODY_LEN: usize = 4 + MAC_LEN;
/// The authentication extension with its TLV prefix.
const AUTH_EXT_LEN: usize = EXT_HEADER_LEN + AUTH_BODY_LEN;

/// A decoded, authenticated control message (or one about to be encoded).
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

    /// Encoded length in bytes, authentication included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self
                .extensions
                .iter()
                .map(|e| EXT_HEADER_LEN + e.body_len())
                .sum::<usize>()
            + AUTH_EXT_LEN
    }

    /// Checks the extensions this message type requires and allows (docs/PROTOCOL.md,
    /// "Extensions by message type").
    pub fn validate(&self) -> Result<(), DecodeError> {
        let t = self.header.msg_type;
        let mut migrations = 0usize;
        let mut caps = 0usize;
        let mut idents = 0usize;
        let mut roles = [0usize; 6];
        for e in &self.extensions {
            match e {
                Extension::Migration(_) => migrations += 1,
                Extension::Capabilities(_) => caps += 1,
                Extension::Identity(_) => idents += 1,
                Extension::Locator(l) => roles[l.role as usize] += 1,
                Extension::Opaque(_) | Extension::Unknown { .. } => {}
            }
        }
        let msg = t.name();
        let need = |cond: bool, what| {
            if cond {
                Ok(())
            } else {
                Err(DecodeError::MissingExtension { msg, what })
            }
        };
        let allow = |cond: bool, what| {
            if cond {
                Ok(())
            } else {
                Err(DecodeError::UnexpectedExtension { msg, what })
            }
        };
        let role = |r: LocatorRole| roles[r as usize];
        use LocatorRole::{New, Old, Own, Watch};
        use MessageType::*;
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
            need(role(r) >= min, locator_name(r))?;
            allow(role(r) <= max, locator_name(r))?;
        }
        match t {
            MigrationRequest | ConnectionUpdate => need(migrations >= 1, "a migration extension")?,
            MigrationReply | ConnectionUpdateAck | ConnectionUpdateRequest | Termination | TerminationAck => {
            }
            _ => allow(migrations == 0, "migration extensions")?,
        }
        match t {
            RegistrationRequest | RegistrationReply => allow(caps <= 1, "two capabilities")?,
            _ => allow(caps == 0, "a capabilities extension")?,
        }
        match t {
            MessageType::Notify => allow(idents <= 1, "two identity extensions")?,
            _ => allow(idents == 0, "an identity extension")?,
        }
        Ok(())
    }

    /// Encodes the message and appends the authentication extension, a MAC under `key`
    /// over every byte before the MAC itself (seed 001: "protects the payload, other
    /// extensions and the initial part of the [authentication] header").
    pub fn encode(&self, key: &AuthKey) -> Result<Vec<u8>, EncodeError> {
        self.validate().map_err(EncodeError::Invalid)?;
        let total = self.encoded_len();
        let total16 = u16::try_from(total).map_err(|_| EncodeError::TooLong(total))?;
        let mut out = Vec::with_capacity(total);
        self.header.write(&mut out, total16);
        for e in &self.extensions {
            let len = e.body_len();
            let len16 = u16::try_from(len).map_err(|_| EncodeError::ExtensionTooLong(len))?;
            out.push(e.type_code());
            out.push(0);
            out.extend_from_slice(&len16.to_be_bytes());
            e.write_body(&mut out);
        }
        out.push(ExtensionType::Authentication as u8);
        out.push(0);
        out.extend_from_slice(&(AUTH_BODY_LEN as u16).to_be_bytes());
        out.extend_from_slice(&key.spi().to_be_bytes());
        let mac = key.mac(&out);
        out.extend_from_slice(&mac);
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// Parses, authenticates and decodes in one step. `key_for` picks the key from the
    /// sender and SPI; `None` refuses the message.
    pub fn decode<'k>(
        bytes: &[u8],
        key_for: impl FnOnce(&Header, u32) -> Option<&'k AuthKey>,
    ) -> Result<Message, DecodeError> {
        let frame = Frame::parse(bytes)?;
        let key = key_for(frame.header(), frame.spi()).ok_or(DecodeError::UnknownSpi(frame.spi()))?;
        frame.verify(key)?;
        frame.decode_unverified()
    }
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

/// A datagram whose framing has been checked but whose MAC has not. Receivers read the
/// header (to find the sender's key), then [`Frame::verify`], then decode.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    header: Header,
    /// Offset of the authentication extension's TLV prefix.
    auth_at: usize,
    spi: u32,
}

impl<'a> Frame<'a> {
    /// Checks the header, walks the extension TLVs, and requires exactly one
    /// authentication extension, last, of the right length.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, DecodeError> {
        let header = Header::parse(bytes)?;
        let mut at = HEADER_LEN;
        let mut auth_at = None;
        while at < bytes.len() {
            let (t, len) = tlv(bytes, at)?;
            if t == ExtensionType::Authentication as u8 {
                if auth_at.is_some() || at + EXT_HEADER_LEN + len != bytes.len() {
                    return Err(DecodeError::AuthenticationNotLast);
                }
                if len != AUTH_BODY_LEN {
                    return Err(DecodeError::MalformedExtension {
                        ext: "authentication",
                        why: "length is not 36",
                    });
                }
                auth_at = Some(at);
            }
            at += EXT_HEADER_LEN + len;
        }
        let auth_at = auth_at.ok_or(DecodeError::MissingAuthentication)?;
        let s = auth_at + EXT_HEADER_LEN;
        let spi = u32::from_be_bytes([bytes[s], bytes[s + 1], bytes[s + 2], bytes[s + 3]]);
        Ok(Frame {
            bytes,
            header,
            auth_at,
            spi,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Checks the MAC in constant time.
    pub fn verify(&self, key: &AuthKey) -> Result<(), DecodeError> {
        let mac_at = self.auth_at + EXT_HEADER_LEN + 4;
        if key.spi() != self.spi {
            return Err(DecodeError::UnknownSpi(self.spi));
        }
        if key.verify(&self.bytes[..mac_at], &self.bytes[mac_at..]) {
            Ok(())
        } else {
            Err(DecodeError::BadMac)
        }
    }

    /// Decodes the extensions without checking the MAC. Receivers call this only after
    /// [`Frame::verify`]; fuzzers and tests call it directly.
    pub fn decode_unverified(&self) -> Result<Message, DecodeError> {
        let mut extensions = Vec::new();
        let mut at = HEADER_LEN;
        while at < self.auth_at {
            let (t, len) = tlv(self.bytes, at)?;
            let body = &self.bytes[at + EXT_HEADER_LEN..at + EXT_HEADER_LEN + len];
            extensions.push(Extension::parse(t, body)?);
            at += EXT_HEADER_LEN + len;
        }
        let msg = Message {
            header: self.header,
            extensions,
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
