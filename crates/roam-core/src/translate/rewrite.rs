//! The packet rewriter (seed 000 ¶0051-¶0055, FIG. 7): egress packets go from their
//! original tuple to the current one, ingress packets back. Addresses and ports are
//! patched in place and every checksum they enter is updated incrementally (RFC 1624):
//! the IPv4 header checksum (RFC 791 §3.1), the TCP/UDP checksum (whose pseudo-header
//! holds the addresses, RFC 9293 §3.1 / RFC 768 / RFC 8200 §8.1), and for ICMP errors
//! the quoted packet's headers and the ICMP checksum (RFC 792 / RFC 4443 §2.3).
//!
//! Parsing (header lengths, IPv4 options, IPv6 extension headers, fragmentation) is
//! etherparse's; the rewrite is roam's. Nothing allocates. A packet that does not parse
//! gives an error and is left unchanged; every verdict but [`Verdict::Translated`]
//! leaves it unchanged too.
//!
//! Precedence, per packet: a 5-tuple entry ([`FlowMapping`](super::FlowMapping)) beats
//! an address entry ([`AddressMapping`](super::AddressMapping)); packets without ports
//! (non-first fragments, ICMP other than errors, other protocols) can only match
//! address entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use etherparse::err::Layer;
use etherparse::err::ip::{HeaderError, HeadersError, SliceError};
use etherparse::{IpSlice, LaxIpSlice};
use thiserror::Error;

use super::checksum;
use super::fast;
use super::table::TranslationTable;
use super::tuple::{Protocol, Side, Tuple};

/// Which way a packet crosses the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local stack to the wire (`src` is this host): original -> current.
    Egress,
    /// From the wire to the local stack (`dst` is this host): current -> original.
    Ingress,
}

impl Direction {
    /// The other direction: the way a packet quoted in an ICMP error travelled.
    pub const fn reversed(self) -> Direction {
        match self {
            Direction::Egress => Direction::Ingress,
            Direction::Ingress => Direction::Egress,
        }
    }
}

/// What the rewriter did with a packet. Only `Translated` modifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No entry applies: the packet passes as it is.
    Untouched,
    /// Rewritten in place.
    Translated,
    /// Egress packet of a flow whose entry has `hold` set (its move is not yet
    /// confirmed, seed 001 FIG. 3 step 305): not modified; queue it (or drop it) and
    /// translate it again once the entry is released. Never returned on ingress.
    Hold,
    /// The packet's tuple collides with a translated flow (seed 000 ¶0067-¶0069). Not
    /// modified. The tuple is from this host's point of view.
    /// - Ingress: the tuple is some entry's *original* but no entry's current: a packet
    ///   from whoever holds a moved peer's old address and port now (or a straggler of
    ///   the old path). Delivering it would put it into the migrated connection.
    /// - Egress: the tuple is some entry's *current* but no entry's original: the local
    ///   stack opened a flow whose tuple is already on the wire for a moved flow.
    ///
    /// What to do (remap, drop) is the caller's policy, not the rewriter's.
    Conflict(Tuple),
}

/// The flow a packet belongs to, from this host's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketFlow {
    /// A TCP or UDP packet (or first fragment): egress `local = src`, ingress `local = dst`.
    Transport(Tuple),
    /// An ICMP or ICMPv6 error about a TCP or UDP packet of this flow. The quoted packet
    /// travelled the other way: on ingress it is one this host sent (`local` = quoted
    /// `src`), on egress one it received (`local` = quoted `dst`).
    IcmpError(Tuple),
    /// Anything else (no ports to name a flow by).
    Other,
}

/// Why a packet could not be handled. The packet is left unchanged. Each variant is one
/// drop reason; [`PacketError::reason`] names it for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("IP header truncated")]
    TruncatedIpHeader,
    #[error("IPv4 header length {0} is below the minimum of 5 words")]
    BadIhl(u8),
    #[error("IP length field disagrees with the packet")]
    BadIpLength,
    #[error("IP extension header truncated or malformed")]
    BadExtensionHeader,
    #[error("TCP header truncated before its checksum")]
    TruncatedTcp,
    #[error("UDP header truncated")]
    TruncatedUdp,
    #[error("ICMP header truncated")]
    TruncatedIcmp,
    #[error("ICMP error does not quote a whole IP header")]
    BadIcmpQuote,
    #[error("ICMP error quotes a packet of the other IP family")]
    IcmpQuoteFamily,
}

