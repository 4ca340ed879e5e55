//! The simulation engine: virtual time, one seeded RNG, an event queue, and the step
//! that drives each host's stack, applications, data plane and roam endpoint.
//!
//! Determinism: every random choice comes from one `ChaCha8Rng` seeded by the run's
//! seed; every collection iterated to make a decision is ordered. The same scenario,
//! family and seed give the same bytes on the wire, the same report.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use roam_core::plane::ip_addrs;
use roam_core::security::{StaticKey, Trust};
use roam_core::{Config, Endpoint, Event, Input, Instant};
use roam_wire::NodeId;
use sha2::{Digest, Sha256};

use crate::apps::{StepContext, TcpApp, UdpApp};
use crate::host::{SimHost, smol_now, to_smol};
use crate::net::{self, Link, LinkIdx, NetCounters, NodeIdx, Pipe, PortKind, Router, RouterPort};
use crate::report::{self, Report};
use crate::scenario::{Action, Family, Scenario, Traffic, Trigger};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub family: Family,
    pub seed: u64,
    /// Write every packet on the hosts' access links to this pcap file.
    pub pcap: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot write the capture {path}: {source}")]
    Pcap {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("scenario {0} does not run over {1}")]
    Family(String, Family),
}

/// A simulated host's long-term key, derived from its name (so runs replay).
pub fn key_for(name: &str) -> StaticKey {
    let mut h = Sha256::new();
    h.update(b"roam simulator host key ");
    h.update(name.as_bytes());
    StaticKey::from_bytes(h.finalize().into())
}

/// A simulated host's identifier cookie (from its key, as on a real host).
pub fn node_id_for(name: &str) -> NodeId {
    key_for(name).public().node_id()
}

pub(crate) enum Ev {
    /// A packet reaches the far end of `link` (sent by `ends[from]`, starting at `tx_start`).
    Arrive {
        link: LinkIdx,
        from: usize,
        tx_start: Instant,
        pkt: Vec<u8>,
    },
    /// Scenario event number `i` (time-triggered).
    Action(usize),
    Attach {
        host: usize,
        subnet: usize,
        id: u8,
        move_index: Option<usize>,
    },
    /// Something on this host is due (a phase starts).
    Wake(usize),
    /// An attacker puts this packet on its access link.
    Inject { host: usize, pkt: Vec<u8> },
}

/// One move as it happened, for the report.
pub(crate) struct MoveRecord {
    pub at: Instant,
    pub host: usize,
    pub from: Option<IpAddr>,
    pub to: Option<IpAddr>,
    pub attached_at: Option<Instant>,
    pub confirmed: Option<(Instant, Duration, u32)>,
}

pub(crate) struct Sim<'s> {
    pub sc: &'s Scenario,
    pub opts: RunOptions,
    pub now: Instant,
    pub(crate) rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Ev>,
    next_ev: u64,
    pub hosts: Vec<SimHost>,
    routers: Vec<Router>,
    router_node: Vec<NodeIdx>,
    links: Vec<Link>,
    pub net: NetCounters,
    pcap: Option<PcapWriter<BufWriter<File>>>,
    pub tcp: Vec<TcpApp>,
    pub udp: Vec<UdpApp>,
    pub timeline: Vec<(Instant, String, String)>,
    pub moves: Vec<MoveRecord>,
    fired: Vec<bool>,
    pub failures: Vec<String>,
    pub steps: u64,
    /// Each roam host's configuration, for a restart.
    configs: Vec<Option<Config>>,
    /// What an on-path attacker saw: the last control datagram (UDP payload) each host
    /// sent each address, by message type, and when; and the last sealed one.
    pub(crate) captured: BTreeMap<(usize, IpAddr, u8), (Instant, Vec<u8>)>,
    pub(crate) last_sealed: BTreeMap<(usize, IpAddr), Vec<u8>>,
}

/// Upper bound on engine iterations: a run that needs more is livelocked.
const MAX_STEPS: u64 = 50_000_000;

