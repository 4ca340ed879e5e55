//! Per-packet cost of the packet rewriter, `roam_core::translate::translate` (issue 7:
//! "rewriter <= 50 ns per packet on one core"), next to a baseline measured in the same
//! run.
//!
//!     cargo bench -p roam-core --bench rewrite            # everything, then a ratio table
//!     cargo bench -p roam-core --bench rewrite -- tcp     # a filter, as criterion takes
//!
//! Cases: IPv4 and IPv6 TCP and UDP packets of a translated flow (egress: the local
//! address and port change from original to current; ingress: the reverse), ICMPv4 and
//! ICMPv6 errors quoting a packet of a translated TCP flow (ingress: a router reports a
//! packet we sent; egress: our stack reports one it received), and packets of no flow in
//! the table (the lookup-miss path, `Verdict::Untouched`). The TCP, UDP and miss cases
//! take the rewriter's one-pass path for plain TCP/UDP packets (`translate/fast.rs`),
//! the ICMP errors its general path. Each with a table of 1 and of 10,000 flows; with
//! 10,000, consecutive packets belong to consecutive flows (the benchmark cycles
//! through all of them), so the hash lookups do not always hit the same, cached,
//! bucket.
//!
//! Resetting the packet: `translate` rewrites in place, so every iteration gets a fresh
//! copy of its packet from `iter_batched_ref`. The copies are made outside the timed
//! region, 64 at a time (a batch of small packets stays in L1/L2 cache, as a packet just
//! read from a TUN device or a ring would be).
//!
//! Baseline, per packet shape: the same harness (same batches, same copies, same
//! per-packet call through `black_box`) with a routine that moves the packet's bytes
//! onto themselves (`copy_within`, a memmove of the whole packet: every byte loaded and
//! stored once). It is the least any in-place rewriter pays to touch the packet, and it
//! carries the harness's own per-iteration cost, so `translate / baseline` is roughly
//! "how many packet-touches a translation costs", and `translate - baseline` roughly what
//! the rewriter adds. Translating against an empty table was not chosen as the baseline:
//! that is the lookup-miss path, measured here as a case of its own.
//!
//! Before anything is timed, every case's packet is translated once and its verdict
//! checked, so a benchmark cannot quietly measure the wrong path (this also runs under
//! `cargo test --benches`, where criterion runs each routine once).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::SystemTime;

#[path = "../../roam-wire/benches/support/ratio.rs"]
mod ratio;

use criterion::{BatchSize, BenchmarkId, Criterion};
use etherparse::PacketBuilder;
use roam_core::translate::{
    Direction, FlowMapping, Protocol, TableChange, TranslationTable, Tuple, Verdict, translate,
};

/// Payload bytes in every TCP and UDP packet. The rewriter never reads the payload
/// (checksums are updated incrementally, RFC 1624); it only sets the packet's length.
const PAYLOAD: usize = 32;
/// Room for the largest packet built here (an ICMPv6 error quoting a whole IPv6 TCP
/// packet: 40 + 8 + 40 + 20 + 32 = 140 bytes).
const BUF: usize = 160;
/// Copies made per timed batch (see the module comment).
const BATCH: u64 = 64;
/// The table sizes measured.
const SIZES: [usize; 2] = [1, 10_000];

/// A packet in a fixed buffer: copying one is a plain memcpy, with no allocation.
#[derive(Clone, Copy)]
struct Packet {
    bytes: [u8; BUF],
    len: usize,
}

impl Packet {
    fn new(v: &[u8]) -> Packet {
        let mut bytes = [0u8; BUF];
        bytes[..v.len()].copy_from_slice(v);
        Packet { bytes, len: v.len() }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The addresses of the flows: this host's original and current address, the peer,
/// and a router on the path (the sender of ICMP errors).
struct Addrs {
    original: IpAddr,
    current: IpAddr,
    peer: IpAddr,
    router: IpAddr,
}

fn addrs(f: Family) -> Addrs {
    match f {
        // RFC 5737 documentation ranges.
        Family::V4 => Addrs {
            original: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            current: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20)),
            peer: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 30)),
            router: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        },
        // RFC 3849 documentation prefix.
        Family::V6 => Addrs {
            original: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 10)),
            current: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 20)),
            peer: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 30)),
            router: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1)),
        },
    }
}

