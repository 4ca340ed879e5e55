//! The packet rewriter (seed 000 ¶0051-¶0055, FIG. 7): egress packets go from their
//! original tuple to the current one, ingress packets back. Addresses and ports are
//! patched in place and every checksum they enter is updated incrementally (RFC 1624):
//! the IPv4 header checksum, the TCP/UDP checksum (whose pseudo-header holds the
//! addresses, RFC 793 §3.1 / RFC 768 / RFC 8200 §8.1), and for ICMP errors the quoted
//! packet's headers and the ICMP checksum (RFC 792 / RFC 4443 §2.3).
//!
//! Parsing (header lengths, IPv4 options, IPv6 extension headers, fragmentation) is
//! etherparse's; the rewrite is roam's. Nothing allocates. A packet that does not parse
//! gives an error and is left unchanged.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use etherparse::{IpSlice, LaxIpSlice};
use thiserror::Error;

use super::checksum;
use super::table::TranslationTable;
use super::tuple::{Protocol, Side, Tuple};

/// Which way a packet crosses the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the local stack to the wire: original -> current.
    Egress,
    /// From the wire to the local stack: current -> original.
    Ingress,
}

/// What the rewriter did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No entry applies: the packet passes as it is.
    Untouched,
    /// Rewritten in place.
    Translated,
    /// Egress packet of a flow whose move is not yet confirmed: not modified; queue it
    /// (or drop it) and translate again once the entry is released.
    Hold,
    /// The packet's tuple collides with a translated flow (seed 000 ¶0067-¶0069):
    /// ingress, a TCP SYN whose tuple is some entry's original (a new connection from
    /// a host that took over a moved peer's address and port); egress, any packet whose
    /// tuple is some entry's current. Not modified. The tuple is from this host's point
    /// of view.
    Conflict(Tuple),
}

/// The flow a packet belongs to, from this host's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketFlow {
    Transport(Tuple),
    /// An ICMP error about a packet of this flow.
    IcmpError(Tuple),
    Other,
}

/// Why a packet could not be handled. The packet is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("IP header truncated or malformed")]
    IpHeader,
    #[error("IP length field disagrees with the packet")]
    IpLength,
    #[error("{0} header truncated")]
    TransportTruncated(&'static str),
    #[error("ICMP error quotes a packet that is not IP of the same family")]
    IcmpQuote,
}

impl PacketError {
    /// A stable snake_case name for drop counters.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::Empty => "empty",
            PacketError::Version(_) => "bad_ip_version",
            PacketError::IpHeader => "bad_ip_header",
            PacketError::IpLength => "bad_ip_length",
            PacketError::TransportTruncated(_) => "truncated_transport",
            PacketError::IcmpQuote => "bad_icmp_quote",
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
    /// A later fragment: no transport header.
    Later,
}

/// Where things are in an IP packet.
#[derive(Clone, Debug)]
struct Layout {
    src: IpAddr,
    dst: IpAddr,
    /// Offsets of the source and destination addresses.
    src_at: usize,
    dst_at: usize,
    /// Offset of the IPv4 header checksum.
    ipv4_checksum_at: Option<usize>,
    proto: u8,
    /// The IP payload (bounded by the length fields; truncated for quotes).
    l4: Range<usize>,
    fragment: Fragment,
}

