//! Packet captures inside a namespace, and what they tell about a move.
//!
//! A [`Capture`] reads every frame of one interface (both directions) through an
//! AF_PACKET socket with kernel receive timestamps (`SO_TIMESTAMPNS`, wall clock: the
//! same clock as [`crate::topology::MoveTimes`]) on its own thread, keeps a
//! [`PacketRecord`] for each TCP or UDP packet over IPv4 or IPv6 (bounded: past
//! `max_records` it counts instead), and can write every frame, cut to a snap length, to
//! a pcap file.
//!
//! [`handover_gap`] and [`goodput`] turn records into the numbers the lab reports: the
//! longest silence of a stream around a move, and its payload rate before and after.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, TsResolution};

use crate::netns::{LabError, Ns, NsThread, lock};
use crate::sys::{self, PacketOptions, PacketSocket};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// TCP header flags as on the wire (byte 13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFields {
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
}

/// One TCP or UDP packet seen by a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    /// Kernel receive timestamp (wall clock).
    pub time: SystemTime,
    /// Sent by this namespace's stack rather than received by it.
    pub outgoing: bool,
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Transport payload bytes.
    pub payload_len: u32,
    pub tcp: Option<TcpFields>,
    pub frame_len: u32,
}

/// roamd's tunnel port by default (its control port, 4791, + 1): in tunnel mode a moved
/// flow's packets cross the wire whole inside UDP datagrams on it (docs/PROTOCOL.md,
/// "Tunnel mode").
pub const ROAM_TUNNEL_PORT: u16 = 4792;

/// Parses an Ethernet frame into a record; `None` for anything but TCP or UDP over IPv4
/// or IPv6 (or a frame too short for its own headers). A UDP datagram on
/// [`ROAM_TUNNEL_PORT`] that carries an IP packet is recorded as that packet (the
/// stream a tunnel carries is on the wire, one header deeper), with the frame's length.
pub fn parse_frame(time: SystemTime, outgoing: bool, frame: &[u8]) -> Option<PacketRecord> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    packet_record(time, outgoing, &packet, frame.len(), true)
}

fn packet_record(
    time: SystemTime,
    outgoing: bool,
    packet: &SlicedPacket,
    frame_len: usize,
    look_inside: bool,
) -> Option<PacketRecord> {
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match packet.net.as_ref()? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let (protocol, src_port, dst_port, payload_len, tcp) = match packet.transport.as_ref()? {
        TransportSlice::Tcp(t) => {
            let flags = [
                (t.fin(), TcpFlags::FIN),
                (t.syn(), TcpFlags::SYN),
                (t.rst(), TcpFlags::RST),
                (t.psh(), TcpFlags::PSH),
                (t.ack(), TcpFlags::ACK),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |acc, (_, bit)| acc | bit);
            let fields = TcpFields {
                seq: t.sequence_number(),
                ack: t.acknowledgment_number(),
                flags: TcpFlags(flags),
            };
            (
                Protocol::Tcp,
                t.source_port(),
                t.destination_port(),
                t.payload().len(),
                Some(fields),
            )
        }
        TransportSlice::Udp(u) => {
            let tunnel = look_inside
                && ROAM_TUNNEL_PORT == u.destination_port()
                && u.payload().first().is_some_and(|b| matches!(b >> 4, 4 | 6));
            if tunnel && let Ok(inner) = SlicedPacket::from_ip(u.payload()) {
                return packet_record(time, outgoing, &inner, frame_len, false);
            }
            (
                Protocol::Udp,
                u.source_port(),
                u.destination_port(),
                u.payload().len(),
                None,
            )
        }
        _ => return None,
    };
    Some(PacketRecord {
        time,
        outgoing,
        protocol,
        src: SocketAddr::new(src_ip, src_port),
        dst: SocketAddr::new(dst_ip, dst_port),
        payload_len: payload_len as u32,
        tcp,
        frame_len: frame_len as u32,
    })
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Records kept at most; later packets are only counted.
    pub max_records: usize,
    /// Also write every frame here (pcap, nanosecond timestamps).
    pub pcap: Option<PathBuf>,
    /// Bytes of each frame written to the pcap.
    pub snaplen: u32,
    /// The pcap stops growing past this size.
    pub max_pcap_bytes: u64,
}

