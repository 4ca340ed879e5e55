//! Typed extensions (seed 001 FIG. 6-8, plus roam's own). Each extension is a TLV:
//!
//! ```text
//!  0       1       2               4
//! +-------+-------+---------------+------------------ - -
//! | Type  | Flags |    Length     |  Body (Length bytes)
//! +-------+-------+---------------+------------------ - -
//! ```
//!
//! Flags must be zero. Types 1-127 are mandatory: a receiver that does not know one
//! refuses the message. Types 128-255 are optional: an unknown one is skipped (and kept,
//! so that re-encoding gives the same bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::error::DecodeError;
use crate::header::NodeId;

/// Length of an extension's type/flags/length prefix.
pub(crate) const EXT_HEADER_LEN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExtensionType {
    /// Seed 001 FIG. 6. Always present, always last.
    Authentication = 1,
    /// Seed 001 FIG. 7: one flow's (or, with wildcards, many flows') old and new endpoint.
    Migration = 2,
    /// Seed 001 FIG. 8: opaque data (location, link quality, ...).
    Opaque = 3,
    /// A network attachment point: an address and port with a role.
    Locator = 4,
    /// What the sender can do (seed 000 ¶0071 peer negotiation).
    Capabilities = 5,
    /// A node's identifier cookie other than the sender's (e.g. who moved, in Notify).
    Identity = 6,
    /// Return routability: 16 unpredictable bytes to echo.
    Challenge = 7,
    /// A Noise handshake message.
    Noise = 8,
    /// The session index the sender wants to be reached by (the SPI of messages to it).
    SenderIndex = 9,
    /// The session index of the receiver this message is for.
    ReceiverIndex = 10,
    /// A cookie proving the initiator receives at its source address.
    Cookie = 11,
}

impl ExtensionType {
    pub fn name(self) -> &'static str {
        match self {
            ExtensionType::Authentication => "an authentication extension",
            ExtensionType::Migration => "a migration extension",
            ExtensionType::Opaque => "an opaque extension",
            ExtensionType::Locator => "a locator",
            ExtensionType::Capabilities => "a capabilities extension",
            ExtensionType::Identity => "an identity extension",
            ExtensionType::Challenge => "a challenge",
            ExtensionType::Noise => "a Noise message",
            ExtensionType::SenderIndex => "a sender index",
            ExtensionType::ReceiverIndex => "a receiver index",
            ExtensionType::Cookie => "a cookie",
        }
    }
}

/// Seed 001 FIG. 7 "Proto Flags": bit 0 TCP, bit 1 UDP; zero means every protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ProtoFlags(pub u8);

impl ProtoFlags {
    pub const ALL: ProtoFlags = ProtoFlags(0);
    pub const TCP: ProtoFlags = ProtoFlags(1);
    pub const UDP: ProtoFlags = ProtoFlags(2);

    /// Whether a flow of IP protocol `ip_number` is covered.
    pub fn covers(self, ip_number: u8) -> bool {
        match ip_number {
            _ if self.0 == 0 => true,
            6 => self.0 & 1 != 0,
            17 => self.0 & 2 != 0,
            _ => false,
        }
    }
}

/// Per-flow result in replies (zero in requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MigrationStatus {
    Ok = 0,
    /// The receiver has no such flow with the sender.
    UnknownFlow = 1,
    /// A newer update for this flow has already been applied.
    Stale = 2,
    /// Refused by policy (address family change, conflict, not authorised).
    Refused = 3,
}

impl MigrationStatus {
    fn from_u8(v: u8) -> Option<MigrationStatus> {
        match v {
            0 => Some(MigrationStatus::Ok),
            1 => Some(MigrationStatus::UnknownFlow),
            2 => Some(MigrationStatus::Stale),
            3 => Some(MigrationStatus::Refused),
            _ => None,
        }
    }
}

/// Seed 001 FIG. 7, extended with the peer's end of the flow so that one migration
/// names exactly one flow. All three endpoints are of one address family.
///
/// - `original`: the sender's endpoint when the flow began (it names the flow; seed
///   000 ¶0061 "an original connection identifier such as the original IP address and
///   port number"). Port 0 means every port (seed 001: "the port fields might also be
///   set to a null value to indicate ... all sessions").
/// - `new`: where the sender is now. Port 0 with a wildcard original keeps each flow's port.
/// - `peer`: the receiver's endpoint when the flow began. Unspecified address and port
///   0 mean any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Migration {
    protocols: ProtoFlags,
    status: MigrationStatus,
    original: SocketAddr,
    new: SocketAddr,
    peer: SocketAddr,
}