impl Layout {
    fn is_v6(&self) -> bool {
        self.src.is_ipv6()
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

fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
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

/// A whole packet, strictly: its length fields must hold.
fn layout(pkt: &[u8]) -> Result<Layout, PacketError> {
    check_version(pkt)?;
    let ip = IpSlice::from_slice(pkt).map_err(|e| match e {
        etherparse::err::ip::SliceError::Len(_) => PacketError::IpLength,
        _ => PacketError::IpHeader,
    })?;
    Ok(match &ip {
        IpSlice::Ipv4(v4) => Layout::v4(pkt, &v4.header(), v4.payload().ip_number.0, v4.payload().payload),
        IpSlice::Ipv6(v6) => Layout::v6(
            pkt,
            &v6.header(),
            v6.extensions().slice(),
            v6.payload().ip_number.0,
            v6.payload().payload,
        ),
    })
}

/// A quoted packet (RFC 792: "Internet Header + 64 bits of Original Data Datagram";
/// RFC 4443: "as much of invoking packet as possible"): its header must be whole, its
/// payload may be cut short.
fn layout_quote(quote: &[u8]) -> Result<Layout, PacketError> {
    check_version(quote).map_err(|_| PacketError::IcmpQuote)?;
    let (ip, _) = LaxIpSlice::from_slice(quote).map_err(|_| PacketError::IcmpQuote)?;
    Ok(match &ip {
        LaxIpSlice::Ipv4(v4) => Layout::v4(
            quote,
            &v4.header(),
            v4.payload().ip_number.0,
            v4.payload().payload,
        ),
        LaxIpSlice::Ipv6(v6) => Layout::v6(
            quote,
            &v6.header(),
            v6.extensions().slice(),
            v6.payload().ip_number.0,
            v6.payload().payload,
        ),
    })
}

/// Offset (within the transport header) of the TCP/UDP checksum, and the header length
/// a whole packet must have.
fn transport_fields(proto: u8) -> Option<(Protocol, usize, usize)> {
    match proto {
        TCP => Some((Protocol::Tcp, 16, 20)),
        UDP => Some((Protocol::Udp, 6, 8)),
        _ => None,
    }
}

fn ports(b: &[u8]) -> Option<(u16, u16)> {
    let p = b.first_chunk::<4>()?;
    Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// A TCP segment that opens a connection: SYN without ACK (RFC 9293 §3.5).
fn is_bare_syn(tcp: &[u8]) -> bool {
    tcp.get(13).is_some_and(|f| f & 0x12 == 0x02)
}

/// ICMP messages that quote the packet that caused them.
fn is_icmp_error(v6: bool, icmp_type: u8) -> bool {
    if v6 {
        // RFC 4443: destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(icmp_type, 1..=4)
    } else {
        // RFC 792: destination unreachable, source quench, redirect, time exceeded,
        // parameter problem.
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

fn tuple_of(dir: Direction, proto: Protocol, src: SocketAddr, dst: SocketAddr) -> Tuple {
    match dir {
        Direction::Egress => Tuple::new(proto, src, dst),
        Direction::Ingress => Tuple::new(proto, dst, src),
    }
}

/// The flow of a packet, without changing anything.
pub fn packet_flow(dir: Direction, pkt: &[u8]) -> Result<PacketFlow, PacketError> {
    let l = layout(pkt)?;
    let l4 = &pkt[l.l4.clone()];
    if l.fragment == Fragment::HasHeader
        && let Some((proto, _, _)) = transport_fields(l.proto)
    {
        let (sp, dp) = ports(l4).ok_or(PacketError::TransportTruncated(if proto == Protocol::Tcp {
            "TCP"
        } else {
            "UDP"
        }))?;
        return Ok(PacketFlow::Transport(tuple_of(
            dir,
            proto,
            SocketAddr::new(l.src, sp),
            SocketAddr::new(l.dst, dp),
        )));
    }
    let icmp = if l.is_v6() { ICMPV6 } else { ICMPV4 };
    if l.proto == icmp
        && l.fragment == Fragment::HasHeader
        && l4.len() >= 8
        && is_icmp_error(l.is_v6(), l4[0])
    {
        let quote = &l4[8..];
        let q = layout_quote(quote)?;
        if q.is_v6() != l.is_v6() {
            return Err(PacketError::IcmpQuote);
        }
        if let (Some((proto, _, _)), Fragment::HasHeader) = (transport_fields(q.proto), q.fragment)
            && let Some((sp, dp)) = ports(&quote[q.l4.clone()])
        {
            // The quote travelled the other way: what we sent, if it arrives; what we
            // received, if we send the error.
            let back = match dir {
                Direction::Egress => Direction::Ingress,
                Direction::Ingress => Direction::Egress,
            };
            return Ok(PacketFlow::IcmpError(tuple_of(
                back,
                proto,
                SocketAddr::new(q.src, sp),
                SocketAddr::new(q.dst, dp),
            )));
        }
    }
    Ok(PacketFlow::Other)
}

/// New values for a packet's addresses and ports (`None`: unchanged).
#[derive(Clone, Copy, Default)]
struct Rewrite {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
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

    /// The rewrite that takes a packet of `from` (src, dst from this host's view in
    /// `dir`) to `to`.
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

    /// Address-only mappings for a packet going `dir` with these addresses.
    fn from_addresses(table: &TranslationTable, dir: Direction, src: IpAddr, dst: IpAddr) -> Rewrite {
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
}

fn ip_bytes(a: &IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => {
            b.copy_from_slice(&v6.octets());
            (b, 16)
        }
    }
}

/// Overwrites the address at `at` and returns the old bytes (for checksum updates).
fn put_addr(pkt: &mut [u8], at: usize, new: &IpAddr) -> ([u8; 16], usize) {
    let (b, n) = ip_bytes(new);
    let mut old = [0u8; 16];
    old[..n].copy_from_slice(&pkt[at..at + n]);
    pkt[at..at + n].copy_from_slice(&b[..n]);
    (old, n)
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Applies `rw` to the IP header and transport header of the packet laid out as `l`
/// inside `buf`. The transport checksum is updated if `l4_checksum` says where it is:
/// `(offset in buf, zero means "no checksum")`; it covers the pseudo-header, so address
/// changes enter it too. Bytes are only written where the layout proved they exist.
fn apply(buf: &mut [u8], l: &Layout, rw: &Rewrite, l4_checksum: Option<(usize, bool)>) {
    let mut l4_sum = l4_checksum.and_then(|(at, zero_absent)| {
        let c = get_u16(buf, at);
        (!(zero_absent && c == 0)).then_some(c)
    });
    let mut ip_sum = l.ipv4_checksum_at.map(|at| get_u16(buf, at));
    for (at, new) in [(l.src_at, rw.src), (l.dst_at, rw.dst)] {
        let Some(new) = new else { continue };
        let (old, n) = put_addr(buf, at, &new);
        let (newb, _) = ip_bytes(&new);
        ip_sum = ip_sum.map(|c| checksum::update(c, &old[..n], &newb[..n]));
        l4_sum = l4_sum.map(|c| checksum::update(c, &old[..n], &newb[..n]));
    }
    let l4 = l.l4.start;
    for (at, new) in [(l4, rw.sport), (l4 + 2, rw.dport)] {
        let Some(new) = new else { continue };
        if at + 2 > l.l4.end {
            continue;
        }
        let old = get_u16(buf, at);
        put_u16(buf, at, new);
        l4_sum = l4_sum.map(|c| checksum::update_u16(c, old, new));
    }
    if let (Some(at), Some(c)) = (l.ipv4_checksum_at, ip_sum) {
        put_u16(buf, at, c);
    }
    if let (Some((at, zero_absent)), Some(mut c)) = (l4_checksum, l4_sum) {
        // RFC 768: a computed UDP checksum of zero is sent as all ones.
        if zero_absent && c == 0 {
            c = 0xffff;
        }
        put_u16(buf, at, c);
    }
}

/// Translates one packet in place. See [`Verdict`] for what each outcome asks of the
/// caller.
pub fn translate(table: &TranslationTable, dir: Direction, pkt: &mut [u8]) -> Result<Verdict, PacketError> {
    let l = layout(pkt)?;
    if l.fragment == Fragment::HasHeader
        && let Some((proto, csum_at, min_len)) = transport_fields(l.proto)
    {
        return translate_transport(table, dir, pkt, &l, proto, csum_at, min_len);
    }
    let icmp = if l.is_v6() { ICMPV6 } else { ICMPV4 };
    if l.proto == icmp && l.fragment == Fragment::HasHeader {
        let l4 = &pkt[l.l4.clone()];
        if l4.len() < 8 {
            return Err(PacketError::TransportTruncated("ICMP"));
        }
        if is_icmp_error(l.is_v6(), l4[0]) {
            return translate_icmp_error(table, dir, pkt, &l);
        }
    }
    // Anything else: only address mappings apply. ICMPv6's checksum covers the
    // pseudo-header; other protocols' checksums (if any) are not roam's to know.
    let rw = Rewrite::from_addresses(table, dir, l.src, l.dst);
    if rw.is_noop(&l, 0, 0) {
        return Ok(Verdict::Untouched);
    }
    let csum = (l.proto == ICMPV6 && l.fragment == Fragment::HasHeader && l.l4.len() >= 4)
        .then_some((l.l4.start + 2, false));
    apply(
        pkt,
        &l,
        &Rewrite {
            sport: None,
            dport: None,
            ..rw
        },
        csum,
    );
    Ok(Verdict::Translated)
}

fn translate_transport(
    table: &TranslationTable,
    dir: Direction,
    pkt: &mut [u8],
    l: &Layout,
    proto: Protocol,
    csum_at: usize,
    min_len: usize,
) -> Result<Verdict, PacketError> {
    let name = if proto == Protocol::Tcp { "TCP" } else { "UDP" };
    let l4 = &pkt[l.l4.clone()];
    // A first fragment may carry less than a whole header; ports and checksum must be there.
    if l4.len() < min_len.min(csum_at + 2) {
        return Err(PacketError::TransportTruncated(name));
    }
    let (sp, dp) = ports(l4).ok_or(PacketError::TransportTruncated(name))?;
    let tuple = tuple_of(dir, proto, SocketAddr::new(l.src, sp), SocketAddr::new(l.dst, dp));
    let rw = match dir {
        Direction::Egress => match table.flow_by_original(&tuple) {
            Some(m) if m.hold => return Ok(Verdict::Hold),
            Some(m) => Rewrite::between(dir, &m.current),
            None if table.flow_by_current(&tuple).is_some() => return Ok(Verdict::Conflict(tuple)),
            None => Rewrite::from_addresses(table, dir, l.src, l.dst),
        },
        Direction::Ingress => match table.flow_by_current(&tuple) {
            Some(m) => Rewrite::between(dir, &m.original),
            // The tuple is a moved flow's original. A SYN is a new connection from
            // whoever holds that address now (seed 000 ¶0067); anything else is the
            // old path draining (seed 001 FIG. 4 step 404: the non-migrator keeps
            // receiving packets with the old address) and is already in original form.
            None if table.flow_by_original(&tuple).is_some() => {
                if proto == Protocol::Tcp && is_bare_syn(l4) {
                    return Ok(Verdict::Conflict(tuple));
                }
                return Ok(Verdict::Untouched);
            }
            None => Rewrite::from_addresses(table, dir, l.src, l.dst),
        },
    };
    if rw.is_noop(l, sp, dp) {
        return Ok(Verdict::Untouched);
    }
    let zero_absent = proto == Protocol::Udp;
    apply(pkt, l, &rw, Some((l.l4.start + csum_at, zero_absent)));
    Ok(Verdict::Translated)
}

/// An ICMP error: rewrite the quoted packet as the flow it belongs to, the outer
/// addresses that are that flow's, and the checksums.
fn translate_icmp_error(
    table: &TranslationTable,
    dir: Direction,
    pkt: &mut [u8],
    l: &Layout,
) -> Result<Verdict, PacketError> {
    let quote_at = l.l4.start + 8;
    let quote = &pkt[quote_at..l.l4.end];
    let q = layout_quote(quote)?;
    if q.is_v6() != l.is_v6() {
        return Err(PacketError::IcmpQuote);
    }
    // The quoted packet went the other way.
    let qdir = match dir {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    };
    let qtransport = match (transport_fields(q.proto), q.fragment) {
        (Some((proto, csum_at, _)), Fragment::HasHeader) => {
            ports(&quote[q.l4.clone()]).map(|p| (proto, csum_at, p))
        }
        _ => None,
    };
    // (rewrite of the quote, outer rewrite)
    let (inner, outer) = match qtransport {
        Some((proto, _, (sp, dp))) => {
            let qt = tuple_of(
                qdir,
                proto,
                SocketAddr::new(q.src, sp),
                SocketAddr::new(q.dst, dp),
            );
            let found = match dir {
                // We receive an error about a packet we sent: it carries current tuples.
                Direction::Ingress => table.flow_by_current(&qt).map(|m| (m.original, m.current)),
                // We send an error about a packet we received: it carries original tuples.
                Direction::Egress => match table.flow_by_original(&qt) {
                    Some(m) if m.hold => return Ok(Verdict::Hold),
                    Some(m) => Some((m.current, m.original)),
                    None => None,
                },
            };
            match found {
                Some((to, from)) => {
                    let inner = Rewrite::between(qdir, &to);
                    // The outer header names the flow's ends where it names them at all
                    // (the peer itself may send the error; a router sends most).
                    let map = |a: IpAddr| {
                        if a == from.local.ip() {
                            Some(to.local.ip())
                        } else if a == from.remote.ip() {
                            Some(to.remote.ip())
                        } else {
                            None
                        }
                    };
                    (
                        inner,
                        Rewrite {
                            src: map(l.src),
                            dst: map(l.dst),
                            ..Rewrite::default()
                        },
                    )
                }
                None => (
                    Rewrite::from_addresses(table, qdir, q.src, q.dst),
                    Rewrite::from_addresses(table, dir, l.src, l.dst),
                ),
            }
        }
        None => (
            Rewrite::from_addresses(table, qdir, q.src, q.dst),
            Rewrite::from_addresses(table, dir, l.src, l.dst),
        ),
    };
    let (qsp, qdp) = qtransport.map(|(_, _, p)| p).unwrap_or((0, 0));
    if inner.is_noop(&q, qsp, qdp) && outer.is_noop(l, 0, 0) {
        return Ok(Verdict::Untouched);
    }
    let icmp_csum_at = l.l4.start + 2;
    let old_icmp = get_u16(pkt, icmp_csum_at);
    // The ICMP checksum covers the quote: sum the quote before and after (RFC 1624
    // applied to a region; the quote starts 8 bytes into the ICMP message, an even
    // offset, so word alignment is the same).
    let before = checksum::sum(&pkt[quote_at..l.l4.end], 0);
    {
        let quote = &mut pkt[quote_at..l.l4.end];
        // A quote that ends inside the transport checksum keeps one byte of it: that
        // byte's new value depends on a carry from the missing byte, so it is left as
        // it is (receivers of ICMP errors do not check quoted transport checksums).
        let qcsum = qtransport.and_then(|(proto, csum_at, _)| {
            (q.l4.start + csum_at + 2 <= q.l4.end).then_some((q.l4.start + csum_at, proto == Protocol::Udp))
        });
        let inner = Rewrite {
            sport: inner.sport.filter(|_| qtransport.is_some()),
            dport: inner.dport.filter(|_| qtransport.is_some()),
            ..inner
        };
        apply(quote, &q, &inner, qcsum);
    }
    let after = checksum::sum(&pkt[quote_at..l.l4.end], 0);
    let mut icmp_sum =
        u32::from(!old_icmp) + u32::from(!checksum::fold(before)) + u32::from(checksum::fold(after));
    // ICMPv6 (RFC 4443 §2.3) also covers the pseudo-header: the outer addresses.
    if l.is_v6() {
        for (old, new) in [(l.src, outer.src), (l.dst, outer.dst)] {
            if let Some(new) = new {
                let (o, n) = ip_bytes(&old);
                let (nb, _) = ip_bytes(&new);
                icmp_sum += u32::from(!checksum::fold(checksum::sum(&o[..n], 0)))
                    + u32::from(checksum::fold(checksum::sum(&nb[..n], 0)));
            }
        }
    }
    let new_icmp = !checksum::fold(icmp_sum);
    apply(
        pkt,
        l,
        &Rewrite {
            sport: None,
            dport: None,
            ..outer
        },
        None,
    );
    put_u16(pkt, icmp_csum_at, new_icmp);
    Ok(Verdict::Translated)
}