const PEER_PORT: u16 = 443;

/// Flow `i`'s local port: originally, and now (the move changes the port too, so every
/// field the rewriter can touch is touched).
fn original_port(i: usize) -> u16 {
    10_000 + i as u16
}

fn current_port(i: usize) -> u16 {
    40_000 + i as u16
}

/// A local port no flow uses (the lookup-miss packets); `i < 10_000`.
fn unknown_port(i: usize) -> u16 {
    25_000 + i as u16
}

fn mapping(f: Family, proto: Protocol, i: usize) -> FlowMapping {
    let a = addrs(f);
    let peer = SocketAddr::new(a.peer, PEER_PORT);
    FlowMapping {
        original: Tuple::new(proto, SocketAddr::new(a.original, original_port(i)), peer),
        current: Tuple::new(proto, SocketAddr::new(a.current, current_port(i)), peer),
        hold: false,
    }
}

fn table(f: Family, proto: Protocol, flows: usize) -> TranslationTable {
    let mut t = TranslationTable::new(0x5eed);
    for i in 0..flows {
        t.apply(&TableChange::InstallFlow(mapping(f, proto, i)))
            .expect("distinct flows install");
    }
    assert_eq!(t.flow_count(), flows);
    t
}

/// A TCP (ACK) or UDP packet from `src` to `dst` with `PAYLOAD` bytes.
fn transport(proto: Protocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family per flow"),
    };
    let payload = [0x5a; PAYLOAD];
    let mut out = Vec::new();
    match proto {
        Protocol::Tcp => ip
            .tcp(src.port(), dst.port(), 1_000_000, 64_240)
            .ack(2_000_000)
            .write(&mut out, &payload),
        Protocol::Udp => ip.udp(src.port(), dst.port()).write(&mut out, &payload),
    }
    .expect("writing to a Vec");
    out
}

/// An ICMP "fragmentation needed" (RFC 792, RFC 1191) or ICMPv6 "packet too big"
/// (RFC 4443 §3.2) from `from` to `to`, quoting all of `quoted` (RFC 1812 §4.3.2.3 and
/// RFC 4443 §2.4(c): as much as fits).
fn icmp_error(from: IpAddr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64)
            .icmpv4_raw(3, 4, [0, 0, 0x05, 0x78])
            .write(&mut out, quoted),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64)
            .icmpv6_raw(2, 0, 1280u32.to_be_bytes())
            .write(&mut out, quoted),
        _ => unreachable!("one family per error"),
    }
    .expect("writing to a Vec");
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Tcp(Family),
    Udp(Family),
    /// An ICMP error about a packet of a TCP flow.
    IcmpError(Family),
    /// A TCP packet of no flow in the table.
    Miss(Family),
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Tcp(Family::V4) => "ipv4_tcp",
            Shape::Tcp(Family::V6) => "ipv6_tcp",
            Shape::Udp(Family::V4) => "ipv4_udp",
            Shape::Udp(Family::V6) => "ipv6_udp",
            Shape::IcmpError(Family::V4) => "icmpv4_error_tcp",
            Shape::IcmpError(Family::V6) => "icmpv6_error_tcp",
            Shape::Miss(Family::V4) => "ipv4_tcp_miss",
            Shape::Miss(Family::V6) => "ipv6_tcp_miss",
        }
    }

    fn family(self) -> Family {
        match self {
            Shape::Tcp(f) | Shape::Udp(f) | Shape::IcmpError(f) | Shape::Miss(f) => f,
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Shape::Udp(_) => Protocol::Udp,
            _ => Protocol::Tcp,
        }
    }

    fn expected(self) -> Verdict {
        match self {
            Shape::Miss(_) => Verdict::Untouched,
            _ => Verdict::Translated,
        }
    }

    /// The packet of flow `i` that crosses the data plane in `dir`, as it arrives there:
    /// egress in original form (from the local stack), ingress in current form (from
    /// the wire).
    fn packet(self, dir: Direction, i: usize) -> Packet {
        let a = addrs(self.family());
        let proto = self.protocol();
        let peer = SocketAddr::new(a.peer, PEER_PORT);
        let original = SocketAddr::new(a.original, original_port(i));
        let current = SocketAddr::new(a.current, current_port(i));
        let bytes = match (self, dir) {
            (Shape::Tcp(_) | Shape::Udp(_), Direction::Egress) => transport(proto, original, peer),
            (Shape::Tcp(_) | Shape::Udp(_), Direction::Ingress) => transport(proto, peer, current),
            // A router reports a packet we sent: it quotes the wire (current) form.
            (Shape::IcmpError(_), Direction::Ingress) => {
                icmp_error(a.router, a.current, &transport(proto, current, peer))
            }
            // Our stack reports a packet it received: it quotes the original form.
            (Shape::IcmpError(_), Direction::Egress) => {
                icmp_error(a.original, a.peer, &transport(proto, peer, original))
            }
            (Shape::Miss(_), Direction::Egress) => {
                transport(proto, SocketAddr::new(a.original, unknown_port(i)), peer)
            }
            (Shape::Miss(_), Direction::Ingress) => {
                transport(proto, peer, SocketAddr::new(a.current, unknown_port(i)))
            }
        };
        Packet::new(&bytes)
    }
}