impl PacketError {
    /// A stable snake_case name for drop counters.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::Empty => "empty",
            PacketError::Version(_) => "bad_ip_version",
            PacketError::TruncatedIpHeader => "truncated_ip_header",
            PacketError::BadIhl(_) => "bad_ipv4_ihl",
            PacketError::BadIpLength => "bad_ip_length",
            PacketError::BadExtensionHeader => "bad_extension_header",
            PacketError::TruncatedTcp => "truncated_tcp",
            PacketError::TruncatedUdp => "truncated_udp",
            PacketError::TruncatedIcmp => "truncated_icmp",
            PacketError::BadIcmpQuote => "bad_icmp_quote",
            PacketError::IcmpQuoteFamily => "icmp_quote_family",
        }
    }
}

fn slice_error(e: &SliceError) -> PacketError {
    match e {
        SliceError::Len(l) => match l.layer {
            Layer::IpHeader | Layer::Ipv4Header | Layer::Ipv6Header => PacketError::TruncatedIpHeader,
            // RFC 791 total length / RFC 8200 payload length: shorter than the header,
            // or longer than the packet.
            Layer::Ipv4Packet | Layer::Ipv6Packet => PacketError::BadIpLength,
            _ => PacketError::BadExtensionHeader,
        },
        SliceError::IpHeaders(HeadersError::Ip(HeaderError::UnsupportedIpVersion { version_number })) => {
            PacketError::Version(*version_number)
        }
        SliceError::IpHeaders(HeadersError::Ip(HeaderError::Ipv4HeaderLengthSmallerThanHeader { ihl })) => {
            PacketError::BadIhl(*ihl)
        }
        SliceError::IpHeaders(HeadersError::Ipv4Ext(_) | HeadersError::Ipv6Ext(_)) => {
            PacketError::BadExtensionHeader
        }
    }
}

const ICMPV4: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented, or the first fragment: the transport header is here.
    HasHeader,
    /// A later fragment (RFC 791 fragment offset, RFC 8200 §4.5 Fragment Offset > 0):
    /// no transport header, so no ports.
    Later,
}

/// Where things are in an IP packet. Every offset and range here lies inside the
/// buffer the layout was made from: etherparse proved it (its slices are sub-slices of
/// the buffer), or [`fast::bounds`] checked it against the buffer's length, so the
/// indexing below cannot go out of bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    src: IpAddr,
    dst: IpAddr,
    /// Offsets of the source and destination addresses.
    src_at: usize,
    dst_at: usize,
    /// Offset of the IPv4 header checksum.
    ipv4_checksum_at: Option<usize>,
    proto: u8,
    /// The IP payload after extension headers (bounded by the length fields; for a
    /// quote, by what was quoted).
    l4: Range<usize>,
    fragment: Fragment,
}

impl Layout {
    fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    fn icmp_number(&self) -> u8 {
        if self.is_v6() { ICMPV6 } else { ICMPV4 }
    }

    /// From a parsed IPv4 header; `payload` is a sub-slice of `pkt`.
    fn v4(pkt: &[u8], h: &etherparse::Ipv4HeaderSlice<'_>, proto: u8, payload: &[u8]) -> Layout {
        let at = offset_in(pkt, payload);
        Layout {
            src: IpAddr::V4(h.source_addr()),
            dst: IpAddr::V4(h.destination_addr()),
            src_at: 12,
            dst_at: 16,
            ipv4_checksum_at: Some(10),
            proto,
            l4: at..at + payload.len(),
            fragment: if h.fragments_offset().value() != 0 {
                Fragment::Later
            } else {
                Fragment::HasHeader
            },
        }
    }

    /// From a parsed IPv6 header and its extension headers' bytes.
    fn v6(pkt: &[u8], h: &etherparse::Ipv6HeaderSlice<'_>, exts: &[u8], proto: u8, payload: &[u8]) -> Layout {
        let at = offset_in(pkt, payload);
        Layout {
            src: IpAddr::V6(h.source_addr()),
            dst: IpAddr::V6(h.destination_addr()),
            src_at: 8,
            dst_at: 24,
            ipv4_checksum_at: None,
            proto,
            l4: at..at + payload.len(),
            fragment: if ipv6_later_fragment(h.next_header().0, exts) {
                Fragment::Later
            } else {
                Fragment::HasHeader
            },
        }
    }
}

/// Where `inner` (a sub-slice etherparse returned) starts within `outer`.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

/// Whether an IPv6 packet is a fragment other than the first: walks the extension
/// headers etherparse delimited (RFC 8200 §4) looking for a Fragment header with a
/// non-zero offset. Done by hand, bounds-checked at every step: etherparse's extension
/// iterator assumes a fully validated chain, which a quoted (truncated) packet is not.
fn ipv6_later_fragment(first: u8, exts: &[u8]) -> bool {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let (mut next, mut at) = (first, 0usize);
    while at < exts.len() {
        let Some(h) = exts.get(at..at + 2) else {
            return false;
        };
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => (usize::from(h[1]) + 1) * 8,
            AUTH => (usize::from(h[1]) + 2) * 4,
            FRAGMENT => {
                let Some(f) = exts.get(at + 2..at + 4) else {
                    return false;
                };
                if u16::from_be_bytes([f[0], f[1]]) >> 3 != 0 {
                    return true;
                }
                8
            }
            _ => return false,
        };
        next = h[0];
        at += len;
    }
    false
}

