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
use roam_core::translate::{AddressMapping, FlowMapping, Protocol, TableChange, Tuple};
use roam_core::{Config, DataPlaneCommand, Endpoint, Event, Input, Instant, Transmit};
use roam_linux::netlink::{self, NetEvent, NetWatcher};
use roam_linux::nft::{NftConfig, NftDataPlane};
use roam_linux::sockdiag;
use roam_linux::tun::{TunConfig, TunDataPlane};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::control::{ControlSockets, Received};
use crate::ctl::{self, Asked, Call, FlowList, PeerList, Request, Response};
use crate::metrics::MetricsServer;
use crate::persist::Persisted;
use crate::status::{
    DaemonCounters, DataPlaneCounters, EventRecord, NamedCounters, PeerStatus, PlaneCounters, Samples,
    Status, Timings,
};

/// How roamd is started.
#[derive(Clone, Debug)]
pub struct Options {
    /// The host configuration file (keys, peers, `[daemon]`).
    pub config: PathBuf,
    /// Where to keep a JSON status snapshot (rewritten every second and at exit).
    pub status_file: Option<PathBuf>,
    /// Leave the kernel's translation entries in place at exit, so migrated sessions
    /// keep working while roamd is down and the next roamd takes them over (the
    /// default; `roam down` removes them whatever this says).
    pub keep_entries_on_exit: bool,
    /// Where the translation entries are persisted ([`crate::persist`]), so that a
    /// restart, a crash or an upgrade does not drop migrated sessions. `None`: nowhere.
    pub state_file: Option<PathBuf>,
    /// Serve Prometheus metrics at this address ([`crate::metrics`]).
    pub metrics: Option<std::net::SocketAddr>,
    /// The operator's control socket (`roam status`, docs/ARCHITECTURE.md). `None`:
    /// [`ctl::DEFAULT_SOCKET`], and roamd runs on without it if it cannot serve it
    /// (several roamds in network namespaces share one file system, as in the lab);
    /// a path given here must be served, or roamd does not start.
    pub socket: Option<PathBuf>,
}

/// Events kept for the status snapshot.
const EVENT_HISTORY: usize = 200;

/// Control datagrams handled before one flush, at most (see the receive loop).
const COALESCE_DATAGRAMS: usize = 256;

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

/// An endpoint with a fresh random seed.
fn new_endpoint(config: &Config) -> Result<Endpoint> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(Endpoint::new(
        config.clone(),
        Box::new(ChaCha20Rng::from_seed(seed)),
    ))
}

/// Serves the control socket at `path`, or at the default path where failing is only
/// a warning (see [`Options::socket`]).
fn serve_control_socket(
    path: Option<&std::path::Path>,
    tx: mpsc::Sender<Call>,
) -> Result<Option<ctl::Server>> {
    match path {
        Some(p) => ctl::Server::bind(p, tx)
            .map(Some)
            .with_context(|| format!("cannot serve the control socket {}", p.display())),
        None => match ctl::Server::bind(std::path::Path::new(ctl::DEFAULT_SOCKET), tx) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                warn!("no control socket (`roam status` will not reach this roamd): {e}");
                Ok(None)
            }
        },
    }
}

/// The data plane roamd drives. Each method is the one place that tells the planes
/// apart.
enum Plane {
    Nft(Box<NftDataPlane>),
    Tun(Box<TunDataPlane>),
    None,
}

impl Plane {
    /// Opens the configured plane with `restore` (persisted entries) installed: by the
    /// transaction that creates the nftables table, or right after the TUN plane
    /// opens (it translates nothing while roamd is down anyway). Returns the plane and
    /// the changes it refused (their invariants clash), which are logged.
    fn open(settings: &roam_core::config::DaemonSettings, restore: &[TableChange]) -> Result<(Plane, usize)> {
        Ok(match settings.data_plane {
            DataPlaneKind::Nftables => {
                let (p, refused) = NftDataPlane::open_restoring(
                    NftConfig {
                        nudge: settings.nudge,
                        ..NftConfig::default()
                    },
                    restore,
                )
                .context("cannot set up the nftables data plane")?;
                for (change, e) in &refused {
                    warn!(?change, "persisted entry refused: {e}");
                }
                (Plane::Nft(Box::new(p)), refused.len())
            }
            DataPlaneKind::Tun | DataPlaneKind::Tunnel => {
                let tunnel = settings.data_plane == DataPlaneKind::Tunnel;
                let mut p = TunDataPlane::open_with(TunConfig {
                    nudge: settings.nudge,
                    tunnel_port: tunnel.then_some(settings.tunnel_port),
                    ..TunConfig::default()
                })
                .context(if tunnel {
                    "cannot set up the TUN data plane in tunnel mode"
                } else {
                    "cannot set up the TUN data plane"
                })?;
                let mut refused = 0;
                for change in restore {
                    if let Err(e) = p.apply_batch(&[DataPlaneCommand::Table(*change)]) {
                        warn!(?change, "persisted entry refused: {e}");
                        refused += 1;
                    }
                }
                (Plane::Tun(Box::new(p)), refused)
            }
            DataPlaneKind::None => (Plane::None, restore.len()),
        })
    }

