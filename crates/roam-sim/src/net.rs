//! Links and routers. A link direction is a pipe: a serialising queue (rate, tail drop
//! after a maximum queueing delay) followed by propagation delay, with seeded loss,
//! reordering and duplication. Routers forward by destination, decrement the TTL, and
//! drop spoofed sources from access subnets (BCP 38), as real access networks do.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use serde::Serialize;

use crate::scenario::LinkParams;
use roam_core::Instant;

/// Index of a node (host or router) in the simulation.
pub type NodeIdx = usize;
/// Index of a link.
pub type LinkIdx = usize;

/// Uniform float in [0, 1) from the simulation's one RNG.
pub fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a link or router dropped a packet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NetCounters {
    pub transmitted: u64,
    pub bytes: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub reordered: u64,
    pub duplicated: u64,
    /// Arrived on a link the host has left.
    pub link_gone: u64,
    pub no_route: u64,
    pub no_neighbour: u64,
    pub ingress_filtered: u64,
    pub ttl_expired: u64,
    pub malformed: u64,
}

/// One direction of a link.
#[derive(Clone, Debug)]
pub struct Pipe {
    pub params: LinkParams,
    busy_until: Instant,
}

/// A scheduled arrival produced by [`Pipe::send`].
pub struct Arrival {
    /// When the packet started onto the wire (after queueing).
    pub tx_start: Instant,
    pub at: Instant,
    pub duplicate_at: Option<Instant>,
}

impl Pipe {
    pub fn new(params: LinkParams) -> Pipe {
        Pipe {
            params,
            busy_until: Instant::ZERO,
        }
    }

    /// Queues a packet of `len` bytes at `now`: when it arrives, or `None` if dropped.
    pub fn send(
        &mut self,
        now: Instant,
        len: usize,
        rng: &mut ChaCha8Rng,
        c: &mut NetCounters,
    ) -> Option<Arrival> {
        let p = self.params;
        let start = self.busy_until.max(now);
        if start - now > p.queue {
            c.queue_drops += 1;
            return None;
        }
        let tx = Duration::from_nanos((len as u64 * 8).saturating_mul(1_000_000_000) / p.rate_bps.max(1));
        self.busy_until = start + tx;
        c.transmitted += 1;
        c.bytes += len as u64;
        // Loss is decided after the queue: a lost packet still used the link.
        if p.loss > 0.0 && unit(rng) < p.loss {
            c.lost += 1;
            return None;
        }
        let mut at = self.busy_until + p.latency;
        if p.reorder > 0.0 && unit(rng) < p.reorder {
            // Held back by up to one latency (at least a millisecond): later packets overtake it.
            let extra = p.latency.max(Duration::from_millis(1)).mul_f64(unit(rng));
            at = at + extra;
            c.reordered += 1;
        }
        let duplicate_at = (p.duplicate > 0.0 && unit(rng) < p.duplicate).then(|| {
            c.duplicated += 1;
            at + Duration::from_micros(10)
        });
        Some(Arrival {
            tx_start: start,
            at,
            duplicate_at,
        })
    }
}

/// A point-to-point link between two node ports.
pub struct Link {
    pub name: String,
    /// (node, port) at each end.
    pub ends: [(NodeIdx, usize); 2],
    /// `pipes[i]` carries packets sent by `ends[i]`.
    pub pipes: [Pipe; 2],
    /// When a host left it. Packets on their way to the host are lost; packets the host
    /// had started transmitting before it left still reach the router, and those queued
    /// behind them are lost.
    pub down_at: Option<Instant>,
    /// Access links are captured to pcap.
    pub access: bool,
}

/// What a router port leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    Core,
    /// An access link to `host` on `subnet`.
    Access {
        subnet: usize,
        host: usize,
    },
}

pub struct RouterPort {
    pub link: LinkIdx,
    pub kind: PortKind,
}

pub struct Router {
    pub name: String,
    pub ports: Vec<RouterPort>,
    /// Subnet number (1-based) -> core port towards it; absent for own subnets.
    pub routes: BTreeMap<usize, usize>,
    /// Subnets (1-based numbers) this router serves.
    pub subnets: Vec<usize>,
}

/// A UDP datagram in an IP packet (for what an attacker injects).
pub fn udp_packet(src: std::net::SocketAddr, dst: std::net::SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let b = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => return None,
    }
    .udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).ok()?;
    Some(out)
}