impl Migration {
    /// `None` if the endpoints are not all of one family. IPv6 flow labels and scope
    /// ids are not carried and are cleared.
    pub fn new(
        protocols: ProtoFlags,
        original: SocketAddr,
        new: SocketAddr,
        peer: SocketAddr,
    ) -> Option<Migration> {
        let v4 = original.is_ipv4();
        if new.is_ipv4() != v4 || peer.is_ipv4() != v4 {
            return None;
        }
        Some(Migration {
            protocols,
            status: MigrationStatus::Ok,
            original: normalize(original),
            new: normalize(new),
            peer: normalize(peer),
        })
    }

    pub fn with_status(mut self, status: MigrationStatus) -> Migration {
        self.status = status;
        self
    }

    pub fn protocols(&self) -> ProtoFlags {
        self.protocols
    }
    pub fn status(&self) -> MigrationStatus {
        self.status
    }
    pub fn original(&self) -> SocketAddr {
        self.original
    }
    pub fn new_endpoint(&self) -> SocketAddr {
        self.new
    }
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// Whether this migration may name more than one flow. It names exactly one flow only
    /// with exactly one protocol flag, non-zero original and peer ports and a specified
    /// peer address (docs/PROTOCOL.md, "Migration"; the endpoint matches flows so).
    pub fn is_wildcard(&self) -> bool {
        let one_protocol = self.protocols == ProtoFlags::TCP || self.protocols == ProtoFlags::UDP;
        !(one_protocol
            && self.original.port() != 0
            && self.peer.port() != 0
            && !self.peer.ip().is_unspecified())
    }

    fn body_len(&self) -> usize {
        12 + 3 * addr_len(self.original.ip())
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.protocols.0);
        out.push(family(self.original.ip()));
        out.push(self.status as u8);
        out.push(0);
        out.extend_from_slice(&self.original.port().to_be_bytes());
        out.extend_from_slice(&self.new.port().to_be_bytes());
        out.extend_from_slice(&self.peer.port().to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in [self.original.ip(), self.new.ip(), self.peer.ip()] {
            write_ip(out, a);
        }
    }

    fn parse(b: &[u8]) -> Result<Migration, DecodeError> {
        let bad = |why| DecodeError::MalformedExtension {
            ext: "migration",
            why,
        };
        let fixed = b.first_chunk::<12>().ok_or(bad("shorter than 12 bytes"))?;
        let alen = match fixed[1] {
            4 => 4,
            6 => 16,
            _ => return Err(bad("address family is neither 4 nor 6")),
        };
        if b.len() != 12 + 3 * alen {
            return Err(bad("length does not match the address family"));
        }
        let status = MigrationStatus::from_u8(fixed[2]).ok_or(bad("unknown status"))?;
        if fixed[3] != 0 || fixed[10] != 0 || fixed[11] != 0 {
            return Err(bad("reserved bytes are not zero"));
        }
        let port = |i: usize| u16::from_be_bytes([fixed[i], fixed[i + 1]]);
        let ip = |k: usize| read_ip(&b[12 + k * alen..12 + (k + 1) * alen]);
        Ok(Migration {
            protocols: ProtoFlags(fixed[0]),
            status,
            original: SocketAddr::new(ip(0), port(4)),
            new: SocketAddr::new(ip(1), port(6)),
            peer: SocketAddr::new(ip(2), port(8)),
        })
    }
}

/// What a [`Locator`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LocatorRole {
    /// The sender's own address as the sender knows it (seed 000 ¶0106: compared with
    /// the datagram's apparent source, it tells whether the sender is behind a NAT).
    Own = 1,
    /// An attachment point left (seed 000 ¶0073 "first (previous or original)").
    Old = 2,
    /// An attachment point moved to (seed 000 ¶0073 "second (or current)").
    New = 3,
    /// Where a subscribe-notify service sends notifications (seed 000 ¶0073).
    Notify = 4,
    /// The attachment point a subscription watches (seed 000 ¶0073).
    Watch = 5,
}