    /// The entries the plane has now (what [`crate::persist`] keeps).
    fn entries(&self) -> (Vec<FlowMapping>, Vec<AddressMapping>) {
        match self {
            Plane::Nft(p) => {
                let e = p.entries();
                (e.flows, e.addresses)
            }
            Plane::Tun(p) => {
                let e = p.entries();
                (e.flows, e.addresses)
            }
            Plane::None => (Vec::new(), Vec::new()),
        }
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
    /// What a fresh endpoint is made of (`roam up` makes one).
    ep_config: Config,
    endpoint: Endpoint,
    /// Translating and handling moves (`roam down` turns it off until `roam up`).
    up: bool,
    /// Protocol counters of the endpoints `roam down` retired, so that the status's
    /// counters only ever grow.
    retired_counters: NamedCounters,
    /// Peers' names from the configuration, for the status.
    peer_names: std::collections::BTreeMap<roam_core::security::PublicKey, String>,
    /// The control socket's path, if roamd serves one.
    socket: Option<PathBuf>,
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
    /// What the state file holds now (so that only changes are written).
    persisted: Option<Persisted>,
    metrics: Option<MetricsServer>,
    /// Durations of the steps of its reactions ([`Timings`]).
    reaction: Samples,
    plane_batch: Samples,
    state_save: Samples,
    /// Flushes that did something (changed the plane or sent): a reaction is timed
    /// only if it made one.
    acted: u64,
}

impl Daemon {
    async fn run(options: Options, config: HostConfig, key: roam_core::security::StaticKey) -> Result<()> {
        let settings = config.daemon.clone();
        let mut ep_config = Config::new(key, config.trust());
        ep_config.control_port = settings.control_port;
        ep_config.move_message = settings.move_message;
        // Only the TUN plane (in either mode) queues held packets; the kernel's drops them.
        ep_config.holds_packets = matches!(settings.data_plane, DataPlaneKind::Tun | DataPlaneKind::Tunnel);
        let endpoint = new_endpoint(&ep_config)?;
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
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Call>(16);
        let server = serve_control_socket(options.socket.as_deref(), ctl_tx)?;
        let metrics = match options.metrics {
            Some(addr) => {
                Some(MetricsServer::start(addr).with_context(|| format!("cannot serve metrics at {addr}"))?)
            }
            None => None,
        };
        // Before anything else: the entries of the previous run go back into the plane
        // (in the transaction that recreates the nftables table), so that no packet of a
        // migrated session finds it missing.
        let host_key = endpoint.public_key().to_string();
        let mut counters = DaemonCounters::default();
        let restored = match &options.state_file {
            Some(path) => match Persisted::load(path, &host_key) {
                Ok(p) => p,
                Err(e) => {
                    counters.state_refused += 1;
                    warn!("ignoring the persisted state: {e}");
                    match Persisted::set_aside(path) {
                        Ok(bad) => warn!("kept it as {}", bad.display()),
                        Err(e) => warn!("cannot set it aside: {e}"),
                    }
                    None
                }
            },
            None => None,
        };
        let restore: Vec<TableChange> = restored
            .iter()
            .flat_map(|p| {
                p.flows
                    .iter()
                    .map(|m| TableChange::InstallFlow(*m))
                    .chain(p.addresses.iter().map(|m| TableChange::InstallAddress(*m)))
            })
            .collect();
        let (plane, refused) = Plane::open(&settings, &restore)?;
        counters.entries_restored = (restore.len() - refused) as u64;
        counters.entries_restore_refused = refused as u64;
        let (tx, mut rx) = mpsc::channel::<Received>(1024);
        let mut d = Daemon {
            sockets: ControlSockets::new(settings.control_port, tx),
            options,
            settings,
            ep_config,
            endpoint,
            up: true,
            retired_counters: NamedCounters::default(),
            peer_names: config.peers.clone(),
            socket: server.as_ref().map(|s| s.path().to_owned()),
            started: std::time::Instant::now(),
            plane,
            usable: BTreeSet::new(),
            retained: BTreeSet::new(),
            flows: BTreeSet::new(),
            counters,
            events: VecDeque::new(),
            unrouted: VecDeque::new(),
            persisted: restored.clone(),
            metrics,
            reaction: Samples::default(),
            plane_batch: Samples::default(),
            state_save: Samples::default(),
            acted: 0,
        };
        if let Some(p) = &restored {
            d.restore(p);
        }
        d.start(&watcher).await;

        let mut scan = tokio::time::interval(d.settings.flow_scan);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot = tokio::time::interval(Duration::from_secs(1));
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let timer = d.endpoint.poll_timeout().map(|t| d.deadline(t));
            tokio::select! {
                Some(r) = rx.recv() => {
                    let since = d.reacting();
                    d.receive(r);
                    // What else has arrived is handled before the one flush: a move of
                    // many flows comes as hundreds of datagrams, and a data-plane
                    // transaction and a state write for each would make its last
                    // answer wait for all of them. Bounded: the rest waits a turn.
                    for _ in 0..COALESCE_DATAGRAMS {
                        let Ok(r) = rx.try_recv() else { break };
                        d.receive(r);
                    }
                    d.flush();
                    d.reacted(since);
                }
                ev = watcher.next() => {
                    let since = d.reacting();
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
                    d.reacted(since);
                }
                Some(call) = ctl_rx.recv() => {
                    let response = d.control(call.caller, call.asked, &watcher).await;
                    // The caller may have gone; nothing to do then.
                    let _ = call.reply.send(response);
                }
                _ = scan.tick(), if d.up => {
                    d.plane_feedback();
                    d.scan_flows().await;
                    d.release_unused();
                    d.flush();
                }
                _ = async { tokio::time::sleep_until(timer.unwrap()).await }, if timer.is_some() => {
                    let since = d.reacting();
                    let now = d.now();
                    d.endpoint.handle(now, Input::Timeout);
                    d.flush();
                    d.reacted(since);
                }
                _ = snapshot.tick() => {
                    // Housekeeping off the critical path.
                    if let Err(e) = d.plane.maintain() {
                        debug!("data plane housekeeping: {e}");
                    }
                    d.write_status();
                    // A save that failed is tried again.
                    d.persist();
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
            }
        }
        info!("roamd stopping");
        // No request is answered from here on; the socket goes with the server.
        drop(server);
        d.write_status();
        let keep = d.options.keep_entries_on_exit;
        let plane = std::mem::replace(&mut d.plane, Plane::None);
        if plane.close(keep) {
            for a in std::mem::take(&mut d.retained) {
                let _ = netlink::release_address(a).await;
            }
        }
        if keep {
            info!("translation entries left in place for the next roamd");
        } else {
            // Nothing was kept: the next roamd must not reinstall it.
            d.persist();
        }
        Ok(())
    }

