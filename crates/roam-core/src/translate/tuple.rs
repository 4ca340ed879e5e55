//! Connection specifications (seed 000 ¶0049): the 5-tuple that names a transport
//! flow, always written from the point of view of the host that holds it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The upper-layer protocols roam translates (seed 000 ¶0049 "upper layer protocol type").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (IANA): 6 for TCP, 17 for UDP.
    pub const fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub const fn from_ip_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A flow's 5-tuple seen from this host: `local` is this host's end, `remote` the
/// peer's. An egress packet has `src = local, dst = remote`; an ingress packet has
/// `src = remote, dst = local`. Both ends are always of the same address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tuple {
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Tuple {
    pub const fn new(protocol: Protocol, local: SocketAddr, remote: SocketAddr) -> Tuple {
        Tuple {
            protocol,
            local,
            remote,
        }
    }

    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> Tuple {
        Tuple {
            protocol: self.protocol,
            local: self.remote,
            remote: self.local,
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.local.is_ipv4()
    }

    /// Whether both ends are of one family (a tuple that mixes them is not a flow).
    pub fn is_consistent(&self) -> bool {
        self.local.is_ipv4() == self.remote.is_ipv4()
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} <-> {}", self.protocol, self.local, self.remote)
    }
}

/// Which end of a flow an address-only mapping applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// This host's address (egress source, ingress destination).
    Local,
    /// The peer's address (egress destination, ingress source).
    Remote,
}

/// A full 5-tuple translation entry (seed 000 ¶0047, FIG. 7): packets of the flow leave
/// with `current` on the wire and reach the local stack with `original`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowMapping {
    pub original: Tuple,
    pub current: Tuple,
    /// Seed 001 FIG. 3 step 305: while the peer has not confirmed the move, egress
    /// packets of this flow must not leave (they would reach the peer under a tuple it
    /// does not know, and its stack would answer with a RST). A data plane that can
    /// queue holds them; one that cannot drops them and lets TCP retransmit.
    pub hold: bool,
}

/// An address-only translation entry (seed 002's virtual/actual address): every packet
/// whose `side` address is `original` (egress) or `current` (ingress) is rewritten,
/// whatever its ports. A 5-tuple entry for the same packet takes precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddressMapping {
    pub side: Side,
    pub original: IpAddr,
    pub current: IpAddr,
}

/// A change a data plane must make to its translation table. The protocol core emits
/// these; the kernel, TUN and simulator data planes obey them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TableChange {
    /// Insert the entry, or replace the entry with the same `original`.
    InstallFlow(FlowMapping),
    /// Remove the entry whose original tuple this is.
    RemoveFlow {
        original: Tuple,
    },
    /// Insert or replace the address mapping with the same `(side, original)`.
    InstallAddress(AddressMapping),
    RemoveAddress {
        side: Side,
        original: IpAddr,
    },
}