fn dir_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    }
}

use ratio::Pairs;

fn bench_shape(c: &mut Criterion, shape: Shape, pairs: &mut Pairs) {
    let group_name = format!("rewrite_{}", shape.name());
    let mut group = c.benchmark_group(&group_name);
    let baseline = format!("{group_name}/baseline_memmove");

    let one = shape.packet(Direction::Egress, 0);
    group.bench_function("baseline_memmove", |b| {
        b.iter_batched_ref(
            || one,
            |p| {
                let bytes = black_box(p.bytes_mut());
                bytes.copy_within(.., 0);
                black_box(bytes);
            },
            BatchSize::NumIterations(BATCH),
        )
    });

    for flows in SIZES {
        let table = table(shape.family(), shape.protocol(), flows);
        for dir in [Direction::Egress, Direction::Ingress] {
            // One packet per flow (with 10,000 flows, 10,000 packets, taken in turn).
            let pool: Vec<Packet> = (0..flows).map(|i| shape.packet(dir, i)).collect();
            for p in &pool {
                let mut p = *p;
                assert_eq!(
                    translate(&table, dir, p.bytes_mut()),
                    Ok(shape.expected()),
                    "{} {} with {flows} flows",
                    shape.name(),
                    dir_name(dir)
                );
            }
            let mut next = 0usize;
            group.bench_function(BenchmarkId::new(dir_name(dir), flows), |b| {
                b.iter_batched_ref(
                    || {
                        next = (next + 1) % pool.len();
                        pool[next]
                    },
                    |p| translate(black_box(&table), black_box(dir), black_box(p.bytes_mut())),
                    BatchSize::NumIterations(BATCH),
                )
            });
            pairs.push((
                format!("{group_name}/{}/{flows}", dir_name(dir)),
                baseline.clone(),
            ));
        }
    }
    group.finish();
}

fn main() {
    let started = SystemTime::now();
    let mut c = ratio::criterion();
    let mut pairs = Pairs::new();
    for f in [Family::V4, Family::V6] {
        for shape in [Shape::Tcp(f), Shape::Udp(f), Shape::IcmpError(f), Shape::Miss(f)] {
            bench_shape(&mut c, shape, &mut pairs);
        }
    }
    c.final_summary();
    if ratio::measuring() {
        ratio::ratio_table(
            "rewriter, median ns per packet against the memmove baseline of the same packet",
            &pairs,
            started,
        );
    }
}