    /// The endpoint takes over the flows of the persisted state (the plane has their
    /// entries already): each restored flow's peer is found again by a handshake from
    /// the flow's current address, and the first socket listing closes those whose
    /// sockets are gone.
    fn restore(&mut self, p: &Persisted) {
        let now = self.now();
        let installed: BTreeSet<Tuple> = self.plane.entries().0.iter().map(|m| m.original).collect();
        let mut n = 0;
        // Only what the plane took back (a refused entry's flow starts afresh).
        for m in p.flows.iter().filter(|m| installed.contains(&m.original)) {
            self.endpoint.handle(now, Input::Restore(*m));
            self.flows.insert(m.original);
            n += 1;
        }
        if n > 0 {
            info!(
                flows = n,
                "restored the translation of the previous run; handshaking with the peers again"
            );
            self.record(format!("restored {n} migrated flow(s) from the state file"));
        }
        self.flush();
    }

    /// Writes the plane's entries to the state file if they changed since the last
    /// write (see [`crate::persist`]). A failure is logged, counted and retried at the
    /// next snapshot.
    fn persist(&mut self) {
        let Some(path) = self.options.state_file.clone() else {
            return;
        };
        let (flows, addresses) = self.plane.entries();
        let next = Persisted::new(
            self.endpoint.public_key().to_string(),
            format!("{:?}", self.settings.data_plane).to_lowercase(),
            flows,
            addresses,
        );
        if self.persisted.as_ref().is_some_and(|p| p.same_entries(&next)) {
            return;
        }
        let started = std::time::Instant::now();
        let saved = next.save(&path);
        self.state_save.record(started.elapsed());
        match saved {
            Ok(()) => {
                self.counters.state_saves += 1;
                self.persisted = Some(next);
            }
            Err(e) => {
                self.counters.state_save_errors += 1;
                warn!("cannot persist the translation entries: {e}");
            }
        }
    }

