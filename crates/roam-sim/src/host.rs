//! A simulated host: a real TCP/IP stack (smoltcp), its one network interface, the
//! simulator data plane between the two, and (if it runs roam) a roam endpoint with
//! its control socket, driven exactly as the daemon drives it.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use roam_core::translate::{Protocol, Tuple};
use roam_core::{DataPlane, Endpoint, Input, Instant};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::net::LinkIdx;
use crate::scenario::Family;
use roam_core::plane::{PacketPlane, Verdicts};

pub const MTU: usize = 1500;

/// The device between smoltcp and the simulator: two packet queues.
#[derive(Default)]
pub struct SimDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for SimDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

pub fn smol_now(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.as_micros() as i64)
}

pub fn to_smol(a: IpAddr) -> IpAddress {
    match a {
        IpAddr::V4(v4) => IpAddress::Ipv4(v4),
        IpAddr::V6(v6) => IpAddress::Ipv6(v6),
    }
}

pub fn from_smol(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4(v4) => IpAddr::V4(v4),
        IpAddress::Ipv6(v6) => IpAddr::V6(v6),
    }
}

pub fn endpoint(e: IpEndpoint) -> SocketAddr {
    SocketAddr::new(from_smol(e.addr), e.port)
}

/// roam on a host: the endpoint and the UDP socket of its control channel.
pub struct Agent {
    pub endpoint: Endpoint,
    pub control: SocketHandle,
}

pub struct SimHost {
    pub name: String,
    pub family: Family,
    pub iface: Interface,
    pub device: SimDevice,
    pub sockets: SocketSet<'static>,
    /// The access link, while attached.
    pub link: Option<LinkIdx>,
    pub subnet: Option<usize>,
    /// The current address (on the attached subnet).
    pub addr: Option<IpAddr>,
    /// Addresses kept for existing connections only (seed 003 "deprecated").
    pub deprecated: Vec<IpAddr>,
    pub agent: Option<Agent>,
    /// The data plane: the packet logic every userspace data plane shares, between the
    /// stack and the link (the position of seed 000 FIG. 5: between the fused TCP/IP
    /// layer and the driver). roam-linux's TUN plane is the same logic between the
    /// kernel's stack and a TUN device.
    pub dataplane: PacketPlane,
    /// Packets from the link awaiting the data plane.
    pub inbox: VecDeque<Vec<u8>>,
    /// TCP flows the stack has (the sock_diag view), by original tuple.
    pub tcp_flows: BTreeSet<Tuple>,
    /// UDP flows seen by the data plane (the conntrack view).
    pub udp_flows: BTreeSet<Tuple>,
    pub control_port: u16,
    /// What reached the host from its link (before anything looked at it).
    pub received_packets: u64,
    pub received_bytes: u64,
}