impl<'s> Sim<'s> {
    pub fn new(sc: &'s Scenario, opts: RunOptions) -> Result<Sim<'s>, SimError> {
        if !sc.families.contains(&opts.family) {
            return Err(SimError::Family(sc.name.clone(), opts.family));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let family = opts.family;
        // Every roam host trusts the keys of the roam hosts the scenario says it trusts
        // (by default, all of them).
        let configs: Vec<Option<Config>> = sc
            .hosts
            .iter()
            .map(|h| {
                h.roam.then(|| {
                    let trusted = sc
                        .hosts
                        .iter()
                        .filter(|o| o.roam && h.trusts.as_ref().is_none_or(|t| t.contains(&o.name)))
                        .map(|o| (key_for(&o.name).public(), o.name.clone()));
                    let mut cfg = Config::new(key_for(&h.name), Trust::keys(trusted));
                    cfg.move_message = h.move_message;
                    if let Some(r) = h.rekey_after {
                        cfg.rekey_after = r;
                    }
                    cfg
                })
            })
            .collect();
        let hosts: Vec<SimHost> = sc
            .hosts
            .iter()
            .zip(&configs)
            .map(|(h, cfg)| {
                let host_seed = rng.next_u64();
                let agent = cfg.clone().map(|cfg| {
                    let ep_rng = ChaCha8Rng::seed_from_u64(rng.next_u64());
                    Endpoint::new(cfg, Box::new(ep_rng))
                });
                SimHost::new(
                    h.name.clone(),
                    family,
                    host_seed,
                    agent,
                    roam_wire::DEFAULT_CONTROL_PORT,
                )
            })
            .collect();
        let h = hosts.len();
        let mut routers: Vec<Router> = sc
            .routers
            .iter()
            .enumerate()
            .map(|(r, name)| Router {
                name: name.clone(),
                ports: Vec::new(),
                routes: BTreeMap::new(),
                subnets: sc
                    .subnets
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.router == r)
                    .map(|(i, _)| i + 1)
                    .collect(),
            })
            .collect();
        let router_node: Vec<NodeIdx> = (0..routers.len()).map(|r| h + r).collect();
        let mut links = Vec::new();
        for c in &sc.core_links {
            let l = links.len();
            let pa = routers[c.a].ports.len();
            let pb = routers[c.b].ports.len();
            routers[c.a].ports.push(RouterPort {
                link: l,
                kind: PortKind::Core,
            });
            routers[c.b].ports.push(RouterPort {
                link: l,
                kind: PortKind::Core,
            });
            links.push(Link {
                name: format!("{}-{}", sc.routers[c.a], sc.routers[c.b]),
                ends: [(router_node[c.a], pa), (router_node[c.b], pb)],
                pipes: [Pipe::new(c.link), Pipe::new(c.link)],
                down_at: None,
                access: false,
            });
        }
        net::compute_routes(&mut routers, &links, &router_node);
        let pcap = match &opts.pcap {
            None => None,
            Some(path) => {
                let file = File::create(path).map_err(|e| SimError::Pcap {
                    path: path.clone(),
                    source: pcap_file::PcapError::IoError(e),
                })?;
                let header = PcapHeader {
                    datalink: DataLink::RAW,
                    ..Default::default()
                };
                Some(
                    PcapWriter::with_header(BufWriter::new(file), header).map_err(|e| SimError::Pcap {
                        path: path.clone(),
                        source: e,
                    })?,
                )
            }
        };
        let tcp = sc
            .tcp
            .iter()
            .enumerate()
            .map(|(i, t)| TcpApp::new(t.clone(), opts.seed ^ (i as u64) << 8))
            .collect();
        let udp = sc
            .udp
            .iter()
            .enumerate()
            .map(|(i, u)| UdpApp::new(u.clone(), opts.seed ^ (i as u64 + 100) << 8))
            .collect();
        Ok(Sim {
            sc,
            opts,
            now: Instant::ZERO,
            rng,
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            next_ev: 0,
            hosts,
            routers,
            router_node,
            links,
            net: NetCounters::default(),
            pcap,
            tcp,
            udp,
            timeline: Vec::new(),
            moves: Vec::new(),
            fired: vec![false; sc.events.len()],
            failures: Vec::new(),
            steps: 0,
            configs,
            captured: BTreeMap::new(),
            last_sealed: BTreeMap::new(),
        })
    }

    pub(crate) fn family(&self) -> Family {
        self.opts.family
    }

    pub(crate) fn schedule(&mut self, at: Instant, ev: Ev) {
        let n = self.next_ev;
        self.next_ev += 1;
        self.queue.push(Reverse((at, n)));
        self.pending.insert(n, ev);
    }

    pub(crate) fn note(&mut self, host: usize, what: String) {
        self.timeline
            .push((self.now, self.sc.hosts[host].name.clone(), what));
    }

    /// Runs to completion (every flow done, plus a grace period for closing
    /// handshakes) or to the scenario's duration.
    pub fn run(&mut self) -> Result<(), SimError> {
        let start = Instant::ZERO;
        for (i, h) in self.sc.hosts.iter().enumerate() {
            if let Some(s) = h.subnet {
                self.schedule(
                    start,
                    Ev::Attach {
                        host: i,
                        subnet: s,
                        id: h.id,
                        move_index: None,
                    },
                );
            }
        }
        for i in 0..self.tcp.len() {
            let server = self.tcp[i].spec.server;
            self.tcp[i].listen(&mut self.hosts[server].sockets);
            let client = self.tcp[i].spec.client;
            let times: Vec<Duration> = std::iter::once(self.tcp[i].spec.start)
                .chain(self.tcp[i].phase_times().map(|p| p.at))
                .collect();
            for t in times {
                self.schedule(start + t, Ev::Wake(client));
                self.schedule(start + t, Ev::Wake(server));
            }
        }
        for i in 0..self.udp.len() {
            let r = self.udp[i].receiver;
            self.udp[i].bind_receiver(&mut self.hosts[r].sockets);
            let s = self.udp[i].sender;
            let at = start + self.udp[i].spec.start;
            self.schedule(at, Ev::Wake(s));
        }
        for (i, e) in self.sc.events.iter().enumerate() {
            if let Trigger::At(t) = e.trigger {
                self.schedule(start + t, Ev::Action(i));
            }
        }
        let mut end = start + self.sc.duration;
        let mut done_at: Option<Instant> = None;
        let mut dirty: BTreeSet<usize> = BTreeSet::new();
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.failures
                    .push(format!("livelock: {MAX_STEPS} steps at {}", self.now));
                break;
            }
            let all_done = self.tcp.iter().all(|a| a.done()) && self.udp.iter().all(|a| a.done());
            if all_done {
                // A grace period for closing handshakes and terminations, then stop.
                let d = *done_at.get_or_insert(self.now);
                end = end.min(d + Duration::from_millis(500));
                if self.now >= end {
                    break;
                }
            }
            let next_q = self.queue.peek().map(|Reverse((t, _))| *t);
            let wakes: Vec<Option<Instant>> = (0..self.hosts.len()).map(|h| self.next_wake(h)).collect();
            let next_h = wakes.iter().flatten().min().copied();
            let next = match (next_q, next_h, dirty.is_empty()) {
                (_, _, false) => self.now,
                (Some(a), Some(b), _) => a.min(b),
                (Some(a), None, _) | (None, Some(a), _) => a,
                (None, None, _) => {
                    if all_done {
                        break;
                    }
                    self.now = self.now + Duration::from_millis(1);
                    if self.now > end {
                        break;
                    }
                    continue;
                }
            };
            if next > end {
                self.now = end;
                break;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((t, n))) = self.queue.peek().copied() {
                if t > self.now {
                    break;
                }
                self.queue.pop();
                if let Some(ev) = self.pending.remove(&n) {
                    self.process(ev, &mut dirty);
                }
            }
            for (h, wake) in wakes.iter().enumerate() {
                if wake.is_some_and(|w| w <= self.now) {
                    dirty.insert(h);
                }
            }
            while let Some(h) = dirty.pop_first() {
                self.step_host(h, &mut dirty);
            }
            self.check_triggers(&mut dirty);
        }
        if let Some(w) = self.pcap.take() {
            let path = self.opts.pcap.clone().unwrap_or_default();
            std::io::Write::flush(&mut w.into_writer()).map_err(|e| SimError::Pcap {
                path,
                source: pcap_file::PcapError::IoError(e),
            })?;
        }
        Ok(())
    }

    /// When host `h` next has something to do (never earlier than a microsecond from now).
    fn next_wake(&mut self, h: usize) -> Option<Instant> {
        let now = self.now;
        let host = &mut self.hosts[h];
        let mut wake = host
            .iface
            .poll_at(smol_now(now), &host.sockets)
            .map(|t| Instant::from_micros(t.total_micros().max(0) as u64));
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        consider(host.agent.as_ref().and_then(|a| a.endpoint.poll_timeout()));
        for u in &self.udp {
            if u.sender == h && !u.done() {
                consider(u.deadline());
            }
        }
        wake.map(|w| w.max(now + Duration::from_micros(1)))
    }

    fn process(&mut self, ev: Ev, dirty: &mut BTreeSet<usize>) {
        match ev {
            Ev::Arrive {
                link,
                from,
                tx_start,
                pkt,
            } => {
                let l = &self.links[link];
                let (node, port) = l.ends[1 - from];
                let to_host = node < self.hosts.len();
                if let Some(down) = l.down_at
                    && (to_host || tx_start >= down)
                {
                    self.net.link_gone += 1;
                    return;
                }
                if l.access && to_host {
                    self.capture(&pkt);
                }
                if node < self.hosts.len() {
                    let host = &mut self.hosts[node];
                    host.received_packets += 1;
                    host.received_bytes += pkt.len() as u64;
                    // A silent host runs nothing: it only counts.
                    if !self.sc.hosts[node].silent {
                        host.inbox.push_back(pkt);
                        dirty.insert(node);
                    }
                } else {
                    self.forward(node - self.hosts.len(), port, pkt);
                }
            }
            Ev::Action(i) => self.act(i, dirty),
            Ev::Attach {
                host,
                subnet,
                id,
                move_index,
            } => self.attach(host, subnet, id, move_index, dirty),
            Ev::Wake(h) => {
                dirty.insert(h);
            }
            Ev::Inject { host, pkt } => {
                if let Some(link) = self.hosts[host].link {
                    self.transmit(link, 0, pkt);
                }
            }
        }
    }

    fn check_triggers(&mut self, dirty: &mut BTreeSet<usize>) {
        for i in 0..self.sc.events.len() {
            if self.fired[i] {
                continue;
            }
            if let Trigger::Received { flow, bytes } = &self.sc.events[i].trigger {
                let got: u64 = self
                    .tcp
                    .iter()
                    .filter(|a| &a.spec.name == flow)
                    .map(|a| a.ends[0].received.bytes + a.ends[1].received.bytes)
                    .chain(
                        self.udp
                            .iter()
                            .filter(|a| &a.spec.name == flow)
                            .map(|a| a.received.bytes),
                    )
                    .sum();
                if got >= *bytes {
                    self.act(i, dirty);
                }
            }
        }
    }

    fn act(&mut self, i: usize, dirty: &mut BTreeSet<usize>) {
        if self.fired[i] {
            return;
        }
        self.fired[i] = true;
        match self.sc.events[i].action.clone() {
            Action::Move {
                host,
                to,
                id,
                dhcp_delay,
            } => {
                let from = self.hosts[host].addr;
                self.moves.push(MoveRecord {
                    at: self.now,
                    host,
                    from,
                    to: None,
                    attached_at: None,
                    confirmed: None,
                });
                let mi = self.moves.len() - 1;
                self.note(
                    host,
                    format!("moves from {} to {}", fmt_addr(from), self.sc.subnets[to].name),
                );
                self.detach(host);
                let id = id.unwrap_or(self.sc.hosts[host].id);
                if dhcp_delay.is_zero() {
                    self.attach(host, to, id, Some(mi), dirty);
                } else {
                    self.schedule(
                        self.now + dhcp_delay,
                        Ev::Attach {
                            host,
                            subnet: to,
                            id,
                            move_index: Some(mi),
                        },
                    );
                }
                dirty.insert(host);
            }
            Action::Attach { host, subnet, id } => {
                let id = id.unwrap_or(self.sc.hosts[host].id);
                self.attach(host, subnet, id, None, dirty);
            }
            Action::Detach { host } => {
                self.note(host, "leaves its subnet".into());
                self.detach(host);
                dirty.insert(host);
            }
            Action::Restart { host } => {
                let Some(cfg) = self.configs[host].clone() else {
                    return;
                };
                self.note(host, "roam restarts: sessions, peers and flows forgotten".into());
                let ep = Endpoint::new(cfg, Box::new(ChaCha8Rng::seed_from_u64(self.rng.next_u64())));
                let now = self.now;
                self.hosts[host].restart(now, ep);
                dirty.insert(host);
            }
            Action::Attack(a) => self.attack(a),
        }
    }

    fn detach(&mut self, h: usize) {
        if let Some(l) = self.hosts[h].link.take() {
            self.links[l].down_at = Some(self.now);
        }
        let now = self.now;
        self.hosts[h].remove_address(now);
    }

    fn attach(
        &mut self,
        h: usize,
        subnet: usize,
        id: u8,
        move_index: Option<usize>,
        dirty: &mut BTreeSet<usize>,
    ) {
        if self.hosts[h].link.is_some() {
            self.detach(h);
        }
        let n = subnet + 1;
        let addr = self.family().addr(n, id);
        if self.hosts.iter().any(|o| o.addr == Some(addr)) {
            self.failures.push(format!(
                "{}: {addr} is taken on {}",
                self.sc.hosts[h].name, self.sc.subnets[subnet].name
            ));
            return;
        }
        let r = self.sc.subnets[subnet].router;
        let l = self.links.len();
        let port = self.routers[r].ports.len();
        self.routers[r].ports.push(RouterPort {
            link: l,
            kind: PortKind::Access { subnet: n, host: h },
        });
        let params = self.sc.subnets[subnet].link;
        self.links.push(Link {
            name: format!("{}@{}", self.sc.hosts[h].name, self.sc.subnets[subnet].name),
            ends: [(h, 0), (self.router_node[r], port)],
            pipes: [Pipe::new(params), Pipe::new(params)],
            down_at: None,
            access: true,
        });
        let router_addr = self.family().addr(n, 1);
        let now = self.now;
        self.hosts[h].link = Some(l);
        self.hosts[h].set_address(now, n, addr, router_addr);
        if let Some(mi) = move_index {
            self.moves[mi].to = Some(addr);
            self.moves[mi].attached_at = Some(now);
        }
        self.note(h, format!("has {addr} on {}", self.sc.subnets[subnet].name));
        dirty.insert(h);
    }

    /// A router forwards a packet that arrived on `in_port`.
    fn forward(&mut self, r: usize, in_port: usize, mut pkt: Vec<u8>) {
        let family = self.family();
        let Some((src, dst)) = ip_addrs(&pkt) else {
            self.net.malformed += 1;
            return;
        };
        if let PortKind::Access { subnet, .. } = self.routers[r].ports[in_port].kind
            && self.sc.subnets[subnet - 1].ingress_filter
            && family.subnet_of(src) != Some(subnet)
        {
            // BCP 38: a packet from an access subnet must come from that subnet.
            self.net.ingress_filtered += 1;
            tracing::debug!(target: "roam_sim::wire", router = %self.routers[r].name, "ingress filter drops {}", describe_packet(&pkt));
            return;
        }
        if !net::decrement_ttl(&mut pkt) {
            self.net.ttl_expired += 1;
            return;
        }
        let Some(dst_subnet) = family.subnet_of(dst) else {
            self.net.no_route += 1;
            return;
        };
        let out = if self.routers[r].subnets.contains(&dst_subnet) {
            // Neighbour resolution: the host on that subnet that holds the address now.
            self.routers[r].ports.iter().position(|p| match p.kind {
                PortKind::Access { subnet, host } => {
                    subnet == dst_subnet
                        && self.links[p.link].down_at.is_none()
                        && self.hosts[host].addr == Some(dst)
                }
                PortKind::Core => false,
            })
        } else {
            self.routers[r].routes.get(&dst_subnet).copied()
        };
        let Some(out) = out else {
            if self.routers[r].subnets.contains(&dst_subnet) {
                self.net.no_neighbour += 1;
            } else {
                self.net.no_route += 1;
            }
            return;
        };
        let link = self.routers[r].ports[out].link;
        let end = usize::from(self.links[link].ends[0].0 != self.router_node[r]);
        self.transmit(link, end, pkt);
    }

    pub(crate) fn transmit(&mut self, link: LinkIdx, end: usize, pkt: Vec<u8>) {
        let now = self.now;
        let l = &mut self.links[link];
        let Some(arr) = l.pipes[end].send(now, pkt.len(), &mut self.rng, &mut self.net) else {
            tracing::trace!(target: "roam_sim::wire", link = %l.name, %now, "{}: lost or queue-dropped", describe_packet(&pkt));
            return;
        };
        tracing::trace!(target: "roam_sim::wire", link = %l.name, %now, "{}", describe_packet(&pkt));
        if l.access && end == 0 {
            self.capture(&pkt);
        }
        let tx_start = arr.tx_start;
        if let Some(d) = arr.duplicate_at {
            self.schedule(
                d,
                Ev::Arrive {
                    link,
                    from: end,
                    tx_start,
                    pkt: pkt.clone(),
                },
            );
        }
        self.schedule(
            arr.at,
            Ev::Arrive {
                link,
                from: end,
                tx_start,
                pkt,
            },
        );
    }

    fn capture(&mut self, pkt: &[u8]) {
        if let Some(w) = &mut self.pcap {
            let ts = Duration::from_nanos(self.now.as_nanos());
            let _ = w.write_packet(&PcapPacket::new(ts, pkt.len() as u32, pkt));
        }
    }

    /// Scenario loss rules for what host `h` sends.
    fn lost_by_rule(&mut self, h: usize, pkt: &[u8]) -> bool {
        let elapsed = self.now - Instant::ZERO;
        let control = is_control(pkt);
        for l in &self.sc.losses {
            let applies = (l.hosts.is_empty() || l.hosts.contains(&h))
                && elapsed >= l.from
                && elapsed < l.until
                && match l.traffic {
                    Traffic::Control => control,
                    Traffic::Data => !control,
                    Traffic::All => true,
                };
            if applies && net::unit(&mut self.rng) < l.probability {
                self.net.lost += 1;
                tracing::trace!(target: "roam_sim::wire", host = %self.hosts[h].name, now = %self.now, "{}: lost by a loss rule", describe_packet(pkt));
                return true;
            }
        }
        false
    }

    /// Drives host `h` at the current time until it has nothing more to do now.
    fn step_host(&mut self, h: usize, dirty: &mut BTreeSet<usize>) {
        let now = self.now;
        let elapsed = now - Instant::ZERO;
        for _round in 0..64 {
            let mut progress = self.hosts[h].ingress(now);
            progress |= self.hosts[h].poll_stack(now);
            progress |= self.step_apps(h, now, elapsed);
            progress |= self.hosts[h].poll_stack(now);
            progress |= self.hosts[h].receive_control(now);
            if let Some(a) = &mut self.hosts[h].agent
                && a.endpoint.poll_timeout().is_some_and(|t| t <= now)
            {
                a.endpoint.handle(now, Input::Timeout);
                progress = true;
            }
            progress |= self.hosts[h].scan_flows(now);
            if self.hosts[h].drain_agent(now) {
                progress = true;
                // Put the endpoint's datagrams on the wire in this same batch, ahead of
                // any data the commands released.
                let host = &mut self.hosts[h];
                host.iface
                    .poll(smol_now(now), &mut host.device, &mut host.sockets);
            }
            self.collect_events(h);
            if !self.hosts[h].device.tx.is_empty() || !self.hosts[h].dataplane.to_wire.is_empty() {
                let mut out = self.hosts[h].egress(now);
                // Control messages first: roam's control traffic is latency-critical and
                // small, and a real host would mark it high priority (DSCP CS6).
                out.sort_by_key(|p| !is_control(p));
                progress = true;
                for pkt in &out {
                    self.record_control(h, pkt);
                }
                if let Some(link) = self.hosts[h].link {
                    for pkt in out {
                        if !self.lost_by_rule(h, &pkt) {
                            self.transmit(link, 0, pkt);
                        }
                    }
                }
            }
            if !progress && self.hosts[h].inbox.is_empty() {
                return;
            }
        }
        // Still busy: come back at the same instant rather than spin here.
        dirty.insert(h);
    }

    fn step_apps(&mut self, h: usize, now: Instant, elapsed: Duration) -> bool {
        let mut progress = false;
        for i in 0..self.tcp.len() {
            let server_addr = self.hosts[self.tcp[i].spec.server].addr.map(to_smol);
            for k in 0..2 {
                if self.tcp[i].ends[k].host != h {
                    continue;
                }
                let local = self.hosts[h].addr.map(to_smol);
                let host = &mut self.hosts[h];
                let app = &mut self.tcp[i];
                let was_done = app.done();
                let at = StepContext {
                    now,
                    elapsed,
                    server_addr,
                    local_addr: local,
                };
                progress |= app.step(k, &at, &mut host.iface, &mut host.sockets);
                if !was_done && app.done() {
                    let name = app.spec.name.clone();
                    let what = match &app.failed {
                        Some(why) => format!("tcp flow {name} failed: {why}"),
                        None => format!("tcp flow {name} finished"),
                    };
                    self.note(h, what);
                }
            }
        }
        for i in 0..self.udp.len() {
            if self.udp[i].receiver == h {
                progress |= self.udp[i].step_receiver(now, &mut self.hosts[h].sockets);
            }
            if self.udp[i].sender == h {
                let dst = self.hosts[self.udp[i].receiver].addr.map(to_smol);
                let local = self.hosts[h].addr.map(to_smol);
                let was_done = self.udp[i].done();
                progress |= self.udp[i].step_sender(now, elapsed, &mut self.hosts[h].sockets, dst, local);
                if !was_done && self.udp[i].done() {
                    let (s, r) = (self.udp[i].sender, self.udp[i].receiver);
                    let (sp, rp) = (self.udp[i].spec.sender_port, self.udp[i].spec.port);
                    self.hosts[s].close_udp(now, sp);
                    self.hosts[r].close_udp(now, rp);
                    let name = self.udp[i].spec.name.clone();
                    self.note(h, format!("udp flow {name} finished"));
                }
            }
        }
        progress
    }

    fn collect_events(&mut self, h: usize) {
        let Some(a) = &mut self.hosts[h].agent else { return };
        let mut evs = Vec::new();
        while let Some(e) = a.endpoint.poll_event() {
            evs.push(e);
        }
        for e in evs {
            if let Event::MoveCompleted {
                elapsed, retransmits, ..
            } = &e
                && let Some(m) = self
                    .moves
                    .iter_mut()
                    .rev()
                    .find(|m| m.host == h && m.attached_at.is_some())
                && m.confirmed.is_none()
            {
                m.confirmed = Some((self.now, *elapsed, *retransmits));
            }
            let text = self.describe(&e);
            self.note(h, text);
        }
    }

    /// An event in words, with peer ids replaced by host names.
    fn describe(&self, e: &Event) -> String {
        let mut s = e.to_string();
        for h in &self.sc.hosts {
            s = s.replace(&node_id_for(&h.name).to_string(), &h.name);
        }
        s
    }

    pub fn into_report(self, wall: Duration) -> Report {
        report::build(self, wall)
    }
}

