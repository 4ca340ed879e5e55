//! The daemon's loop: one task owns the endpoint and everything it drives.
//!
//! Inputs, in the order a move needs them (MISSION.md, "Hard parts"):
//! 1. the kernel says an address went away (rtnetlink);
//! 2. roamd lists the host's sockets at once (sock_diag), so every flow on that address
//!    is known, and keeps the address on `lo` for those sockets (the kernel does not
//!    send from an address it no longer has);
//! 3. the endpoint hears `AddressRemoved`, holds the flows, tells their peers;
//! 4. every data-plane command the endpoint emits is applied (one nftables transaction
//!    per batch) *before* any control datagram of that step is sent, so the entries
//!    are in place when the peer answers.

use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use roam_core::config::{DataPlaneKind, HostConfig};

use crate::config::load_host;
use roam_core::translate::{Protocol, Tuple};
use roam_core::{Config, DataPlaneCommand, Endpoint, Event, Input, Instant, Transmit};
use roam_linux::netlink::{self, NetEvent, NetWatcher};
use roam_linux::nft::{NftConfig, NftDataPlane};
use roam_linux::sockdiag;
use roam_linux::tun::{TunConfig, TunDataPlane};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::control::{ControlSockets, Received};
use crate::status::{DaemonCounters, DataPlaneCounters, EventRecord, PeerStatus, Status};

/// How roamd is started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The host configuration file (keys, peers, `[daemon]`).
    pub config: PathBuf,
    /// Where to keep a JSON status snapshot (rewritten every second and at exit).
    pub status_file: Option<PathBuf>,
    /// Leave the kernel's translation entries in place at exit, so migrated sessions
    /// keep working while roamd is down (otherwise they are removed).
    pub keep_entries_on_exit: bool,
}

/// Events kept for the status snapshot.
const EVENT_HISTORY: usize = 200;

/// Control datagrams that found no route are kept this long, at most this many.
const UNROUTED_TTL: Duration = Duration::from_secs(1);
const UNROUTED_MAX: usize = 64;

fn is_no_route(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
    )
}

/// Runs roamd until SIGINT or SIGTERM (or a fatal error).
pub fn run(options: Options) -> Result<()> {
    let (config, key) = load_host(&options.config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(Daemon::run(options, config, key))
}

/// The data plane roamd drives. Each method is the one place that tells the planes
/// apart.
enum Plane {
    Nft(Box<NftDataPlane>),
    Tun(Box<TunDataPlane>),
    None,
}

impl Plane {
    fn open(settings: &roam_core::config::DaemonSettings) -> Result<Plane> {
        Ok(match settings.data_plane {
            DataPlaneKind::Nftables => Plane::Nft(Box::new(
                NftDataPlane::open_with(NftConfig {
                    nudge: settings.nudge,
                    ..NftConfig::default()
                })
                .context("cannot set up the nftables data plane")?,
            )),
            DataPlaneKind::Tun => Plane::Tun(Box::new(
                TunDataPlane::open_with(TunConfig {
                    nudge: settings.nudge,
                    ..TunConfig::default()
                })
                .context("cannot set up the TUN data plane")?,
            )),
            DataPlaneKind::None => Plane::None,
        })
    }

    /// The plane counts what it did and refused (in the status); the error is for the log.
    fn apply_batch(&mut self, batch: &[DataPlaneCommand]) -> Result<()> {
        match self {
            Plane::Nft(p) => p.apply_batch(batch)?,
            Plane::Tun(p) => p.apply_batch(batch)?,
            Plane::None => {}
        }
        Ok(())
    }

    /// Housekeeping: chains or filters of drains whose time has passed (and, TUN,
    /// interfaces that appeared).
    fn maintain(&mut self) -> Result<()> {
        match self {
            Plane::Nft(p) => p.maintain()?,
            Plane::Tun(p) => p.maintain()?,
            Plane::None => {}
        }
        Ok(())
    }

    fn counters(&self) -> Option<DataPlaneCounters> {
        match self {
            Plane::Nft(p) => p
                .counters()
                .map(DataPlaneCounters::Nft)
                .map_err(|e| debug!("data plane counters: {e}"))
                .ok(),
            Plane::Tun(p) => Some(DataPlaneCounters::Tun(Box::new(p.counters()))),
            Plane::None => None,
        }
    }

    /// What only the userspace plane sees and the endpoint must hear: conflicts (seed
    /// 000 ¶0067-¶0069, for a remap) and bytes from unvalidated addresses (which raise
    /// their budgets). The kernel plane sees neither.
    fn feedback(&self) -> Vec<Input<'static>> {
        let Plane::Tun(p) = self else { return Vec::new() };
        let conflicts = p.take_conflicts().into_iter();
        let heard = p.take_heard().into_iter();
        conflicts
            .map(|(direction, tuple)| Input::Conflict { direction, tuple })
            .chain(heard.map(|(from, bytes)| Input::Heard { from, bytes }))
            .collect()
    }

    /// Stops the plane, and says whether the addresses kept for old sockets go too.
    /// `keep_entries`: leave the kernel plane's translation (and those addresses) in
    /// place for the next roamd. The TUN plane's translation is roamd's own work: it
    /// ends with roamd whatever `keep_entries` says.
    fn close(self, keep_entries: bool) -> bool {
        match self {
            Plane::Nft(p) if keep_entries => p.detach(),
            Plane::Nft(p) => {
                if let Err(e) = p.close() {
                    warn!("cannot remove the nftables table: {e}");
                }
            }
            Plane::Tun(p) => {
                if let Err(e) = p.close() {
                    warn!("cannot remove the TUN data plane's rules and filters: {e}");
                }
            }
            Plane::None => return false,
        }
        !keep_entries
    }
}