    /// Tells the endpoint what the host has: its flows, then its addresses (at start
    /// and at `roam up`).
    async fn start(&mut self, watcher: &NetWatcher) {
        self.scan_flows().await;
        self.retained = watcher
            .addresses()
            .iter()
            .filter(|a| a.roam_owned)
            .map(|a| a.addr)
            .collect();
        for addr in watcher.usable_addresses() {
            self.address_added(watcher, addr);
        }
        self.flush();
    }

    /// Answers a request on the control socket (ctl.rs). Everything is counted here.
    async fn control(&mut self, caller: ctl::Caller, asked: Asked, watcher: &NetWatcher) -> Response {
        let request = match asked {
            Asked::Request(r) => r,
            Asked::Denied => {
                self.counters.ctl_refused += 1;
                warn!(uid = ?caller.uid, pid = ?caller.pid, "control request refused: not root");
                return Response::Error {
                    message: ctl::PERMISSION_DENIED.into(),
                };
            }
            Asked::Malformed(e) => {
                self.counters.ctl_malformed += 1;
                debug!(uid = ?caller.uid, pid = ?caller.pid, "malformed control request: {e}");
                return Response::Error {
                    message: format!("bad request: {e}"),
                };
            }
        };
        self.counters.ctl_requests += 1;
        debug!(uid = ?caller.uid, pid = ?caller.pid, request = request.name(), "control request");
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Peers => {
                let s = self.status();
                Response::Peers(PeerList {
                    uptime_s: s.uptime_s,
                    peers: s.peers,
                })
            }
            Request::Flows => {
                let s = self.status();
                Response::Flows(FlowList {
                    uptime_s: s.uptime_s,
                    peer_names: s.peer_names(),
                    flows: s.flows,
                })
            }
            Request::Down => self.down(caller).await,
            Request::Up => self.up(caller, watcher).await,
        }
    }

    /// `roam down`: roam stops as it does at exit (without `--keep-entries`), but roamd
    /// stays: every translation entry goes (the data plane closes; migrated sessions go
    /// back to their original tuples, and break if those addresses are gone), the
    /// addresses kept on `lo` are given back, the control sockets close, and the
    /// endpoint is replaced by a fresh one that hears nothing until `roam up`.
    async fn down(&mut self, caller: ctl::Caller) -> Response {
        if !self.up {
            return Response::Ok {
                message: "roam is already down (`roam up` resumes)".into(),
            };
        }
        // The one step that can fail comes first: refused, nothing has changed.
        let fresh = match new_endpoint(&self.ep_config) {
            Ok(e) => e,
            Err(e) => {
                return Response::Error {
                    message: format!("cannot go down: {e:#}"),
                };
            }
        };
        let migrated = self.endpoint.flows().filter(|f| f.current != f.original).count();
        self.up = false;
        // Whatever the plane: nothing roam added stays while it is down, nor comes back
        // at a restart.
        std::mem::replace(&mut self.plane, Plane::None).close(false);
        self.persist();
        for a in std::mem::take(&mut self.retained) {
            self.counters.addresses_released += 1;
            if let Err(e) = netlink::release_address(a).await {
                warn!(addr = %a, "cannot release: {e}");
            }
        }
        for a in self.sockets.addresses().collect::<Vec<_>>() {
            self.sockets.close(a);
        }
        let old = std::mem::replace(&mut self.endpoint, fresh);
        self.retired_counters.add(&NamedCounters::from(old.counters()));
        self.usable.clear();
        self.flows.clear();
        self.unrouted.clear();
        info!(uid = ?caller.uid, pid = ?caller.pid, migrated, "roam down");
        self.record(format!(
            "roam down: translation removed ({migrated} migrated flow(s) back on their original tuples), moves not handled"
        ));
        Response::Ok {
            message: format!(
                "roam is down: translation removed ({migrated} migrated flow(s) back on their original addresses); moves are not handled until `roam up`"
            ),
        }
    }