impl Default for CaptureOptions {
    fn default() -> CaptureOptions {
        CaptureOptions {
            max_records: 500_000,
            pcap: None,
            snaplen: 128,
            max_pcap_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    records: Mutex<Vec<PacketRecord>>,
    frames: AtomicU64,
    over_limit: AtomicU64,
    kernel_drops: AtomicU64,
}

/// What a capture saw, once stopped.
#[derive(Clone, Debug)]
pub struct CaptureSummary {
    pub records: Vec<PacketRecord>,
    /// Every frame read, of any protocol.
    pub frames: u64,
    /// TCP/UDP packets not recorded because `max_records` was reached.
    pub over_limit: u64,
    /// Frames the kernel dropped because the capture did not keep up.
    pub kernel_drops: u64,
    pub pcap: Option<PathBuf>,
}

/// A running capture on one interface.
#[derive(Debug)]
pub struct Capture {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    pcap: Option<PathBuf>,
    thread: Option<NsThread<Result<(), LabError>>>,
}

const IDLE_WAKE: Duration = Duration::from_millis(20);

impl Capture {
    /// Starts capturing on `interface` of `ns`; returns once the socket is bound (every
    /// frame after that is seen).
    pub fn start(ns: &Ns, interface: &str, options: CaptureOptions) -> Result<Capture, LabError> {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pcap = options.pcap.clone();
        let thread = {
            let (shared, stop, interface) = (shared.clone(), stop.clone(), interface.to_owned());
            ns.spawn_thread(&format!("capture {interface}"), move || {
                let socket = PacketSocket::open(
                    &interface,
                    &PacketOptions {
                        ignore_outgoing: false,
                        timestamps: true,
                        receive_buffer: 16 << 20,
                    },
                )
                .map_err(|e| LabError::io(format!("capture on {interface}"), e));
                let writer = match (&socket, &options.pcap) {
                    (Ok(_), Some(path)) => Some(open_pcap(path, options.snaplen)),
                    _ => None,
                }
                .transpose();
                match (socket, writer) {
                    (Ok(socket), Ok(writer)) => {
                        let _ = tx.send(Ok(()));
                        record(&socket, writer, &options, &shared, &stop)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(e));
                        Ok(())
                    }
                }
            })?
        };
        match rx.recv() {
            Ok(Ok(())) => Ok(Capture {
                shared,
                stop,
                pcap,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(thread
                .join()
                .err()
                .unwrap_or(LabError::Invalid("capture thread ended".into()))),
        }
    }

    /// The records so far (a copy).
    pub fn records(&self) -> Vec<PacketRecord> {
        lock(&self.shared.records).clone()
    }

    /// Stops (after reading what is already queued) and hands over everything.
    pub fn stop(mut self) -> Result<CaptureSummary, LabError> {
        self.stop_thread()?;
        Ok(CaptureSummary {
            records: std::mem::take(&mut *lock(&self.shared.records)),
            frames: self.shared.frames.load(Ordering::Relaxed),
            over_limit: self.shared.over_limit.load(Ordering::Relaxed),
            kernel_drops: self.shared.kernel_drops.load(Ordering::Relaxed),
            pcap: self.pcap.clone(),
        })
    }

    fn stop_thread(&mut self) -> Result<(), LabError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join()?,
            None => Ok(()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.stop_thread() {
            tracing::warn!("capture: {e}");
        }
    }
}

fn open_pcap(path: &PathBuf, snaplen: u32) -> Result<PcapWriter<BufWriter<File>>, LabError> {
    let file = File::create(path).map_err(|e| LabError::io(format!("{}", path.display()), e))?;
    // The header's snaplen is a bound on what any record may hold; readers (pcap-file's
    // among them) also hold each frame's original length to it, so it says 64 KiB while
    // the records are cut shorter.
    let header = PcapHeader {
        snaplen: snaplen.max(65_535),
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    PcapWriter::with_header(BufWriter::new(file), header)
        .map_err(|e| LabError::Invalid(format!("pcap {}: {e}", path.display())))
}

fn record(
    socket: &PacketSocket,
    mut pcap: Option<PcapWriter<BufWriter<File>>>,
    options: &CaptureOptions,
    shared: &Shared,
    stop: &AtomicBool,
) -> Result<(), LabError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut batch = Vec::with_capacity(1024);
    let mut pcap_bytes = 24u64;
    loop {
        // Read what is queued even after a stop request: stop() means "up to now".
        let stopping = stop.load(Ordering::Relaxed);
        let mut fds = [sys::pollfd(socket.as_raw_fd())];
        sys::poll(&mut fds, if stopping { Duration::ZERO } else { IDLE_WAKE })
            .map_err(|e| LabError::io("capture poll", e))?;
        loop {
            let received = match socket.recv(&mut buf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(LabError::io("capture receive", e)),
            };
            shared.frames.fetch_add(1, Ordering::Relaxed);
            let len = received.len.min(buf.len());
            let since_epoch = received
                .timestamp
                .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
            let frame = &buf[..len];
            if let Some(writer) = pcap.as_mut() {
                let cut = len.min(options.snaplen as usize);
                if pcap_bytes + 16 + cut as u64 <= options.max_pcap_bytes {
                    let packet = PcapPacket::new(since_epoch, received.len as u32, &frame[..cut]);
                    writer
                        .write_packet(&packet)
                        .map_err(|e| LabError::Invalid(format!("pcap: {e}")))?;
                    pcap_bytes += 16 + cut as u64;
                }
            }
            if let Some(r) = parse_frame(
                UNIX_EPOCH + since_epoch,
                received.pkttype == sys::PACKET_OUTGOING,
                frame,
            ) {
                batch.push(r);
            }
            if batch.len() >= 1024 {
                break;
            }
        }
        if !batch.is_empty() {
            let mut records = lock(&shared.records);
            let room = options.max_records.saturating_sub(records.len());
            let over = batch.len().saturating_sub(room);
            records.extend(batch.drain(..batch.len() - over));
            shared.over_limit.fetch_add(over as u64, Ordering::Relaxed);
            batch.clear();
        }
        if let Ok(drops) = socket.take_drops() {
            shared.kernel_drops.fetch_add(drops, Ordering::Relaxed);
        }
        if stopping {
            break;
        }
    }
    if let Some(writer) = pcap {
        use std::io::Write;
        writer
            .into_writer()
            .flush()
            .map_err(|e| LabError::io("pcap flush", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measurements

/// Which packets a measurement looks at; `None` fields match anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketFilter {
    pub protocol: Option<Protocol>,
    pub src_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_ip: Option<IpAddr>,
    pub dst_port: Option<u16>,
}

impl PacketFilter {
    /// Packets of `protocol` to `dst` (address and port): one direction of a stream,
    /// whatever source address the mover uses.
    pub fn to(protocol: Protocol, dst: SocketAddr) -> PacketFilter {
        PacketFilter {
            protocol: Some(protocol),
            dst_ip: Some(dst.ip()),
            dst_port: Some(dst.port()),
            ..PacketFilter::default()
        }
    }

    pub fn matches(&self, r: &PacketRecord) -> bool {
        self.protocol.is_none_or(|p| p == r.protocol)
            && self.src_ip.is_none_or(|a| a == r.src.ip())
            && self.src_port.is_none_or(|p| p == r.src.port())
            && self.dst_ip.is_none_or(|a| a == r.dst.ip())
            && self.dst_port.is_none_or(|p| p == r.dst.port())
    }
}

/// The longest silence of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub length: Duration,
    /// The last payload packet before the silence.
    pub from: SystemTime,
    /// The first payload packet after it, or the window's end if none came.
    pub to: SystemTime,
    /// A payload packet ended the silence within the window.
    pub recovered: bool,
}

/// The handover gap: among payload-carrying packets matching `filter` within
/// `[moved_at - before, moved_at + after]`, the longest interval between consecutive
/// ones that ends after the move, or from the last one to the window's end when the stream did not end there
/// (no TCP FIN or RST matching `filter` in the window): such a silence is not
/// `recovered`.
/// Packets already on the wire at the move arrive after it, so a stream that died at
/// the move still shows payload after `moved_at`; only the tail tells. The window must
/// lie within the capture. `None` if no payload packet came before the move in the
/// window (the stream was not flowing: nothing to measure).
pub fn handover_gap(
    records: &[PacketRecord],
    filter: &PacketFilter,
    moved_at: SystemTime,
    before: Duration,
    after: Duration,
) -> Option<Gap> {
    let start = moved_at.checked_sub(before).unwrap_or(UNIX_EPOCH);
    let end = moved_at + after;
    let in_window: Vec<&PacketRecord> = records
        .iter()
        .filter(|r| filter.matches(r) && r.time >= start && r.time <= end)
        .collect();
    let mut times: Vec<SystemTime> = in_window
        .iter()
        .filter(|r| r.payload_len > 0)
        .map(|r| r.time)
        .collect();
    times.sort();
    let first = *times.first()?;
    if first > moved_at {
        return None;
    }
    let last = *times.last().expect("not empty");
    let mut gap = Gap {
        length: Duration::ZERO,
        from: first,
        to: first,
        recovered: true,
    };
    for pair in times.windows(2) {
        // A silence that ended before the move is not the move's (a session's own pause
        // during its set-up, say).
        if pair[1] <= moved_at {
            continue;
        }
        let length = pair[1].duration_since(pair[0]).unwrap_or_default();
        if length > gap.length {
            gap = Gap {
                length,
                from: pair[0],
                to: pair[1],
                recovered: true,
            };
        }
    }
    // Any FIN or RST in the window ends the stream there: a retransmission that fills a
    // hole can come after the FIN (SACK recovery at the end of a transfer), so "after
    // the last payload packet" would take a finished stream for a dead one.
    let ended = in_window.iter().any(|r| {
        r.tcp
            .is_some_and(|t| t.flags.has(TcpFlags::FIN) || t.flags.has(TcpFlags::RST))
    });
    let tail = end.duration_since(last).unwrap_or_default();
    if !ended && tail >= gap.length {
        gap = Gap {
            length: tail,
            from: last,
            to: end,
            recovered: false,
        };
    }
    Some(gap)
}

/// Payload delivered over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Goodput {
    pub bytes: u64,
    pub duration: Duration,
}

impl Goodput {
    pub fn bits_per_second(&self) -> f64 {
        if self.duration.is_zero() {
            return 0.0;
        }
        self.bytes as f64 * 8.0 / self.duration.as_secs_f64()
    }
}

/// Payload bytes of packets matching `filter` with timestamps in `[from, to)`, per
/// second. TCP payload counts once: per flow only sequence space not seen before
/// counts, so retransmissions do not, and data that fills a hole does (when it
/// arrives); see [`NewPayload`].
pub fn goodput(records: &[PacketRecord], filter: &PacketFilter, from: SystemTime, to: SystemTime) -> Goodput {
    let mut seen = NewPayload::default();
    let mut bytes = 0u64;
    for r in records.iter().filter(|r| r.payload_len > 0 && filter.matches(r)) {
        if r.time >= to {
            continue;
        }
        let new = seen.count(r);
        if r.time >= from {
            bytes += new;
        }
    }
    Goodput {
        bytes,
        duration: to.duration_since(from).unwrap_or_default(),
    }
}

/// What payload of a capture is new: TCP sequence space per flow not seen before, and
/// every UDP payload byte.
///
/// A TCP flow is its source port and its destination (address and port), not its
/// 4-tuple: after a move the mover's packets reach B's link from its new address, with
/// the same ports and sequence numbers (a moved flow changes its address only), so the
/// segments it retransmits from there are not new. In the lab every sender to a given
/// destination is one host, A, so a source port names one of its flows.
#[derive(Debug, Default)]
pub(crate) struct NewPayload {
    flows: HashMap<(u16, SocketAddr), SequenceSpace>,
}

impl NewPayload {
    /// Counts `r` (records in capture order) and returns how many of its payload bytes
    /// were new.
    pub(crate) fn count(&mut self, r: &PacketRecord) -> u64 {
        match r.tcp {
            Some(tcp) => self
                .flows
                .entry((r.src.port(), r.dst))
                .or_insert_with(|| SequenceSpace::new(tcp.seq))
                .insert(tcp.seq, r.payload_len),
            None => u64::from(r.payload_len),
        }
    }
}

/// The sequence ranges of one TCP flow seen so far, on a 64-bit line: each 32-bit
/// sequence number is placed relative to the previous one (RFC 1982 serial arithmetic:
/// within 2^31 either way), so wrapping and reordering are both fine.
#[derive(Debug)]
struct SequenceSpace {
    last_seq: u32,
    last_abs: i64,
    /// Disjoint, non-adjacent ranges `[start, end)` by start.
    ranges: std::collections::BTreeMap<i64, i64>,
}

impl SequenceSpace {
    fn new(seq: u32) -> SequenceSpace {
        SequenceSpace {
            last_seq: seq,
            last_abs: 0,
            ranges: Default::default(),
        }
    }

    /// Adds a segment and returns how many of its bytes were new.
    fn insert(&mut self, seq: u32, len: u32) -> u64 {
        let start0 = self.last_abs + i64::from(seq.wrapping_sub(self.last_seq) as i32);
        let end0 = start0 + i64::from(len);
        self.last_seq = seq;
        self.last_abs = start0;
        let (mut start, mut end) = (start0, end0);
        let mut covered = 0;
        // Ranges are disjoint and sorted, so their ends ascend too: walking back from the
        // last range starting at or before our end, they touch ours while they end at or
        // after our start.
        let touching: Vec<(i64, i64)> = self
            .ranges
            .range(..=end0)
            .rev()
            .take_while(|(_, e)| **e >= start0)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            covered += (e.min(end0) - s.max(start0)).max(0);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        (end0 - start0 - covered) as u64
    }
}

/// A move seen from one stream: its gap and its goodput either side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HandoverReport {
    pub gap: Option<Gap>,
    /// Over `[moved_at - before, moved_at)`.
    pub before: Goodput,
    /// Over `[moved_at, moved_at + after)`: the gap included.
    pub after: Goodput,
}

/// [`handover_gap`] over `[moved_at - before, moved_at + after]`, and [`goodput`]
/// either side of the move over the same spans.
pub fn handover_report_around(
    records: &[PacketRecord],
    filter: &PacketFilter,
    moved_at: SystemTime,
    before: Duration,
    after: Duration,
) -> HandoverReport {
    let start = moved_at.checked_sub(before).unwrap_or(UNIX_EPOCH);
    HandoverReport {
        gap: handover_gap(records, filter, moved_at, before, after),
        before: goodput(records, filter, start, moved_at),
        after: goodput(records, filter, moved_at, moved_at + after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn frame_v4_tcp(seq: u32, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 201, 1, 2], [10, 201, 3, 2], 64)
            .tcp(40000, 5001, seq, 65535)
            .ack(7)
            .psh();
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn parses_tcp_over_ipv4_and_udp_over_ipv6() {
        let t = UNIX_EPOCH + Duration::from_secs(5);
        let r = parse_frame(t, false, &frame_v4_tcp(1000, b"hello")).unwrap();
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.src, "10.201.1.2:40000".parse().unwrap());
        assert_eq!(r.dst, "10.201.3.2:5001".parse().unwrap());
        assert_eq!(r.payload_len, 5);
        let tcp = r.tcp.unwrap();
        assert_eq!((tcp.seq, tcp.ack), (1000, 7));
        assert!(
            tcp.flags.has(TcpFlags::ACK) && tcp.flags.has(TcpFlags::PSH) && !tcp.flags.has(TcpFlags::SYN)
        );

        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(53, 4791);
        let mut out = Vec::new();
        builder.write(&mut out, &[0u8; 33]).unwrap();
        let r = parse_frame(t, true, &out).unwrap();
        assert_eq!((r.protocol, r.payload_len, r.outgoing), (Protocol::Udp, 33, true));
        assert_eq!(r.dst.port(), 4791);

        assert!(parse_frame(t, false, &[0u8; 10]).is_none());
    }

    #[test]
    fn a_tunnel_datagram_is_recorded_as_the_packet_it_carries() {
        let t = UNIX_EPOCH + Duration::from_secs(5);
        let inner = frame_v4_tcp(1000, b"hello");
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 201, 2, 2], [10, 201, 3, 2], 64)
            .udp(ROAM_TUNNEL_PORT, ROAM_TUNNEL_PORT);
        let mut out = Vec::new();
        builder.write(&mut out, &inner[14..]).unwrap();
        let r = parse_frame(t, false, &out).unwrap();
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.src, "10.201.1.2:40000".parse().unwrap());
        assert_eq!((r.payload_len, r.tcp.unwrap().seq), (5, 1000));
        assert_eq!(r.frame_len as usize, out.len(), "the outer frame's length");
        // Anything else on that port is a UDP datagram like any other.
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 201, 2, 2], [10, 201, 3, 2], 64)
            .udp(9, ROAM_TUNNEL_PORT)
            .write(&mut out, b"\x00not ip")
            .unwrap();
        assert_eq!(parse_frame(t, false, &out).unwrap().protocol, Protocol::Udp);
    }

    fn rec(ms: u64, seq: u32, len: u32) -> PacketRecord {
        PacketRecord {
            time: UNIX_EPOCH + Duration::from_millis(ms),
            outgoing: false,
            protocol: Protocol::Tcp,
            src: "10.201.1.2:40000".parse().unwrap(),
            dst: "10.201.3.2:5001".parse().unwrap(),
            payload_len: len,
            tcp: Some(TcpFields {
                seq,
                ack: 0,
                flags: TcpFlags(TcpFlags::ACK),
            }),
            frame_len: 54 + len,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn gap_is_the_longest_silence_around_the_move() {
        let filter = PacketFilter::to(Protocol::Tcp, "10.201.3.2:5001".parse().unwrap());
        // Packets every 10 ms, silence from 1000 to 1150 ms, the move at 1000 ms.
        let mut records: Vec<_> = (0..=100).map(|i| rec(i * 10, i as u32 * 100, 100)).collect();
        records.extend((0..10).map(|i| rec(1150 + i * 10, 10_100 + i as u32 * 100, 100)));
        // The stream ends with a FIN: the silence after it is no gap.
        let mut fin = rec(1250, 11_100, 0);
        fin.tcp.as_mut().unwrap().flags = TcpFlags(TcpFlags::FIN | TcpFlags::ACK);
        records.push(fin);
        // A pure ACK in the silence does not end it.
        records.push(rec(1050, 0, 0));
        let moved = UNIX_EPOCH + Duration::from_millis(1000);
        let gap = handover_gap(&records, &filter, moved, 500 * MS, 500 * MS).unwrap();
        assert_eq!(gap.length, 150 * MS);
        assert!(gap.recovered);
        assert_eq!(gap.from, moved);

        // Nothing after the move: the silence lasts to the window's end.
        let stalled = &records[..=100];
        let gap = handover_gap(stalled, &filter, moved, 500 * MS, 3000 * MS).unwrap();
        assert_eq!((gap.length, gap.recovered), (3000 * MS, false));
        // What was on the wire still arrives after the move; the stall is what follows.
        let mut draining = records[..=100].to_vec();
        draining.extend((1..=3).map(|i| rec(1000 + i * 5, 10_000 + i as u32 * 100, 100)));
        let gap = handover_gap(&draining, &filter, moved, 500 * MS, 3000 * MS).unwrap();
        assert_eq!((gap.length, gap.recovered), (2985 * MS, false));

        // A hole filled after the FIN (SACK recovery at the end): still a finished
        // stream, not a silence to the window's end.
        let mut late = records.clone();
        late.push(rec(1260, 10_950, 100));
        let gap = handover_gap(&late, &filter, moved, 500 * MS, 3000 * MS).unwrap();
        assert_eq!((gap.length, gap.recovered), (150 * MS, true));

        // A longer pause that ended before the move (a session's set-up, say) is not
        // the move's gap.
        let paused: Vec<_> = records
            .iter()
            .filter(|r| !(600..900).contains(&(r.time.duration_since(UNIX_EPOCH).unwrap().as_millis())))
            .copied()
            .collect();
        let gap = handover_gap(&paused, &filter, moved, 500 * MS, 500 * MS).unwrap();
        assert_eq!((gap.length, gap.from), (150 * MS, moved));

        // Nothing before the move: nothing to measure.
        assert!(handover_gap(&records[101..], &filter, moved, 500 * MS, 500 * MS).is_none());
        // Another destination: nothing matches.
        let other = PacketFilter::to(Protocol::Tcp, "10.201.3.2:80".parse().unwrap());
        assert!(handover_gap(&records, &other, moved, 500 * MS, 500 * MS).is_none());
    }

    #[test]
    fn sequence_space_counts_each_byte_once() {
        let mut space = SequenceSpace::new(u32::MAX - 1000);
        assert_eq!(space.insert(u32::MAX - 1000, 1000), 1000);
        // A hole, then data beyond it, across the wrap.
        assert_eq!(space.insert(999, 1000), 1000);
        assert_eq!(space.insert(999, 1000), 0);
        // Filling the hole [u32::MAX, 999), which is 1000 bytes.
        assert_eq!(space.insert(u32::MAX - 500, 1500), 1000);
        assert_eq!(space.ranges.len(), 1);
    }

    #[test]
    fn goodput_ignores_retransmissions() {
        let filter = PacketFilter::default();
        let records = vec![
            rec(0, 0, 1000),
            rec(100, 1000, 1000),
            rec(200, 1000, 1000), // retransmission
            rec(300, 1500, 1000), // half new
            rec(900, 2500, 1000),
        ];
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        let g = goodput(&records, &filter, at(0), at(1000));
        assert_eq!(g.bytes, 3500);
        assert!((g.bits_per_second() - 28_000.0).abs() < 1e-6);
        // State from before the window still decides what is new inside it.
        assert_eq!(goodput(&records, &filter, at(150), at(1000)).bytes, 1500);
        let report = handover_report_around(&records, &filter, at(500), 500 * MS, 500 * MS);
        assert_eq!((report.before.bytes, report.after.bytes), (2500, 1000));
        assert_eq!(report.gap.unwrap().length, 600 * MS);
    }
}