fn check_version(pkt: &[u8]) -> Result<(), PacketError> {
    match pkt.first().map(|b| b >> 4) {
        None => Err(PacketError::Empty),
        Some(4 | 6) => Ok(()),
        Some(v) => Err(PacketError::Version(v)),
    }
}

/// The layout of a packet without extension headers, read straight from its header
/// bytes by [`fast::bounds`]; `None` leaves the packet to etherparse.
fn direct_layout(pkt: &[u8], lax: bool) -> Option<Layout> {
    let b = fast::bounds(pkt, lax)?;
    let fragment = if b.later_fragment {
        Fragment::Later
    } else {
        Fragment::HasHeader
    };
    Some(if b.v6 {
        let (s, d) = (pkt.get(8..24)?, pkt.get(24..40)?);
        Layout {
            src: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(s).ok()?)),
            dst: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(d).ok()?)),
            src_at: 8,
            dst_at: 24,
            ipv4_checksum_at: None,
            proto: b.proto,
            l4: b.l4,
            fragment,
        }
    } else {
        let (s, d) = (pkt.get(12..16)?, pkt.get(16..20)?);
        Layout {
            src: IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(s).ok()?)),
            dst: IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?)),
            src_at: 12,
            dst_at: 16,
            ipv4_checksum_at: Some(10),
            proto: b.proto,
            l4: b.l4,
            fragment,
        }
    })
}

/// A whole packet, strictly: its length fields must hold.
fn layout(pkt: &[u8]) -> Result<Layout, PacketError> {
    check_version(pkt)?;
    match direct_layout(pkt, false) {
        Some(l) => Ok(l),
        None => layout_etherparse(pkt),
    }
}

/// [`layout`] by etherparse: packets with extension headers, and every error.
fn layout_etherparse(pkt: &[u8]) -> Result<Layout, PacketError> {
    match IpSlice::from_slice(pkt) {
        Ok(IpSlice::Ipv4(v4)) => Ok(Layout::v4(
            pkt,
            &v4.header(),
            v4.payload().ip_number.0,
            v4.payload().payload,
        )),
        Ok(IpSlice::Ipv6(v6)) => Ok(Layout::v6(
            pkt,
            &v6.header(),
            v6.extensions().slice(),
            v6.payload().ip_number.0,
            v6.payload().payload,
        )),
        Err(e) => {
            let err = slice_error(&e);
            // A later fragment carries the middle of the original payload, but its
            // headers still name what follows the Fragment header (RFC 8200 §4.5: the
            // first header of the Fragmentable Part; or an IPv4 AH): etherparse then
            // parses payload bytes as extension headers and may fail. The IP header and
            // lengths passed (they are checked first), so such a fragment is valid.
            if err == PacketError::BadExtensionHeader
                && let Some(l) = layout_lax(pkt)
                && l.fragment == Fragment::Later
            {
                return Ok(l);
            }
            Err(err)
        }
    }
}

/// The IP header must be whole; the payload may be cut short, and extension headers
/// are parsed as far as they go.
fn layout_lax(pkt: &[u8]) -> Option<Layout> {
    direct_layout(pkt, true).or_else(|| layout_lax_etherparse(pkt))
}

fn layout_lax_etherparse(pkt: &[u8]) -> Option<Layout> {
    let (ip, _) = LaxIpSlice::from_slice(pkt).ok()?;
    Some(match &ip {
        LaxIpSlice::Ipv4(v4) => Layout::v4(pkt, &v4.header(), v4.payload().ip_number.0, v4.payload().payload),
        LaxIpSlice::Ipv6(v6) => Layout::v6(
            pkt,
            &v6.header(),
            v6.extensions().slice(),
            v6.payload().ip_number.0,
            v6.payload().payload,
        ),
    })
}

/// A quoted packet (RFC 792: "Internet Header + 64 bits of Original Data Datagram";
/// RFC 1812 §4.3.2.3 and RFC 4443 §2.4(c): as much as fits): its IP header must be
/// whole, its payload may be cut short.
fn layout_quote(quote: &[u8]) -> Result<Layout, PacketError> {
    check_version(quote).map_err(|_| PacketError::BadIcmpQuote)?;
    layout_lax(quote).ok_or(PacketError::BadIcmpQuote)
}