    /// `roam up`: the data plane opens again and the fresh endpoint hears the host's
    /// flows and addresses, as at start: flows register with their peers again and
    /// future moves are handled. Moves made while down are not undone.
    async fn up(&mut self, caller: ctl::Caller, watcher: &NetWatcher) -> Response {
        if self.up {
            return Response::Ok {
                message: "roam is already up".into(),
            };
        }
        match Plane::open(&self.settings, &[]) {
            Ok((p, _)) => self.plane = p,
            Err(e) => {
                return Response::Error {
                    message: format!("cannot go up: {e:#}"),
                };
            }
        }
        self.up = true;
        self.start(watcher).await;
        let flows = self.flows.len();
        info!(uid = ?caller.uid, pid = ?caller.pid, flows, "roam up");
        self.record(format!("roam up: {flows} flow(s) found again"));
        Response::Ok {
            message: format!("roam is up: {flows} flow(s) registered again, moves are handled"),
        }
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

    /// Hands the endpoint a control datagram (flushed by the caller).
    fn receive(&mut self, r: Received) {
        self.counters.datagrams_received += 1;
        // Read before `roam down` closed the sockets: nobody handles it.
        if self.up {
            let now = self.now();
            self.endpoint.handle(
                now,
                Input::Datagram {
                    local: r.local,
                    remote: r.remote,
                    payload: &r.payload,
                },
            );
        }
    }

    /// The start of a reaction: when it began, and how many flushes had acted.
    fn reacting(&self) -> (std::time::Instant, u64) {
        (std::time::Instant::now(), self.acted)
    }

    /// The end of one: timed if a flush acted meanwhile.
    fn reacted(&mut self, (since, acted): (std::time::Instant, u64)) {
        if self.acted != acted {
            self.reaction.record(since.elapsed());
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
            let started = std::time::Instant::now();
            if let Err(e) = self.plane.apply_batch(&batch) {
                warn!("data plane refused {} command(s): {e}", batch.len());
            }
            self.plane_batch.record(started.elapsed());
            // Before the datagrams that tell the peer: once it acts on them, a restart
            // here must come back with these entries.
            if batch.iter().any(|c| matches!(c, DataPlaneCommand::Table(_))) {
                self.persist();
            }
        }
        let mut sent = false;
        while let Some(t) = self.endpoint.poll_transmit() {
            sent = true;
            self.send(t);
        }
        if sent || !batch.is_empty() {
            self.acted += 1;
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
        if !self.up {
            // `roam up` reads the addresses afresh.
            return;
        }
        if let NetEvent::RouteChanged { default, .. } = ev {
            if !self.unrouted.is_empty() {
                self.send_unrouted();
            }
            // Sent before this change, an outstanding request may have left by a
            // default route that is gone (see `Input::RoutesChanged`). Other routes
            // (a new address's prefix route comes with it) do not say the way out
            // changed.
            if default {
                let now = self.now();
                self.endpoint.handle(now, Input::RoutesChanged);
            }
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
                name: self.peer_names.get(&p.public_key).cloned(),
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
            up: self.up,
            control_socket: self.socket.clone(),
            control_port: self.settings.control_port,
            data_plane: format!("{:?}", self.settings.data_plane).to_lowercase(),
            data_plane_counters: self.plane.counters().map(PlaneCounters::Live),
            addresses: self.usable.iter().copied().collect(),
            retained: self.retained.iter().copied().collect(),
            peers,
            flows: self.endpoint.flows().map(Into::into).collect(),
            counters: {
                let mut c = self.retired_counters.clone();
                c.add(&NamedCounters::from(self.endpoint.counters()));
                c
            },
            daemon: self.counters.clone(),
            timings: Timings {
                reaction: self.reaction.summary(),
                plane_batch: self.plane_batch.summary(),
                state_save: self.state_save.summary(),
            },
            events: self.events.iter().cloned().collect(),
        }
    }

    /// Writes the status file and hands the metrics server its numbers (one snapshot
    /// for both).
    fn write_status(&self) {
        if self.options.status_file.is_none() && self.metrics.is_none() {
            return;
        }
        let status = self.status();
        if let Some(path) = &self.options.status_file
            && let Err(e) = status.write_to(path)
        {
            warn!(path = %path.display(), "cannot write the status: {e}");
        }
        if let Some(m) = &self.metrics {
            m.publish(&status);
        }
    }
}