struct Daemon {
    options: Options,
    settings: roam_core::config::DaemonSettings,
    endpoint: Endpoint,
    started: std::time::Instant,
    plane: Plane,
    sockets: ControlSockets,
    /// The addresses the endpoint was told are usable.
    usable: BTreeSet<IpAddr>,
    /// Addresses roamd keeps on `lo` for sockets that still use them.
    retained: BTreeSet<IpAddr>,
    /// The flows the last listing found (original tuples, as the sockets see them).
    flows: BTreeSet<Tuple>,
    counters: DaemonCounters,
    events: VecDeque<EventRecord>,
    /// Control datagrams waiting for a route (see [`Daemon::send`]).
    unrouted: VecDeque<(std::time::Instant, Transmit)>,
}

impl Daemon {
    async fn run(options: Options, config: HostConfig, key: roam_core::security::StaticKey) -> Result<()> {
        let settings = config.daemon.clone();
        let mut ep_config = Config::new(key, config.trust());
        ep_config.control_port = settings.control_port;
        ep_config.move_message = settings.move_message;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        let endpoint = Endpoint::new(ep_config, Box::new(ChaCha20Rng::from_seed(seed)));
        info!(
            node = %endpoint.node_id(),
            key = %endpoint.public_key(),
            port = settings.control_port,
            "roamd starting"
        );

        // Subscribe before listing, so no change falls between the two.
        let mut watcher = NetWatcher::new()
            .await
            .context("cannot watch the kernel's addresses")?;
        let plane = Plane::open(&settings)?;
        let (tx, mut rx) = mpsc::channel::<Received>(1024);
        let mut d = Daemon {
            sockets: ControlSockets::new(settings.control_port, tx),
            options,
            settings,
            endpoint,
            started: std::time::Instant::now(),
            plane,
            usable: BTreeSet::new(),
            retained: BTreeSet::new(),
            flows: BTreeSet::new(),
            counters: DaemonCounters::default(),
            events: VecDeque::new(),
            unrouted: VecDeque::new(),
        };
        d.scan_flows().await;
        d.retained = watcher
            .addresses()
            .iter()
            .filter(|a| a.roam_owned)
            .map(|a| a.addr)
            .collect();
        for addr in watcher.usable_addresses() {
            d.address_added(&watcher, addr);
        }
        d.flush();

        let mut scan = tokio::time::interval(d.settings.flow_scan);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot = tokio::time::interval(Duration::from_secs(1));
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let timer = d.endpoint.poll_timeout().map(|t| d.deadline(t));
            tokio::select! {
                Some(r) = rx.recv() => {
                    d.counters.datagrams_received += 1;
                    let now = d.now();
                    d.endpoint.handle(now, Input::Datagram { local: r.local, remote: r.remote, payload: &r.payload });
                    d.flush();
                }
                ev = watcher.next() => {
                    match ev {
                        Ok(ev) => d.net_event(&watcher, ev).await,
                        Err(e) => {
                            // A lost netlink message means a lost address change: list
                            // everything again rather than guess.
                            warn!("address watch: {e}; listing addresses again");
                            watcher.resync();
                            // Bounded: a broken netlink socket must not spin the loop.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                _ = scan.tick() => {
                    d.plane_feedback();
                    d.scan_flows().await;
                    d.release_unused();
                    d.flush();
                }
                _ = async { tokio::time::sleep_until(timer.unwrap()).await }, if timer.is_some() => {
                    let now = d.now();
                    d.endpoint.handle(now, Input::Timeout);
                    d.flush();
                }
                _ = snapshot.tick() => {
                    // Housekeeping off the critical path.
                    if let Err(e) = d.plane.maintain() {
                        debug!("data plane housekeeping: {e}");
                    }
                    d.write_status();
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
            }
        }
        info!("roamd stopping");
        d.write_status();
        if d.plane.close(d.options.keep_entries_on_exit) {
            for a in std::mem::take(&mut d.retained) {
                let _ = netlink::release_address(a).await;
            }
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.started.elapsed().as_nanos() as u64)
    }

    fn deadline(&self, t: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started) + Duration::from_nanos(t.as_nanos())
    }

    fn record(&mut self, what: String) {
        let at_s = self.started.elapsed().as_secs_f64();
        self.events.push_back(EventRecord { at_s, what });
        while self.events.len() > EVENT_HISTORY {
            self.events.pop_front();
        }
    }

    /// Carries out what the endpoint decided: data-plane commands first (one
    /// transaction), then control datagrams, then events.
    fn flush(&mut self) {
        let mut batch = Vec::new();
        while let Some(c) = self.endpoint.poll_dataplane() {
            // The configuration may turn nudges off (to measure what they are worth);
            // the data plane then has no raw sockets for them either.
            if matches!(c, DataPlaneCommand::Nudge { .. }) && !self.settings.nudge {
                self.counters.nudges_disabled += 1;
                continue;
            }
            batch.push(c);
        }
        if !batch.is_empty() {
            debug!(commands = batch.len(), "data plane batch");
            if let Err(e) = self.plane.apply_batch(&batch) {
                warn!("data plane refused {} command(s): {e}", batch.len());
            }
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            self.send(t);
        }
        while let Some(e) = self.endpoint.poll_event() {
            match &e {
                Event::KeyRejected { .. } | Event::MoveFailed { .. } | Event::PathFailed { .. } => {
                    warn!("{e}")
                }
                _ => info!("{e}"),
            }
            self.record(e.to_string());
        }
    }

    /// Hands the endpoint what the data plane found (see [`Plane::feedback`]).
    fn plane_feedback(&mut self) {
        let inputs = self.plane.feedback();
        if inputs.is_empty() {
            return;
        }
        let now = self.now();
        for input in inputs {
            self.endpoint.handle(now, input);
        }
        self.flush();
    }

    /// Sends a control datagram. One that finds no route yet is kept (briefly, a
    /// bounded few) and sent again when the kernel reports a route change: a DHCP
    /// client adds the new address a few milliseconds before the default route, and
    /// the update sent at once would otherwise wait for a retransmission timeout.
    fn send(&mut self, t: Transmit) {
        match self.sockets.send(t.src, t.dst, &t.payload) {
            Ok(()) => {}
            Err(e) if is_no_route(&e) => {
                self.counters.sends_awaiting_route += 1;
                debug!(src = %t.src, dst = %t.dst, "no route yet: kept until the routes change");
                let now = std::time::Instant::now();
                self.unrouted
                    .retain(|(at, _)| now.duration_since(*at) < UNROUTED_TTL);
                if self.unrouted.len() >= UNROUTED_MAX {
                    self.unrouted.pop_front();
                }
                self.unrouted.push_back((now, t));
            }
            Err(e) => {
                self.counters.send_errors += 1;
                debug!(src = %t.src, dst = %t.dst, "control send failed: {e}");
            }
        }
    }

    /// Sends again what found no route (after a route change). A datagram that still
    /// has none waits for the next change, until [`UNROUTED_TTL`]: a DHCP client adds
    /// the new subnet's route a moment before the default route, and the first change
    /// is not yet the one the datagram needs (seen in the lab with the TUN plane, whose
    /// faster install sends the update between the two).
    fn send_unrouted(&mut self) {
        let now = std::time::Instant::now();
        for (at, t) in std::mem::take(&mut self.unrouted) {
            if now.duration_since(at) >= UNROUTED_TTL {
                continue;
            }
            match self.sockets.send(t.src, t.dst, &t.payload) {
                Ok(()) => {}
                Err(e) if is_no_route(&e) => self.unrouted.push_back((at, t)),
                Err(e) => {
                    self.counters.send_errors += 1;
                    debug!(src = %t.src, dst = %t.dst, "control send failed again: {e}");
                }
            }
        }
    }

    /// Reconciles the endpoint's view with the watcher's after every kernel event: the
    /// watcher keeps the kernel's state (its events are differences with it), so the
    /// usable addresses before and after say everything.
    async fn net_event(&mut self, watcher: &NetWatcher, ev: NetEvent) {
        self.counters.address_events += 1;
        debug!(?ev, "kernel event");
        if matches!(ev, NetEvent::RouteChanged { .. }) && !self.unrouted.is_empty() {
            self.send_unrouted();
        }
        let all = watcher.addresses();
        let usable = watcher.usable_addresses();
        self.retained = all.iter().filter(|a| a.roam_owned).map(|a| a.addr).collect();
        let gone: Vec<IpAddr> = self.usable.difference(&usable).copied().collect();
        let added: Vec<IpAddr> = usable.difference(&self.usable).copied().collect();
        for addr in gone {
            // Gone from every interface (not merely deprecated, or on a link that went
            // down): the sockets still using it need roam's copy on `lo`.
            let removed = !all.iter().any(|a| a.addr == addr && !a.roam_owned);
            self.address_gone(addr, removed).await;
        }
        for addr in added {
            self.address_added(watcher, addr);
        }
        self.flush();
    }

    fn address_added(&mut self, watcher: &NetWatcher, addr: IpAddr) {
        if !self.usable.insert(addr) {
            return;
        }
        // Bound to the address's interface, unless that is a loopback device (where
        // nothing routes): see control.rs.
        let device = watcher
            .addresses()
            .into_iter()
            .find(|a| a.addr == addr && !a.on_loopback && !a.roam_owned)
            .map(|a| a.ifname);
        if let Err(e) = self.sockets.open(addr, device.as_deref()) {
            warn!(%addr, "cannot open a control socket: {e}");
        }
        let now = self.now();
        self.endpoint.handle(now, Input::AddressAdded(addr));
    }

    /// An address stopped being usable for new traffic (seed 003: removed, deprecated,
    /// or its link went down). `removed`: it is gone from its interface, so sockets
    /// still using it need roam's copy on `lo`.
    async fn address_gone(&mut self, addr: IpAddr, removed: bool) {
        if !self.usable.remove(&addr) {
            return;
        }
        // Learn every flow on the address now: one opened since the last listing must
        // move with the others.
        self.scan_flows().await;
        if removed && self.flows.iter().any(|t| t.local.ip() == addr) && !self.retained.contains(&addr) {
            match netlink::retain_address(addr).await {
                Ok(r) => {
                    self.retained.insert(addr);
                    self.counters.addresses_retained += 1;
                    info!(%addr, ?r, "kept on lo for the sockets still using it");
                }
                Err(e) => warn!(%addr, "cannot keep the address for its sockets: {e}"),
            }
        }
        self.sockets.close(addr);
        let now = self.now();
        self.endpoint.handle(now, Input::AddressRemoved(addr));
    }

    /// Lists the host's sockets (sock_diag) and tells the endpoint of flows opened and
    /// closed since the last listing. The control channel's own sockets are not flows.
    async fn scan_flows(&mut self) {
        self.counters.flow_scans += 1;
        let listed = match sockdiag::dump_flows_async().await {
            Ok(l) => l,
            Err(e) => {
                self.counters.flow_scan_errors += 1;
                warn!("cannot list sockets: {e}");
                return;
            }
        };
        let port = self.settings.control_port;
        let seen: BTreeSet<Tuple> = listed
            .into_iter()
            .map(|f| f.tuple)
            .filter(|t| !(t.protocol == Protocol::Udp && (t.local.port() == port || t.remote.port() == port)))
            .collect();
        if seen == self.flows {
            return;
        }
        let now = self.now();
        for t in seen.difference(&self.flows) {
            self.endpoint.handle(now, Input::FlowOpened(*t));
        }
        for t in self.flows.difference(&seen) {
            self.endpoint.handle(now, Input::FlowClosed(*t));
        }
        self.flows = seen;
    }

    /// Gives back retained addresses no socket uses any more.
    fn release_unused(&mut self) {
        let used: BTreeSet<IpAddr> = self.flows.iter().map(|t| t.local.ip()).collect();
        let unused: Vec<IpAddr> = self
            .retained
            .iter()
            .filter(|a| !used.contains(a))
            .copied()
            .collect();
        for a in unused {
            self.retained.remove(&a);
            self.counters.addresses_released += 1;
            tokio::spawn(async move {
                match netlink::release_address(a).await {
                    Ok(_) => info!(addr = %a, "released: no socket uses it any more"),
                    Err(e) => warn!(addr = %a, "cannot release: {e}"),
                }
            });
        }
    }

    fn status(&self) -> Status {
        let peers = self
            .endpoint
            .peers()
            .map(|p| PeerStatus {
                node: p.id.to_string(),
                public_key: p.public_key.to_string(),
                control: p.control,
                addresses: p.addrs.iter().copied().collect(),
                rtt_ms: p.srtt.map(|d| d.as_secs_f64() * 1e3),
                flows: p.flows.len(),
                last_move_at_s: p.last_move.map(|(t, _)| t.as_secs_f64()),
                last_move_ms: p.last_move.map(|(_, d)| d.as_secs_f64() * 1e3),
            })
            .collect();
        Status {
            node: self.endpoint.node_id().to_string(),
            public_key: self.endpoint.public_key().to_string(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            control_port: self.settings.control_port,
            data_plane: format!("{:?}", self.settings.data_plane).to_lowercase(),
            data_plane_counters: self.plane.counters(),
            addresses: self.usable.iter().copied().collect(),
            retained: self.retained.iter().copied().collect(),
            peers,
            flows: self.endpoint.flows().cloned().collect(),
            counters: self.endpoint.counters().clone(),
            daemon: self.counters.clone(),
            events: self.events.iter().cloned().collect(),
        }
    }

    fn write_status(&self) {
        if let Some(path) = &self.options.status_file
            && let Err(e) = self.status().write_to(path)
        {
            warn!(path = %path.display(), "cannot write the status: {e}");
        }
    }
}