impl SimHost {
    pub fn new(
        name: String,
        family: Family,
        seed: u64,
        agent: Option<Endpoint>,
        control_port: u16,
    ) -> SimHost {
        let mut device = SimDevice::default();
        let mut cfg = IfaceConfig::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let iface = Interface::new(cfg, &mut device, smoltcp::time::Instant::ZERO);
        let mut sockets = SocketSet::new(Vec::new());
        let agent = agent.map(|endpoint| {
            let mut s = udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 128], vec![0; 128 * 1500]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 128], vec![0; 128 * 1500]),
            );
            s.bind(control_port).expect("a fresh socket binds");
            Agent {
                endpoint,
                control: sockets.add(s),
            }
        });
        SimHost {
            name,
            family,
            iface,
            device,
            sockets,
            link: None,
            subnet: None,
            addr: None,
            deprecated: Vec::new(),
            agent,
            dataplane: PacketPlane::new(seed ^ 0x7461_626c_6500),
            inbox: VecDeque::new(),
            tcp_flows: BTreeSet::new(),
            udp_flows: BTreeSet::new(),
            control_port,
            received_packets: 0,
            received_bytes: 0,
        }
    }

    /// Gives the host `addr` on `subnet` (1-based) with a default route via its router.
    /// The new address goes first, so it is preferred for new traffic.
    pub fn set_address(&mut self, now: Instant, subnet: usize, addr: IpAddr, router: IpAddr) {
        self.subnet = Some(subnet);
        self.addr = Some(addr);
        self.deprecated.retain(|a| *a != addr);
        let prefix = self.family.prefix_len();
        let deprecated = self.deprecated.clone();
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::new(to_smol(addr), prefix));
            for d in deprecated {
                // A host route only: a deprecated address is no longer on any subnet.
                let _ = addrs.push(IpCidr::new(to_smol(d), if d.is_ipv4() { 32 } else { 128 }));
            }
        });
        let routes = self.iface.routes_mut();
        routes.update(|r| r.clear());
        match router {
            IpAddr::V4(r) => {
                let _ = routes.add_default_ipv4_route(r);
            }
            IpAddr::V6(r) => {
                let _ = routes.add_default_ipv6_route(r);
            }
        }
        if let Some(a) = &mut self.agent {
            a.endpoint.handle(now, Input::AddressAdded(addr));
        }
    }

    /// The address stops being usable for new traffic (DHCP lease gone, link left).
    /// The stack keeps it for the sockets that use it, as seed 003's deprecated state.
    pub fn remove_address(&mut self, now: Instant) {
        let Some(old) = self.addr.take() else { return };
        self.subnet = None;
        if !self.deprecated.contains(&old) {
            self.deprecated.push(old);
        }
        self.prune_deprecated();
        self.iface.routes_mut().update(|r| r.clear());
        if let Some(a) = &mut self.agent {
            a.endpoint.handle(now, Input::AddressRemoved(old));
        }
    }

    /// The roam daemon restarts with `endpoint`, which knows nothing: it learns the
    /// current address, takes back the entries the data plane kept, and hears of every
    /// flow the stack has again (the restored ones it knows already).
    pub fn restart(&mut self, now: Instant, endpoint: Endpoint) {
        let Some(agent) = &mut self.agent else { return };
        agent.endpoint = endpoint;
        if let Some(a) = self.addr {
            agent.endpoint.handle(now, Input::AddressAdded(a));
        }
        for m in self.dataplane.table().flows() {
            agent.endpoint.handle(now, Input::Restore(m));
        }
        self.tcp_flows.clear();
        self.udp_flows.clear();
    }

    /// Drops deprecated addresses no flow uses any more, so the list stays bounded.
    pub fn prune_deprecated(&mut self) {
        let used: BTreeSet<IpAddr> = self
            .tcp_flows
            .iter()
            .chain(self.udp_flows.iter())
            .map(|t| t.local.ip())
            .collect();
        let before = self.deprecated.len();
        self.deprecated.retain(|a| used.contains(a));
        while self.deprecated.len() > 6 {
            self.deprecated.remove(0);
        }
        if self.deprecated.len() != before {
            let keep = self.addr;
            let deprecated = self.deprecated.clone();
            let prefix = self.family.prefix_len();
            self.iface.update_ip_addrs(|addrs| {
                addrs.clear();
                if let Some(a) = keep {
                    let _ = addrs.push(IpCidr::new(to_smol(a), prefix));
                }
                for d in deprecated {
                    let _ = addrs.push(IpCidr::new(to_smol(d), if d.is_ipv4() { 32 } else { 128 }));
                }
            });
        }
    }

    /// Data plane commands and transmissions the endpoint produced: obey the commands
    /// first (so the data plane is ready before the peer can answer), then queue the
    /// control datagrams on the control socket.
    pub fn drain_agent(&mut self, now: Instant) -> bool {
        let Some(agent) = &mut self.agent else {
            return false;
        };
        self.dataplane.set_now(now);
        let mut progress = false;
        while let Some(cmd) = agent.endpoint.poll_dataplane() {
            progress = true;
            if let Err(e) = self.dataplane.apply(&cmd) {
                tracing::warn!(host = %self.name, "data plane refused {cmd:?}: {e}");
            }
        }
        self.device.rx.extend(self.dataplane.to_stack.drain(..));
        let s = self.sockets.get_mut::<udp::Socket>(agent.control);
        while let Some(t) = agent.endpoint.poll_transmit() {
            progress = true;
            let meta = udp::UdpMetadata {
                endpoint: IpEndpoint::new(to_smol(t.dst.ip()), t.dst.port()),
                local_address: Some(to_smol(t.src.ip())),
                meta: Default::default(),
            };
            if s.send_slice(&t.payload, meta).is_err() {
                tracing::debug!(host = %self.name, "control socket full: datagram dropped");
            }
        }
        progress
    }

    /// Control datagrams received: hand them to the endpoint.
    pub fn receive_control(&mut self, now: Instant) -> bool {
        let Some(agent) = &mut self.agent else {
            return false;
        };
        let mut progress = false;
        let s = self.sockets.get_mut::<udp::Socket>(agent.control);
        while let Ok((data, meta)) = s.recv() {
            progress = true;
            let local = SocketAddr::new(
                meta.local_address
                    .map(from_smol)
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                self.control_port,
            );
            agent.endpoint.handle(
                now,
                Input::Datagram {
                    local,
                    remote: endpoint(meta.endpoint),
                    payload: data,
                },
            );
        }
        progress
    }

    /// The sock_diag view: tells the endpoint about TCP flows that appeared or ended.
    pub fn scan_flows(&mut self, now: Instant) -> bool {
        let mut seen = BTreeSet::new();
        for (_, socket) in self.sockets.iter() {
            if let smoltcp::socket::Socket::Tcp(s) = socket {
                // A socket in TIME-WAIT is still a flow: it may yet send the final ACK
                // again, and that must be translated like the rest (sock_diag lists
                // TIME-WAIT sockets too).
                use tcp::State::*;
                if matches!(s.state(), Closed | Listen) {
                    continue;
                }
                if let (Some(l), Some(r)) = (s.local_endpoint(), s.remote_endpoint()) {
                    seen.insert(Tuple::new(Protocol::Tcp, endpoint(l), endpoint(r)));
                }
            }
        }
        if seen == self.tcp_flows {
            return false;
        }
        let opened: Vec<Tuple> = seen.difference(&self.tcp_flows).copied().collect();
        let closed: Vec<Tuple> = self.tcp_flows.difference(&seen).copied().collect();
        self.tcp_flows = seen;
        for t in &closed {
            self.dataplane.forget(t);
        }
        if let Some(a) = &mut self.agent {
            for t in opened {
                a.endpoint.handle(now, Input::FlowOpened(t));
            }
            for t in closed {
                a.endpoint.handle(now, Input::FlowClosed(t));
            }
        }
        true
    }

    /// The conntrack view for UDP: a datagram of an unknown flow (never the control
    /// channel's own) opens one. `pkt` is in original (stack-side) form. Whether a flow
    /// was opened.
    pub fn observe_udp(&mut self, now: Instant, pkt: &[u8], egress: bool) -> bool {
        use roam_core::translate::{Direction, PacketFlow, packet_flow};
        let dir = if egress {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let Ok(PacketFlow::Transport(t)) = packet_flow(dir, pkt) else {
            return false;
        };
        if t.protocol != Protocol::Udp
            || t.local.port() == self.control_port
            || t.remote.port() == self.control_port
            || self.udp_flows.contains(&t)
        {
            return false;
        }
        self.udp_flows.insert(t);
        if let Some(a) = &mut self.agent {
            a.endpoint.handle(now, Input::FlowOpened(t));
        }
        true
    }

    /// A UDP application closed its socket on `port`.
    pub fn close_udp(&mut self, now: Instant, port: u16) {
        let gone: Vec<Tuple> = self
            .udp_flows
            .iter()
            .filter(|t| t.local.port() == port)
            .copied()
            .collect();
        for t in gone {
            self.udp_flows.remove(&t);
            if let Some(a) = &mut self.agent {
                a.endpoint.handle(now, Input::FlowClosed(t));
            }
        }
    }

    /// Lets the TCP/IP stack process what it has; whether any socket changed.
    pub fn poll_stack(&mut self, now: Instant) -> bool {
        self.iface
            .poll(smol_now(now), &mut self.device, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// Asks the endpoint to resolve a conflict and obeys what it says.
    fn resolve_conflict(&mut self, now: Instant, direction: roam_core::ConflictDirection, tuple: Tuple) {
        if let Some(a) = &mut self.agent {
            a.endpoint.handle(now, Input::Conflict { direction, tuple });
        }
        self.drain_agent(now);
    }

    /// Pushes packets from the link through the data plane into the stack. Conflicts
    /// go to the endpoint, and the packet is tried again once it has answered.
    pub fn ingress(&mut self, now: Instant) -> bool {
        let mut progress = false;
        while let Some(pkt) = self.inbox.pop_front() {
            progress = true;
            let mut verdict = self.dataplane.ingress(pkt);
            if let Verdicts::Conflict(t, p) = verdict {
                self.resolve_conflict(now, roam_core::ConflictDirection::Ingress, t);
                verdict = match self.dataplane.ingress(p) {
                    Verdicts::Conflict(..) => Verdicts::Dropped,
                    v => v,
                };
            }
            if let Verdicts::Forward(p) = verdict {
                self.observe_udp(now, &p, false);
                self.device.rx.push_back(p);
            }
        }
        // What came from unvalidated addresses raises their budgets at the endpoint
        // too (its control messages there obey the same limit).
        let heard = std::mem::take(&mut self.dataplane.heard);
        if let Some(a) = &mut self.agent {
            for (from, bytes) in heard {
                a.endpoint.handle(now, Input::Heard { from, bytes });
            }
        }
        progress
    }

    /// Pushes what the stack sent through the data plane: packets for the link.
    pub fn egress(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.dataplane.set_now(now);
        let mut out = std::mem::take(&mut self.dataplane.to_wire);
        while let Some(pkt) = self.device.tx.pop_front() {
            if self.observe_udp(now, &pkt, true) {
                // The endpoint may have remapped the new flow: obey it first.
                self.drain_agent(now);
                out.append(&mut self.dataplane.to_wire);
            }
            let mut verdict = self.dataplane.egress(pkt);
            if let Verdicts::Conflict(t, p) = verdict {
                self.resolve_conflict(now, roam_core::ConflictDirection::Egress, t);
                out.append(&mut self.dataplane.to_wire);
                verdict = match self.dataplane.egress(p) {
                    Verdicts::Conflict(..) => Verdicts::Dropped,
                    v => v,
                };
            }
            if let Verdicts::Forward(p) = verdict {
                out.push(p);
            }
        }
        out.append(&mut self.dataplane.to_wire);
        out
    }
}