/// A transport protocol roam translates, and where its checksum is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Transport {
    pub(super) protocol: Protocol,
    /// Offset of the checksum within the transport header: 16 for TCP (RFC 9293 §3.1),
    /// 6 for UDP (RFC 768).
    pub(super) checksum_at: usize,
}

impl Transport {
    pub(super) fn of(proto: u8) -> Option<Transport> {
        match proto {
            TCP => Some(Transport {
                protocol: Protocol::Tcp,
                checksum_at: 16,
            }),
            UDP => Some(Transport {
                protocol: Protocol::Udp,
                checksum_at: 6,
            }),
            _ => None,
        }
    }

    fn truncated(self) -> PacketError {
        match self.protocol {
            Protocol::Tcp => PacketError::TruncatedTcp,
            Protocol::Udp => PacketError::TruncatedUdp,
        }
    }

    /// UDP's zero checksum means "none" (RFC 768) and must stay zero. Over IPv6 zero is
    /// invalid (RFC 8200 §8.1) except where RFC 6935/6936 allow it for tunnels; either
    /// way an update could only turn it into a wrong non-zero value, so it stays too.
    pub(super) fn zero_means_none(self) -> bool {
        self.protocol == Protocol::Udp
    }
}

fn ports(b: &[u8]) -> Option<(u16, u16)> {
    let p = b.first_chunk::<4>()?;
    Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// The ports of a TCP or UDP packet whose header holds at least its ports and its
/// checksum (a first fragment could, against RFC 1858 / RFC 8200 §4.5, cut it short).
fn transport_ports(pkt: &[u8], l: &Layout, t: Transport) -> Result<(u16, u16), PacketError> {
    match pkt.get(l.l4.clone()) {
        Some(l4) if l4.len() >= t.checksum_at + 2 => ports(l4).ok_or(t.truncated()),
        _ => Err(t.truncated()),
    }
}

/// ICMP messages that quote the packet that caused them.
fn is_icmp_error(v6: bool, icmp_type: u8) -> bool {
    if v6 {
        // RFC 4443 §3: destination unreachable, packet too big, time exceeded,
        // parameter problem.
        matches!(icmp_type, 1..=4)
    } else {
        // RFC 792: destination unreachable, source quench, redirect, time exceeded,
        // parameter problem.
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

pub(super) fn tuple_of(dir: Direction, proto: Protocol, src: SocketAddr, dst: SocketAddr) -> Tuple {
    match dir {
        Direction::Egress => Tuple::new(proto, src, dst),
        Direction::Ingress => Tuple::new(proto, dst, src),
    }
}

/// Whether the packet laid out as `l` is an ICMP or ICMPv6 error (a first fragment or
/// whole); `Err` if it is ICMP but too short to say.
fn icmp_error_at(pkt: &[u8], l: &Layout) -> Result<bool, PacketError> {
    if l.fragment != Fragment::HasHeader || l.proto != l.icmp_number() {
        return Ok(false);
    }
    // Every ICMP and ICMPv6 message has at least type, code, checksum and 4 more bytes.
    match pkt.get(l.l4.clone()) {
        Some(icmp) if icmp.len() >= 8 => Ok(is_icmp_error(l.is_v6(), icmp[0])),
        _ => Err(PacketError::TruncatedIcmp),
    }
}

/// The transport protocol and ports of a quoted packet, if it has them.
fn quoted_ports(quote: &[u8], q: &Layout) -> Option<(Transport, u16, u16)> {
    let t = Transport::of(q.proto)?;
    if q.fragment != Fragment::HasHeader {
        return None;
    }
    let (sp, dp) = ports(quote.get(q.l4.clone())?)?;
    Some((t, sp, dp))
}

/// The flow of a packet, without changing anything.
pub fn packet_flow(dir: Direction, pkt: &[u8]) -> Result<PacketFlow, PacketError> {
    match fast::packet_flow(dir, pkt) {
        Some(f) => Ok(f),
        None => packet_flow_general(dir, pkt),
    }
}

/// [`packet_flow`] for every packet, from its [`Layout`].
pub(super) fn packet_flow_general(dir: Direction, pkt: &[u8]) -> Result<PacketFlow, PacketError> {
    let l = layout(pkt)?;
    if l.fragment == Fragment::HasHeader
        && let Some(t) = Transport::of(l.proto)
    {
        let (sp, dp) = transport_ports(pkt, &l, t)?;
        return Ok(PacketFlow::Transport(tuple_of(
            dir,
            t.protocol,
            SocketAddr::new(l.src, sp),
            SocketAddr::new(l.dst, dp),
        )));
    }
    if icmp_error_at(pkt, &l)? {
        let quote = pkt.get(l.l4.start + 8..l.l4.end).unwrap_or_default();
        let q = layout_quote(quote)?;
        if q.is_v6() != l.is_v6() {
            return Err(PacketError::IcmpQuoteFamily);
        }
        if let Some((t, sp, dp)) = quoted_ports(quote, &q) {
            // The quote travelled the other way: what we sent, if the error arrives;
            // what we received, if we send the error.
            return Ok(PacketFlow::IcmpError(tuple_of(
                dir.reversed(),
                t.protocol,
                SocketAddr::new(q.src, sp),
                SocketAddr::new(q.dst, dp),
            )));
        }
    }
    Ok(PacketFlow::Other)
}

/// New values for a packet's addresses and ports (`None`: unchanged).
#[derive(Clone, Copy, Default)]
pub(super) struct Rewrite {
    pub(super) src: Option<IpAddr>,
    pub(super) dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
}

impl Rewrite {
    fn is_noop(&self, l: &Layout, sp: u16, dp: u16) -> bool {
        self.src.is_none_or(|a| a == l.src)
            && self.dst.is_none_or(|a| a == l.dst)
            && self.sport.is_none_or(|p| p == sp)
            && self.dport.is_none_or(|p| p == dp)
    }

    fn addresses_only(self) -> Rewrite {
        Rewrite {
            sport: None,
            dport: None,
            ..self
        }
    }

    /// The rewrite that makes a packet travelling `dir` carry the tuple `to`.
    fn between(dir: Direction, to: &Tuple) -> Rewrite {
        let (src, dst) = match dir {
            Direction::Egress => (to.local, to.remote),
            Direction::Ingress => (to.remote, to.local),
        };
        Rewrite {
            src: Some(src.ip()),
            dst: Some(dst.ip()),
            sport: Some(src.port()),
            dport: Some(dst.port()),
        }
    }

    /// Address-only mappings for a packet travelling `dir` with these addresses:
    /// egress, original -> current (Local: the source, Remote: the destination);
    /// ingress, current -> original (Remote: the source, Local: the destination).
    pub(super) fn from_addresses(
        table: &TranslationTable,
        dir: Direction,
        src: IpAddr,
        dst: IpAddr,
    ) -> Rewrite {
        if !table.has_addresses() {
            return Rewrite::default();
        }
        let (src, dst) = match dir {
            Direction::Egress => (
                table.address_current(Side::Local, src),
                table.address_current(Side::Remote, dst),
            ),
            Direction::Ingress => (
                table.address_original(Side::Remote, src),
                table.address_original(Side::Local, dst),
            ),
        };
        Rewrite {
            src,
            dst,
            ..Rewrite::default()
        }
    }

    /// Address-only mappings for the packet quoted by an ICMP error travelling `dir`.
    /// The quote travelled the other way and was translated then; this undoes
    /// (ingress) or redoes (egress) that, keeping the quote's orientation:
    /// - ingress: we sent it (src = our current address, dst = the peer's current):
    ///   back to the originals;
    /// - egress: we received it (src = the peer's original, dst = ours): to the
    ///   currents, as it was on the wire.
    fn quote_addresses(table: &TranslationTable, dir: Direction, src: IpAddr, dst: IpAddr) -> Rewrite {
        if !table.has_addresses() {
            return Rewrite::default();
        }
        let (src, dst) = match dir {
            Direction::Ingress => (
                table.address_original(Side::Local, src),
                table.address_original(Side::Remote, dst),
            ),
            Direction::Egress => (
                table.address_current(Side::Remote, src),
                table.address_current(Side::Local, dst),
            ),
        };
        Rewrite {
            src,
            dst,
            ..Rewrite::default()
        }
    }
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put_addr(b: &mut [u8], at: usize, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => b[at..at + 4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b[at..at + 16].copy_from_slice(&v6.octets()),
    }
}

/// Where a transport checksum is, and whether zero there means "no checksum".
#[derive(Clone, Copy)]
struct ChecksumField {
    at: usize,
    zero_means_none: bool,
}

/// Applies `rw` to the packet laid out as `l` inside `buf`: addresses (and the IPv4
/// header checksum), ports if the transport header holds them, and the transport
/// checksum at `l4_checksum` if given (it covers the pseudo-header, so address changes
/// enter it too). Each checksum gets one RFC 1624 update with the terms of every field
/// that changed in it ([`checksum::updated`]: the same bits as one update per field).
fn apply(buf: &mut [u8], l: &Layout, rw: &Rewrite, l4_checksum: Option<ChecksumField>) {
    let addresses =
        replace_address(buf, l.src_at, &l.src, rw.src) + replace_address(buf, l.dst_at, &l.dst, rw.dst);
    let l4 = l.l4.start;
    let terms =
        addresses + replace_port(buf, l4, l.l4.end, rw.sport) + replace_port(buf, l4 + 2, l.l4.end, rw.dport);
    if let Some(at) = l.ipv4_checksum_at {
        put_u16(buf, at, checksum::updated(get_u16(buf, at), addresses));
    }
    if let Some(f) = l4_checksum {
        let c = get_u16(buf, f.at);
        if f.zero_means_none {
            // RFC 768: a UDP checksum of zero means none; it stays zero.
            if c != 0 {
                put_u16(buf, f.at, checksum::udp_final(checksum::updated(c, terms)));
            }
        } else {
            put_u16(buf, f.at, checksum::updated(c, terms));
        }
    }
}

/// Writes `new` over the address `old` at `at`, if it is another address of the same
/// family, and returns its RFC 1624 term (0, no term, if nothing changed).
fn replace_address(buf: &mut [u8], at: usize, old: &IpAddr, new: Option<IpAddr>) -> u32 {
    match new {
        Some(new) if new != *old && new.is_ipv4() == old.is_ipv4() => {
            put_addr(buf, at, &new);
            checksum::replaced(checksum::address_sum(old), checksum::address_sum(&new))
        }
        _ => 0,
    }
}

/// Writes the port `new` at `at` if the header holds it whole (it ends before `end`),
/// and returns its RFC 1624 term (0, no term, if not written).
fn replace_port(buf: &mut [u8], at: usize, end: usize, new: Option<u16>) -> u32 {
    match new {
        Some(new) if at + 2 <= end => {
            let old = get_u16(buf, at);
            put_u16(buf, at, new);
            checksum::replaced(u32::from(old), u32::from(new))
        }
        _ => 0,
    }
}

/// Translates one packet in place. See [`Verdict`] for what each outcome asks of the
/// caller; any verdict but `Translated`, and any error, leaves the packet unchanged.
pub fn translate(table: &TranslationTable, dir: Direction, pkt: &mut [u8]) -> Result<Verdict, PacketError> {
    // Most packets are TCP or UDP without extension headers: translated in one pass
    // over their headers (see [`fast`]). The rest, and anything unusual, come here.
    if let Some(v) = fast::translate(table, dir, pkt) {
        return Ok(v);
    }
    translate_general(table, dir, pkt)
}

/// [`translate`] for every packet: parsed into a [`Layout`] (by etherparse where there
/// are extension headers), then rewritten by [`apply`].
pub(super) fn translate_general(
    table: &TranslationTable,
    dir: Direction,
    pkt: &mut [u8],
) -> Result<Verdict, PacketError> {
    let l = layout(pkt)?;
    if l.fragment == Fragment::HasHeader
        && let Some(t) = Transport::of(l.proto)
    {
        return translate_transport(table, dir, pkt, &l, t);
    }
    if icmp_error_at(pkt, &l)? {
        return translate_icmp_error(table, dir, pkt, &l);
    }
    // Anything else (no ports): only address mappings apply. ICMPv6's checksum covers
    // the pseudo-header (RFC 4443 §2.3) and must follow the addresses; ICMPv4's does
    // not (RFC 792). Other protocols' checksums are not roam's to know. A later
    // fragment's checksum is in the first fragment, which is updated for the same
    // address change: the receiver's reassembled datagram verifies.
    let rw = Rewrite::from_addresses(table, dir, l.src, l.dst);
    if rw.is_noop(&l, 0, 0) {
        return Ok(Verdict::Untouched);
    }
    let csum = (l.proto == ICMPV6 && l.fragment == Fragment::HasHeader && l.l4.len() >= 4).then_some(
        ChecksumField {
            at: l.l4.start + 2,
            zero_means_none: false,
        },
    );
    apply(pkt, &l, &rw.addresses_only(), csum);
    Ok(Verdict::Translated)
}

fn translate_transport(
    table: &TranslationTable,
    dir: Direction,
    pkt: &mut [u8],
    l: &Layout,
    t: Transport,
) -> Result<Verdict, PacketError> {
    let (sp, dp) = transport_ports(pkt, l, t)?;
    let tuple = tuple_of(
        dir,
        t.protocol,
        SocketAddr::new(l.src, sp),
        SocketAddr::new(l.dst, dp),
    );
    let rw = match dir {
        Direction::Egress => match table.flow_by_original(&tuple) {
            Some(m) if m.hold => return Ok(Verdict::Hold),
            Some(m) => Rewrite::between(dir, &m.current),
            // Seed 000 ¶0069, the mirror case: the local stack uses a tuple that a
            // moved flow uses on the wire; translating nothing would merge the two.
            None if table.flow_by_current(&tuple).is_some() => return Ok(Verdict::Conflict(tuple)),
            None => Rewrite::from_addresses(table, dir, l.src, l.dst),
        },
        // Hold gates egress only: what arrives under the current tuple is the peer
        // already using it, and is delivered.
        Direction::Ingress => match table.flow_by_current(&tuple) {
            Some(m) => Rewrite::between(dir, &m.original),
            // Seed 000 ¶0067-¶0069: the tuple is a moved flow's original, which now
            // belongs to whoever holds the peer's old address and port. Untranslated,
            // the packet would enter the migrated connection.
            None if table.flow_by_original(&tuple).is_some() => return Ok(Verdict::Conflict(tuple)),
            None => Rewrite::from_addresses(table, dir, l.src, l.dst),
        },
    };
    if rw.is_noop(l, sp, dp) {
        return Ok(Verdict::Untouched);
    }
    let field = ChecksumField {
        at: l.l4.start + t.checksum_at,
        zero_means_none: t.zero_means_none(),
    };
    apply(pkt, l, &rw, Some(field));
    Ok(Verdict::Translated)
}

/// An ICMP error (RFC 792, RFC 4443): rewrite the quoted packet as the flow it belongs
/// to, the outer addresses that are that flow's, and the checksums. Without this the
/// local stack could not match an error to its socket (and Path MTU Discovery,
/// RFC 1191 / RFC 8201, would break for translated flows).
fn translate_icmp_error(
    table: &TranslationTable,
    dir: Direction,
    pkt: &mut [u8],
    l: &Layout,
) -> Result<Verdict, PacketError> {
    let quote_at = l.l4.start + 8;
    let quote_range = quote_at..l.l4.end;
    let quote = pkt.get(quote_range.clone()).unwrap_or_default();
    let q = layout_quote(quote)?;
    if q.is_v6() != l.is_v6() {
        return Err(PacketError::IcmpQuoteFamily);
    }
    let qdir = dir.reversed();
    let qtransport = quoted_ports(quote, &q);
    // The flow entry the quote belongs to: (its tuple in the quote's form, the form to
    // give it).
    let flow = match qtransport {
        Some((t, sp, dp)) => {
            let qt = tuple_of(
                qdir,
                t.protocol,
                SocketAddr::new(q.src, sp),
                SocketAddr::new(q.dst, dp),
            );
            match dir {
                // We receive an error about a packet we sent: it carries the current tuple.
                Direction::Ingress => table.flow_by_current(&qt).map(|m| (m.current, m.original)),
                // We send an error about a packet we received (and our stack saw it in
                // original form). A held flow's packets wait, errors included.
                Direction::Egress => match table.flow_by_original(&qt) {
                    Some(m) if m.hold => return Ok(Verdict::Hold),
                    Some(m) => Some((m.original, m.current)),
                    None => None,
                },
            }
        }
        None => None,
    };
    let outer_addresses = Rewrite::from_addresses(table, dir, l.src, l.dst);
    let (inner, outer) = match flow {
        Some((from, to)) => {
            // The outer header names the flow's ends where it names them at all (the
            // peer itself may send the error; a router on the path sends most). The
            // outer packet travels `dir`: its source is the remote end on ingress and
            // the local end on egress. Addresses that are not the flow's ends may still
            // have an address mapping.
            let (src_end, dst_end) = match dir {
                Direction::Ingress => ((from.remote, to.remote), (from.local, to.local)),
                Direction::Egress => ((from.local, to.local), (from.remote, to.remote)),
            };
            let outer = Rewrite {
                src: if l.src == src_end.0.ip() {
                    Some(src_end.1.ip())
                } else {
                    outer_addresses.src
                },
                dst: if l.dst == dst_end.0.ip() {
                    Some(dst_end.1.ip())
                } else {
                    outer_addresses.dst
                },
                ..Rewrite::default()
            };
            (Rewrite::between(qdir, &to), outer)
        }
        None => (
            Rewrite::quote_addresses(table, dir, q.src, q.dst),
            outer_addresses,
        ),
    };
    let (qsp, qdp) = qtransport.map(|(_, sp, dp)| (sp, dp)).unwrap_or_default();
    if inner.is_noop(&q, qsp, qdp) && outer.is_noop(l, 0, 0) {
        return Ok(Verdict::Untouched);
    }
    // The ICMP checksum covers the whole quote. Rather than follow each field into it,
    // sum the quote before and after the rewrite (RFC 1624 applied to a region: the
    // quote starts 8 bytes into the ICMP message, an even offset, so its words are the
    // checksum's words).
    let icmp_csum_at = l.l4.start + 2;
    let old_icmp = get_u16(pkt, icmp_csum_at);
    let before = checksum::fold(checksum::sum(&pkt[quote_range.clone()], 0));
    {
        let quote = &mut pkt[quote_range.clone()];
        // The quoted transport checksum is updated only if the quote holds all of it. A
        // quote that ends inside it keeps one byte, whose new value would depend on a
        // carry from the missing byte: left as it is (receivers of ICMP errors do not
        // check quoted transport checksums; the IPv4 header checksum, always whole, is
        // updated).
        let qcsum = qtransport.and_then(|(t, _, _)| {
            let at = q.l4.start + t.checksum_at;
            (at + 2 <= q.l4.end).then_some(ChecksumField {
                at,
                zero_means_none: t.zero_means_none(),
            })
        });
        let inner = if qtransport.is_some() {
            inner
        } else {
            inner.addresses_only()
        };
        apply(quote, &q, &inner, qcsum);
    }
    let after = checksum::fold(checksum::sum(&pkt[quote_range], 0));
    // A region's sum replaced by another is eqn. 3 with m and m' the two sums.
    let mut new_icmp = checksum::update_u16(old_icmp, before, after);
    // ICMPv6 (RFC 4443 §2.3) also covers the pseudo-header: the outer addresses.
    if l.is_v6() {
        for (old, new) in [(l.src, outer.src), (l.dst, outer.dst)] {
            if let Some(new) = new {
                new_icmp = checksum::update_addr(new_icmp, &old, &new);
            }
        }
    }
    apply(pkt, l, &outer.addresses_only(), None);
    put_u16(pkt, icmp_csum_at, new_icmp);
    Ok(Verdict::Translated)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bytes that look like an IP header to a varying degree: a version nibble, IPv4
    /// header lengths (legal or not), length fields that fit the buffer, overshoot it,
    /// undershoot the header or are zero, fragment fields, and protocols / next headers
    /// both upper-layer and extension.
    fn arb_header_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![4 => Just(4u8), 4 => Just(6u8), 1 => 0u8..16],
            0u8..16,
            prop_oneof![Just(0u16), 0u16..80, any::<u16>()],
            prop_oneof![Just(0u16), Just(0x2000), Just(0x4000), any::<u16>()],
            prop_oneof![
                Just(TCP),
                Just(UDP),
                Just(ICMPV4),
                Just(ICMPV6),
                Just(0u8),
                Just(43),
                Just(44),
                Just(51),
                Just(60),
                Just(59),
                any::<u8>()
            ],
            proptest::collection::vec(any::<u8>(), 0..120),
        )
            .prop_map(|(version, ihl, len, frag, proto, mut b)| {
                if let Some(first) = b.first_mut() {
                    *first = (version << 4) | ihl;
                }
                let mut set = |at: usize, v: &[u8]| {
                    if let Some(d) = b.get_mut(at..at + v.len()) {
                        d.copy_from_slice(v);
                    }
                };
                if version == 6 {
                    set(4, &len.to_be_bytes());
                    set(6, &[proto]);
                } else {
                    set(2, &len.to_be_bytes());
                    set(6, &frag.to_be_bytes());
                    set(9, &[proto]);
                }
                b
            })
    }

    /// Whether etherparse would walk an extension header right after the IP header
    /// (the only packets the direct reading leaves to it when they parse).
    fn has_extension_header(pkt: &[u8]) -> bool {
        match pkt.first().map(|b| b >> 4) {
            Some(4) => pkt.get(9) == Some(&51),
            Some(6) => pkt.get(6).is_some_and(|&n| matches!(n, 0 | 43 | 44 | 51 | 60)),
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The layout read straight from the header bytes is etherparse's, strict and
        /// lax, and it declines exactly the packets etherparse refuses or that carry an
        /// extension header.
        #[test]
        fn the_direct_layout_is_etherparses(pkt in arb_header_bytes()) {
            let strict = layout_etherparse(&pkt);
            match direct_layout(&pkt, false) {
                Some(l) => prop_assert_eq!(Ok(l), strict),
                None => prop_assert!(strict.is_err() || has_extension_header(&pkt), "{:?}", strict),
            }
            let lax = layout_lax_etherparse(&pkt);
            match direct_layout(&pkt, true) {
                Some(l) => prop_assert_eq!(Some(l), lax),
                None => prop_assert!(lax.is_none() || has_extension_header(&pkt), "{:?}", lax),
            }
        }
    }

    /// The generated packets of the fast path's tests read the same both ways too.
    #[test]
    fn well_formed_packets_take_the_direct_layout() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        for _ in 0..512 {
            let p = fast::tests::arb_plain()
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .bytes();
            assert_eq!(direct_layout(&p, false).map(Ok), Some(layout_etherparse(&p)));
            assert_eq!(direct_layout(&p, true), layout_lax_etherparse(&p));
        }
    }
}