impl LocatorRole {
    fn from_u8(v: u8) -> Option<LocatorRole> {
        match v {
            1 => Some(LocatorRole::Own),
            2 => Some(LocatorRole::Old),
            3 => Some(LocatorRole::New),
            4 => Some(LocatorRole::Notify),
            5 => Some(LocatorRole::Watch),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Locator {
    pub role: LocatorRole,
    addr: SocketAddr,
}

impl Locator {
    pub fn new(role: LocatorRole, addr: SocketAddr) -> Locator {
        Locator {
            role,
            addr: normalize(addr),
        }
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.role as u8);
        out.push(family(self.addr.ip()));
        out.extend_from_slice(&self.addr.port().to_be_bytes());
        write_ip(out, self.addr.ip());
    }

    fn parse(b: &[u8]) -> Result<Locator, DecodeError> {
        let bad = |why| DecodeError::MalformedExtension { ext: "locator", why };
        let fixed = b.first_chunk::<4>().ok_or(bad("shorter than 4 bytes"))?;
        let role = LocatorRole::from_u8(fixed[0]).ok_or(bad("unknown role"))?;
        let alen = match fixed[1] {
            4 => 4,
            6 => 16,
            _ => return Err(bad("address family is neither 4 nor 6")),
        };
        if b.len() != 4 + alen {
            return Err(bad("length does not match the address family"));
        }
        Ok(Locator {
            role,
            addr: SocketAddr::new(read_ip(&b[4..]), u16::from_be_bytes([fixed[2], fixed[3]])),
        })
    }
}

/// Seed 000 ¶0071: "an indication of whether a particular peer is able to move".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Capabilities {
    pub flags: u32,
}

impl Capabilities {
    /// The sender may change its attachment point.
    pub const MOBILE: u32 = 1;
    /// The sender's data plane queues a moving flow's packets instead of dropping them.
    pub const HOLDS_PACKETS: u32 = 2;
    /// The sender uses a subscribe-notify (rendezvous) service.
    pub const RENDEZVOUS: u32 = 4;
}

/// Seed 001 FIG. 8.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Opaque {
    pub sub_type: u8,
    pub flags: u8,
    pub data: Vec<u8>,
}

impl Opaque {
    /// Sub-type of handoff information (seed 001: opaque data carries "data such as
    /// location, ... connection quality" for connection handoff): how long, in
    /// milliseconds (u32, big-endian, saturating), the sender's moving flows have been
    /// without a working path. The receiver uses it to tell whether the flows' senders
    /// are in retransmission back-off, and what it sent that was lost.
    pub const OUTAGE: u8 = 1;

    pub fn outage(ms: u32) -> Opaque {
        Opaque {
            sub_type: Opaque::OUTAGE,
            flags: 0,
            data: ms.to_be_bytes().to_vec(),
        }
    }

    /// The outage in milliseconds if this is a well-formed outage opaque.
    pub fn as_outage(&self) -> Option<u32> {
        (self.sub_type == Opaque::OUTAGE)
            .then(|| <[u8; 4]>::try_from(self.data.as_slice()).ok())
            .flatten()
            .map(u32::from_be_bytes)
    }
}

/// One decoded extension other than authentication (which [`crate::Frame`] handles).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    Migration(Migration),
    Opaque(Opaque),
    Locator(Locator),
    Capabilities(Capabilities),
    Identity(NodeId),
    Challenge([u8; 16]),
    Noise(Vec<u8>),
    SenderIndex(u32),
    ReceiverIndex(u32),
    Cookie([u8; 16]),
    /// An optional extension (type >= 128) this version does not know; kept verbatim.
    Unknown {
        ext_type: u8,
        body: Vec<u8>,
    },
}

impl Extension {
    pub(crate) fn type_code(&self) -> u8 {
        match self {
            Extension::Migration(_) => ExtensionType::Migration as u8,
            Extension::Opaque(_) => ExtensionType::Opaque as u8,
            Extension::Locator(_) => ExtensionType::Locator as u8,
            Extension::Capabilities(_) => ExtensionType::Capabilities as u8,
            Extension::Identity(_) => ExtensionType::Identity as u8,
            Extension::Challenge(_) => ExtensionType::Challenge as u8,
            Extension::Noise(_) => ExtensionType::Noise as u8,
            Extension::SenderIndex(_) => ExtensionType::SenderIndex as u8,
            Extension::ReceiverIndex(_) => ExtensionType::ReceiverIndex as u8,
            Extension::Cookie(_) => ExtensionType::Cookie as u8,
            Extension::Unknown { ext_type, .. } => *ext_type,
        }
    }