/// A one-line summary of a packet for traces.
fn describe_packet(pkt: &[u8]) -> String {
    use etherparse::{SlicedPacket, TransportSlice};
    let Some((src, dst)) = ip_addrs(pkt) else {
        return "not IP".into();
    };
    match SlicedPacket::from_ip(pkt).ok().and_then(|s| s.transport) {
        Some(TransportSlice::Tcp(t)) => format!(
            "tcp {src}:{} > {dst}:{} seq={} ack={} len={}{}{}",
            t.source_port(),
            t.destination_port(),
            t.sequence_number(),
            t.acknowledgment_number(),
            t.payload().len(),
            if t.syn() { " SYN" } else { "" },
            if t.fin() { " FIN" } else { "" }
        ),
        Some(TransportSlice::Udp(u)) => format!(
            "udp {src}:{} > {dst}:{} len={}",
            u.source_port(),
            u.destination_port(),
            u.payload().len()
        ),
        _ => format!("ip {src} > {dst} len={}", pkt.len()),
    }
}

/// Whether a packet is a roam control datagram (UDP to or from the control port).
fn is_control(pkt: &[u8]) -> bool {
    use roam_core::translate::{Direction, PacketFlow, Protocol, packet_flow};
    match packet_flow(Direction::Egress, pkt) {
        Ok(PacketFlow::Transport(t)) => {
            t.protocol == Protocol::Udp
                && (t.local.port() == roam_wire::DEFAULT_CONTROL_PORT
                    || t.remote.port() == roam_wire::DEFAULT_CONTROL_PORT)
        }
        _ => false,
    }
}

fn fmt_addr(a: Option<IpAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "nowhere".into())
}

/// Runs one scenario once.
pub fn run(sc: &Scenario, opts: &RunOptions) -> Result<Report, SimError> {
    let wall = std::time::Instant::now();
    let mut sim = Sim::new(sc, opts.clone())?;
    sim.run()?;
    Ok(sim.into_report(wall.elapsed()))
}