/// Decrements the TTL (IPv4, fixing the header checksum by RFC 1624) or hop limit.
/// `false` when it reaches zero.
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            if pkt[8] <= 1 {
                return false;
            }
            let old = u16::from_be_bytes([pkt[8], pkt[9]]);
            pkt[8] -= 1;
            let new = u16::from_be_bytes([pkt[8], pkt[9]]);
            let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
            // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')
            let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            pkt[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            true
        }
        Some(6) if pkt.len() >= 40 => {
            if pkt[7] <= 1 {
                return false;
            }
            pkt[7] -= 1;
            true
        }
        _ => false,
    }
}

/// Shortest paths over core links: for every router, the core port towards each other
/// router's subnets (breadth first, ties broken by port order: deterministic).
pub fn compute_routes(routers: &mut [Router], links: &[Link], router_node: &[NodeIdx]) {
    let node_to_router: BTreeMap<NodeIdx, usize> =
        router_node.iter().enumerate().map(|(r, n)| (*n, r)).collect();
    let n = routers.len();
    for src in 0..n {
        // first_port[r] = the port of `src` on the first hop towards router r.
        let mut first_port: Vec<Option<usize>> = vec![None; n];
        let mut seen = vec![false; n];
        seen[src] = true;
        let mut queue = VecDeque::new();
        for (pi, port) in routers[src].ports.iter().enumerate() {
            if port.kind != PortKind::Core {
                continue;
            }
            let l = &links[port.link];
            let other = if l.ends[0].0 == router_node[src] {
                l.ends[1].0
            } else {
                l.ends[0].0
            };
            if let Some(&r) = node_to_router.get(&other)
                && !seen[r]
            {
                seen[r] = true;
                first_port[r] = Some(pi);
                queue.push_back(r);
            }
        }
        while let Some(r) = queue.pop_front() {
            for port in &routers[r].ports {
                if port.kind != PortKind::Core {
                    continue;
                }
                let l = &links[port.link];
                let other = if l.ends[0].0 == router_node[r] {
                    l.ends[1].0
                } else {
                    l.ends[0].0
                };
                if let Some(&o) = node_to_router.get(&other)
                    && !seen[o]
                {
                    seen[o] = true;
                    first_port[o] = first_port[r];
                    queue.push_back(o);
                }
            }
        }
        let mut routes = BTreeMap::new();
        for (r, port) in first_port.iter().enumerate() {
            if let Some(p) = port {
                for s in &routers[r].subnets {
                    routes.insert(*s, *p);
                }
            }
        }
        routers[src].routes = routes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn params(rate_mbps: u64) -> LinkParams {
        LinkParams {
            latency: Duration::from_millis(10),
            rate_bps: rate_mbps * 1_000_000,
            loss: 0.0,
            reorder: 0.0,
            duplicate: 0.0,
            queue: Duration::from_millis(5),
        }
    }

    #[test]
    fn a_pipe_serialises_at_its_rate_then_adds_latency_and_tail_drops() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut c = NetCounters::default();
        let mut p = Pipe::new(params(100));
        // 1250 bytes at 100 Mbit/s = 100 us on the wire.
        let a = p.send(Instant::ZERO, 1250, &mut rng, &mut c).unwrap();
        assert_eq!(a.at, Instant::from_micros(10_100));
        let b = p.send(Instant::ZERO, 1250, &mut rng, &mut c).unwrap();
        assert_eq!(b.at, Instant::from_micros(10_200));
        // Fill 5 ms of queue: the next one is dropped.
        let mut dropped = 0;
        for _ in 0..60 {
            if p.send(Instant::ZERO, 1250, &mut rng, &mut c).is_none() {
                dropped += 1;
            }
        }
        assert!(dropped > 0);
        assert_eq!(c.queue_drops, dropped);
    }

    #[test]
    fn ttl_decrement_keeps_the_ipv4_checksum_valid() {
        let b = etherparse::PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 2, 3], 64).udp(1, 2);
        let mut pkt = Vec::new();
        b.write(&mut pkt, b"hi").unwrap();
        assert!(decrement_ttl(&mut pkt));
        let h = etherparse::Ipv4HeaderSlice::from_slice(&pkt).unwrap().to_header();
        assert_eq!(h.time_to_live, 63);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        pkt[8] = 1;
        assert!(!decrement_ttl(&mut pkt));
    }
}