    pub(crate) fn body_len(&self) -> usize {
        match self {
            Extension::Migration(m) => m.body_len(),
            Extension::Opaque(o) => 2 + o.data.len(),
            Extension::Locator(l) => 4 + addr_len(l.addr.ip()),
            Extension::Capabilities(_) => 4,
            Extension::Identity(_) => 8,
            Extension::Challenge(_) | Extension::Cookie(_) => 16,
            Extension::Noise(n) => n.len(),
            Extension::SenderIndex(_) | Extension::ReceiverIndex(_) => 4,
            Extension::Unknown { body, .. } => body.len(),
        }
    }

    /// Writes the body only (the caller writes the TLV prefix).
    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            Extension::Migration(m) => m.write(out),
            Extension::Opaque(o) => {
                out.push(o.sub_type);
                out.push(o.flags);
                out.extend_from_slice(&o.data);
            }
            Extension::Locator(l) => l.write(out),
            Extension::Capabilities(c) => out.extend_from_slice(&c.flags.to_be_bytes()),
            Extension::Identity(id) => {
                out.extend_from_slice(&id.get().to_be_bytes()[2..8]);
                out.extend_from_slice(&[0, 0]);
            }
            Extension::Challenge(b) | Extension::Cookie(b) => out.extend_from_slice(b),
            Extension::Noise(n) => out.extend_from_slice(n),
            Extension::SenderIndex(i) | Extension::ReceiverIndex(i) => {
                out.extend_from_slice(&i.to_be_bytes())
            }
            Extension::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }

    /// Decodes one body. The authentication type never reaches here.
    pub(crate) fn parse(ext_type: u8, body: &[u8]) -> Result<Extension, DecodeError> {
        Ok(match ext_type {
            2 => Extension::Migration(Migration::parse(body)?),
            3 => {
                let [sub_type, flags, data @ ..] = body else {
                    return Err(DecodeError::MalformedExtension {
                        ext: "opaque",
                        why: "shorter than 2 bytes",
                    });
                };
                Extension::Opaque(Opaque {
                    sub_type: *sub_type,
                    flags: *flags,
                    data: data.to_vec(),
                })
            }
            4 => Extension::Locator(Locator::parse(body)?),
            5 => {
                let b: &[u8; 4] = body.try_into().map_err(|_| DecodeError::MalformedExtension {
                    ext: "capabilities",
                    why: "length is not 4",
                })?;
                Extension::Capabilities(Capabilities {
                    flags: u32::from_be_bytes(*b),
                })
            }
            6 => {
                let b: &[u8; 8] = body.try_into().map_err(|_| DecodeError::MalformedExtension {
                    ext: "identity",
                    why: "length is not 8",
                })?;
                if b[6] != 0 || b[7] != 0 {
                    return Err(DecodeError::MalformedExtension {
                        ext: "identity",
                        why: "reserved bytes are not zero",
                    });
                }
                let mut v = [0u8; 8];
                v[2..8].copy_from_slice(&b[..6]);
                Extension::Identity(NodeId::from_low_bits(u64::from_be_bytes(v)))
            }
            7 | 11 => {
                let b: [u8; 16] = body.try_into().map_err(|_| DecodeError::MalformedExtension {
                    ext: if ext_type == 7 { "challenge" } else { "cookie" },
                    why: "length is not 16",
                })?;
                if ext_type == 7 {
                    Extension::Challenge(b)
                } else {
                    Extension::Cookie(b)
                }
            }
            8 => {
                if body.is_empty() {
                    return Err(DecodeError::MalformedExtension {
                        ext: "noise",
                        why: "empty",
                    });
                }
                Extension::Noise(body.to_vec())
            }
            9 | 10 => {
                let b: [u8; 4] = body.try_into().map_err(|_| DecodeError::MalformedExtension {
                    ext: "index",
                    why: "length is not 4",
                })?;
                let i = u32::from_be_bytes(b);
                if ext_type == 9 {
                    Extension::SenderIndex(i)
                } else {
                    Extension::ReceiverIndex(i)
                }
            }
            t if t >= 128 => Extension::Unknown {
                ext_type: t,
                body: body.to_vec(),
            },
            t => return Err(DecodeError::UnknownExtension(t)),
        })
    }
}

fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        v4 => v4,
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

fn addr_len(a: IpAddr) -> usize {
    if a.is_ipv4() { 4 } else { 16 }
}

fn write_ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

/// `b` is exactly 4 or 16 bytes long (callers check).
fn read_ip(b: &[u8]) -> IpAddr {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        IpAddr::V4(Ipv4Addr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        IpAddr::V6(Ipv6Addr::from(v6))
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}
