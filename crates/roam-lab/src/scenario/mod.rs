//! Lab scenarios: the standard topology, roamd on A and B, real kernel sockets across
//! moves, and a report measured from a capture on B's access link.
//!
//! Every scenario checks what a user of host mobility cares about: every session
//! survived, every byte arrived (SHA-256 at both ends), and how long the stream stood
//! still (the handover gap, from packet timestamps on the wire, not from roam's logs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::capture::{
    Capture, CaptureOptions, CaptureSummary, PacketFilter, Protocol, goodput, handover_gap,
};
use crate::netns::{Child, ChildOutput, LabError, Ns, run_checked};
use crate::topology::{B_IF, Family, MoveTimes, Subnet, Topology, TopologyOptions};
use crate::traffic::{SinkReport, SourceReport, TcpSink, TcpSource};

mod adversary;
mod measure;
mod sessions;
mod tcp;

pub use measure::{GapStats, GoodputComparison, Iperf3Interval, Iperf3Run, Summary};
pub use sessions::{DatagramReport, RoamdFlow, SessionReport};

/// A scenario: its name, what it shows, and how it runs.
pub struct ScenarioInfo {
    pub name: &'static str,
    pub description: &'static str,
    run: fn(&mut Run) -> Result<(), LabError>,
}

/// Every scenario, in the order `roam lab --list` shows them.
pub const SCENARIOS: &[ScenarioInfo] = &[
    ScenarioInfo {
        name: "tcp-move",
        description: "a TCP stream A->B; A moves to subnet 2 mid-stream (byte-exact digest)",
        run: tcp::tcp_move,
    },
    ScenarioInfo {
        name: "two-moves",
        description: "a TCP stream; A moves to subnet 2 and back within one second",
        run: tcp::two_moves,
    },
    ScenarioInfo {
        name: "lossy-new-path",
        description: "a TCP stream; A moves while 20% of packets on the new path are dropped for 2 s",
        run: tcp::lossy_new_path,
    },
    ScenarioInfo {
        name: "peer-stopped",
        description: "a TCP stream; A moves while B's roamd is stopped for 5 s",
        run: tcp::peer_stopped,
    },
    ScenarioInfo {
        name: "udp-move",
        description: "a UDP flow A->B at 1000 datagrams/s, echoed back by B; A moves mid-flow",
        run: sessions::udp_move,
    },
    ScenarioInfo {
        name: "idle-move",
        description: "a TCP connection idle while A moves; then data both ways (B->A first)",
        run: sessions::idle_move,
    },
    ScenarioInfo {
        name: "new-connection",
        description: "after a move, a new TCP connection uses A's new address and no translation",
        run: sessions::new_connection,
    },
    ScenarioInfo {
        name: "control-garbage",
        description: "a TCP stream moved twice; in between, R sends A's and B's roamd garbage, forgeries and replays",
        run: adversary::control_garbage,
    },
    ScenarioInfo {
        name: "peer-without-roam",
        description: "roamd on A only: the connection to B is left alone (it breaks at the move); a new one works",
        run: adversary::peer_without_roam,
    },
    ScenarioInfo {
        name: "iperf3",
        description: "iperf3 (unmodified) A->B for --duration s with a file through it (digest); A moves 30% in; then plain TCP on the same path for the goodput ratio",
        run: measure::iperf3,
    },
    ScenarioInfo {
        name: "moves",
        description: "one bulk TCP stream across --moves moves 2 s apart (subnet 1 <-> 2): each gap, then p50/p90/max",
        run: measure::moves,
    },
];

/// How a lab run is set up.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub family: Family,
    /// The `roam` executable (roamd runs as `roam daemon`).
    pub roam_binary: PathBuf,
    pub seed: u64,
    pub rtt: Duration,
    pub rate_bps: u64,
    /// Run roamd on A and B (false: the plain-TCP reference, which dies).
    pub roam: bool,
    /// roamd makes TCP retransmit at once after a move.
    pub nudge: bool,
    /// roamd's `data_plane` setting, as its configuration file names it ("nftables",
    /// "tun"); roamd refuses to start on a name it does not know.
    pub data_plane: String,
    /// Bytes of a bulk stream.
    pub bytes: u64,
    /// Keep roamd's logs, status files and the capture here (a temporary directory
    /// otherwise, removed at the end).
    pub keep: Option<PathBuf>,
    /// Moves in the `moves` scenario.
    pub moves: usize,
    /// Length of the `iperf3` scenario's run across the move (whole seconds).
    pub duration: Duration,
}

impl LabOptions {
    pub fn new(roam_binary: PathBuf) -> LabOptions {
        LabOptions {
            family: Family::V4,
            roam_binary,
            seed: 1,
            rtt: Duration::from_millis(20),
            rate_bps: 100_000_000,
            roam: true,
            nudge: true,
            data_plane: "nftables".into(),
            bytes: 40_000_000,
            keep: None,
            moves: 10,
            duration: Duration::from_secs(10),
        }
    }
}

/// One stream's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sent_sha256: String,
    pub received_sha256: String,
    /// Completed, and the digests match.
    pub ok: bool,
}

impl StreamReport {
    /// A stream of `bytes` from a [`TcpSource`] to a [`TcpSink`]: ok when both ends
    /// completed and hashed the same `bytes` bytes.
    fn of(name: &str, bytes: u64, sent: SourceReport, got: SinkReport) -> StreamReport {
        StreamReport {
            name: name.to_owned(),
            bytes_sent: sent.bytes,
            bytes_received: got.bytes,
            ok: sent.completed && got.completed && sent.sha256 == got.sha256 && got.bytes == bytes,
            sent_sha256: sent.sha256,
            received_sha256: got.sha256,
        }
    }
}

/// One fact a scenario checked: what it expected and what it saw.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub what: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

/// One move as the wire saw it.
#[derive(Clone, Debug, Serialize)]
pub struct MoveReport {
    /// Seconds from the start of the run.
    pub at_s: f64,
    pub from: String,
    pub to: String,
    /// How long the address change itself took (delete, add, routes).
    pub address_change_ms: f64,
    /// The longest time no new payload reached B's link within 3 s of the move.
    pub gap_ms: Option<f64>,
    pub recovered: bool,
    pub goodput_before_mbps: f64,
    pub goodput_after_mbps: f64,
}

/// What a lab run found.
#[derive(Clone, Debug, Serialize)]
pub struct LabReport {
    pub scenario: String,
    pub family: String,
    pub roam: bool,
    pub nudge: bool,
    pub data_plane: String,
    pub streams: Vec<StreamReport>,
    pub moves: Vec<MoveReport>,
    /// Over all moves and streams: the gap distribution, goodput against plain TCP,
    /// iperf3's own report (the measurement scenarios).
    pub summary: Option<Summary>,
    /// Sessions checked beyond their bytes: addresses each end saw, roamd's view of
    /// them, datagram counts.
    pub sessions: Vec<SessionReport>,
    /// Facts the scenario checked beyond the streams (counters, state left unchanged).
    pub checks: Vec<CheckReport>,
    /// Streams the scenario expected to break (roam cannot keep them, e.g. the far end
    /// runs no roam): their breaking is not a failure, and they are not called survived.
    pub expected_broken: Vec<String>,
    /// roamd's status on each host at the end (its JSON snapshot).
    pub roamd: Vec<(String, serde_json::Value)>,
    pub notes: Vec<String>,
    pub ok: bool,
    pub wall_s: f64,
}

impl std::fmt::Display for LabReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "lab scenario {} ({}, roam {}, nudge {}, data plane {})",
            self.scenario,
            self.family,
            if self.roam { "on" } else { "off" },
            if self.nudge { "on" } else { "off" },
            self.data_plane
        )?;
        for s in &self.streams {
            writeln!(
                f,
                "  stream {}: {} of {} bytes  {}",
                s.name,
                s.bytes_received,
                s.bytes_sent,
                if s.ok {
                    "OK"
                } else if self.expected_broken.contains(&s.name) {
                    "BROKEN, as expected"
                } else {
                    "BROKEN"
                }
            )?;
            writeln!(f, "      sent     sha256 {}", s.sent_sha256)?;
            writeln!(f, "      received sha256 {}", s.received_sha256)?;
        }
        for m in &self.moves {
            write!(
                f,
                "  move at {:.3} s: {} -> {} (address change {:.1} ms)",
                m.at_s, m.from, m.to, m.address_change_ms
            )?;
            match m.gap_ms {
                Some(g) if m.recovered => write!(f, "; handover gap {g:.1} ms on the wire")?,
                Some(g) => write!(f, "; stream silent for {g:.0} ms and did not recover")?,
                None => write!(f, "; stream not flowing at the move")?,
            }
            writeln!(
                f,
                "; goodput {:.1} -> {:.1} Mbit/s",
                m.goodput_before_mbps, m.goodput_after_mbps
            )?;
        }
        if let Some(s) = &self.summary {
            write!(f, "{s}")?;
        }
        for s in &self.sessions {
            write!(f, "{s}")?;
        }
        for c in &self.checks {
            writeln!(
                f,
                "  check {}: expected {}, saw {}  {}",
                c.what,
                c.expected,
                c.observed,
                if c.ok { "OK" } else { "FAILED" }
            )?;
        }
        for (host, st) in &self.roamd {
            let c = &st["counters"];
            writeln!(
                f,
                "  roamd {host}: {} peer(s), {} flow(s); messages sent {}, retransmits {}, dropped malformed {} / bad auth {} / unknown session {}",
                st["peers"].as_array().map_or(0, Vec::len),
                st["flows"].as_array().map_or(0, Vec::len),
                c["messages_sent"],
                c["retransmits"],
                c["drop_malformed"],
                c["drop_bad_auth"],
                c["drop_unknown_session"],
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        writeln!(f, "  wall time {:.1} s", self.wall_s)?;
        writeln!(
            f,
            "result: {}",
            if !self.ok {
                "FAILED"
            } else if !self.expected_broken.is_empty() {
                "OK, every check passed; the streams marked 'as expected' broke, as roam cannot keep them, and every other stream survived byte-exact"
            } else if self.sessions.iter().any(|s| s.datagrams.is_some()) {
                // UDP may lose datagrams while the path changes; the claim is narrower.
                "OK, every session survived and every datagram that arrived was whole and arrived once"
            } else {
                "OK, every session survived and every byte arrived"
            }
        )
    }
}

/// Runs the scenario `name`.
/// The scenario `name`, or an error that lists them all.
pub fn find(name: &str) -> Result<&'static ScenarioInfo, LabError> {
    SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        LabError::Invalid(format!(
            "no lab scenario {name:?} (there are: {})",
            names.join(", ")
        ))
    })
}

/// Runs the scenario `name`.
pub fn run(name: &str, options: &LabOptions) -> Result<LabReport, LabError> {
    let info = find(name)?;
    let mut run = Run::start(info.name, options)?;
    let result = (info.run)(&mut run);
    run.finish(result)
}

/// A run in progress: the topology, roamd on both hosts, the capture.
pub struct Run {
    name: &'static str,
    options: LabOptions,
    topology: Topology,
    dir: PathBuf,
    temporary: bool,
    roamd: Vec<(String, Child)>,
    capture: Option<Capture>,
    started: SystemTime,
    wall: Instant,
    streams: Vec<StreamReport>,
    moves: Vec<MoveTimes>,
    /// Streams to measure gaps on: packets to this address and port.
    measured: Option<SocketAddr>,
    /// Packets to measure gaps on, when not TCP to `measured` (a UDP flow, say).
    measured_filter: Option<PacketFilter>,
    sessions: Vec<SessionReport>,
    checks: Vec<CheckReport>,
    expected_broken: Vec<String>,
    notes: Vec<String>,
    /// What a measurement scenario asks `finish` to summarise.
    plan: Option<measure::Plan>,
}

impl Run {
    fn start(name: &'static str, options: &LabOptions) -> Result<Run, LabError> {
        let topology = Topology::build(TopologyOptions {
            rtt: options.rtt,
            rate_bps: options.rate_bps,
            seed: options.seed,
            ..TopologyOptions::default()
        })?;
        let (dir, temporary) = match &options.keep {
            Some(d) => (d.clone(), false),
            None => (
                // One directory per run: two labs at once must not share keys or logs.
                std::env::temp_dir().join(format!("roam-lab-{}-{name}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let capture = Capture::start(
            topology.b(),
            B_IF,
            CaptureOptions {
                pcap: Some(dir.join("b.pcap")),
                ..CaptureOptions::default()
            },
        )?;
        let mut run = Run {
            name,
            options: options.clone(),
            topology,
            dir,
            temporary,
            roamd: Vec::new(),
            capture: Some(capture),
            started: SystemTime::now(),
            wall: Instant::now(),
            streams: Vec::new(),
            moves: Vec::new(),
            measured: None,
            measured_filter: None,
            sessions: Vec::new(),
            checks: Vec::new(),
            expected_broken: Vec::new(),
            notes: Vec::new(),
            plan: None,
        };
        if options.roam {
            run.start_roamd()?;
        }
        Ok(run)
    }

    fn family(&self) -> Family {
        self.options.family
    }

    fn a(&self) -> &Ns {
        self.topology.a()
    }

    fn b(&self) -> &Ns {
        self.topology.b()
    }

    /// Writes a key and a configuration for A and B (each trusting the other) and
    /// starts `roam daemon` in both namespaces; returns when both report their
    /// addresses.
    fn start_roamd(&mut self) -> Result<(), LabError> {
        // Keys come from `roam keygen`, the one way roam writes a key (mode 0600, from
        // the OS's randomness).
        let mut public = Vec::new();
        for host in ["a", "b"] {
            let dir = self.dir.join(host);
            std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating a host directory", e))?;
            let key = dir.join("host.key");
            // A kept directory from an earlier run: keygen never overwrites.
            let _ = std::fs::remove_file(&key);
            let bin = self.options.roam_binary.display().to_string();
            let out = run_checked(
                &bin,
                &["keygen", &key.display().to_string()],
                None,
                Duration::from_secs(10),
            )?;
            public.push(out.stdout.trim().to_owned());
        }
        for (i, host) in ["a", "b"].into_iter().enumerate() {
            let peer = if host == "a" { "b" } else { "a" };
            let config = format!(
                "# written by roam lab\nprivate_key_file = \"host.key\"\n\n[[peer]]\nname = \"{peer}\"\npublic_key = \"{}\"\n\n[daemon]\nnudge = {}\ndata_plane = \"{}\"\n",
                public[1 - i],
                self.options.nudge,
                self.options.data_plane
            );
            std::fs::write(self.dir.join(host).join("roam.toml"), config)
                .map_err(|e| LabError::io("writing a configuration", e))?;
        }
        for host in ["a", "b"] {
            self.spawn_roamd(host)?;
        }
        for host in ["a", "b"] {
            self.wait_status(host, Duration::from_secs(10), |s| {
                s["addresses"].as_array().is_some_and(|a| !a.is_empty())
            })?;
        }
        Ok(())
    }

    fn spawn_roamd(&mut self, host: &str) -> Result<(), LabError> {
        let dir = self.dir.join(host);
        let status = dir.join("status.json");
        let _ = std::fs::remove_file(&status);
        let ns = if host == "a" { self.a() } else { self.b() };
        let bin = self.options.roam_binary.display().to_string();
        let config = dir.join("roam.toml").display().to_string();
        let status_arg = status.display().to_string();
        let log_level = std::env::var("ROAM_LAB_LOG").unwrap_or_else(|_| "info".into());
        let child = ns.spawn(
            &[
                "env",
                &format!("ROAM_LOG={log_level}"),
                &bin,
                "daemon",
                "--config",
                &config,
                "--status-file",
                &status_arg,
            ],
            ChildOutput::File(dir.join("roamd.log")),
        )?;
        self.roamd.retain(|(h, _)| h != host);
        self.roamd.push((host.to_owned(), child));
        Ok(())
    }

    fn roamd(&self, host: &str) -> Result<&Child, LabError> {
        self.roamd
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, c)| c)
            .ok_or_else(|| LabError::Invalid(format!("roamd is not running on {host}")))
    }

    /// Stops roamd on `host` the way an operator or a service manager would (SIGTERM:
    /// it deletes its data plane's kernel state and writes its last status), waiting up
    /// to 10 s; kills it past that. True if it exited on SIGTERM.
    fn stop_roamd(&mut self, host: &str) -> Result<bool, LabError> {
        let child = self.roamd(host)?;
        crate::sys::signal(child.pid(), libc::SIGTERM)
            .map_err(|e| LabError::io(format!("stopping roamd on {host}"), e))?;
        let exited = child.wait_timeout(Duration::from_secs(10))?.is_some();
        if !exited {
            child.kill();
        }
        self.roamd.retain(|(h, _)| h != host);
        Ok(exited)
    }

    fn status_path(&self, host: &str) -> PathBuf {
        self.dir.join(host).join("status.json")
    }

    /// roamd's last status snapshot on `host`.
    pub fn status(&self, host: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.status_path(host)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits (bounded) until `host`'s status satisfies `ok`.
    fn wait_status(
        &self,
        host: &str,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, LabError> {
        self.wait_status_since(host, UNIX_EPOCH, within, ok)
    }

    /// Waits (bounded) until `host`'s status, from a snapshot written after `after`
    /// (roamd rewrites it every second), satisfies `ok`.
    fn wait_status_since(
        &self,
        host: &str,
        after: SystemTime,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, LabError> {
        let deadline = Instant::now() + within;
        loop {
            // The file's time first: what is read afterwards is at least that new (roamd
            // replaces it by rename).
            let fresh = std::fs::metadata(self.status_path(host))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > after);
            if fresh
                && let Some(s) = self.status(host)
                && ok(&s)
            {
                return Ok(s);
            }
            if let Some((_, c)) = self.roamd.iter().find(|(h, _)| h == host)
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(LabError::Invalid(format!(
                    "roamd on {host} exited ({status}); see {}",
                    self.dir.join(host).join("roamd.log").display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "roamd on {host} did not reach the expected state within {within:?}; see {}",
                    self.dir.join(host).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until both roamds know each other and share at least one flow: the
    /// session a move needs exists.
    fn wait_sessions(&self) -> Result<(), LabError> {
        self.wait_flows(1)
    }

    /// Waits until both roamds know each other and share at least `flows` flows.
    fn wait_flows(&self, flows: u64) -> Result<(), LabError> {
        if !self.options.roam {
            return Ok(());
        }
        for host in ["a", "b"] {
            self.wait_status(host, Duration::from_secs(10), |s| {
                s["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["flows"].as_u64() >= Some(flows)))
            })?;
        }
        Ok(())
    }

    fn move_a(&mut self) -> Result<(), LabError> {
        let t = if self.topology.a_subnet() == Subnet::One {
            self.topology.move_a()?
        } else {
            self.topology.move_a_back()?
        };
        self.moves.push(t);
        Ok(())
    }

    /// A bulk stream A->B of `options.bytes`, measured at B's link.
    fn bulk(&mut self, port: u16) -> Result<(TcpSink, TcpSource), LabError> {
        let listen = SocketAddr::new(self.topology.b_address(self.family()), port);
        let sink = TcpSink::start(self.b(), listen, Duration::from_secs(60))?;
        let source = TcpSource::start(
            self.a(),
            listen,
            self.options.bytes,
            self.options.seed,
            Duration::from_secs(60),
        )?;
        self.measured = Some(listen);
        Ok((sink, source))
    }

    /// Waits until the source has handed `fraction` of its bytes to the kernel.
    fn wait_sent(&self, source: &TcpSource, fraction: f64) -> Result<(), LabError> {
        let target = (self.options.bytes as f64 * fraction) as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while source.sent() < target {
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "the stream did not reach {target} bytes within 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn finish_bulk(&mut self, name: &str, sink: TcpSink, source: TcpSource) -> Result<(), LabError> {
        let sent = source.join()?;
        let got = sink.join()?;
        self.streams
            .push(StreamReport::of(name, self.options.bytes, sent, got));
        Ok(())
    }

    /// Each move as B's link saw it: the gap within 3 s of the move (and not past the
    /// moves either side, so that two moves do not report one silence twice), and
    /// goodput over the second before and the second after.
    fn measure_moves(&self, summary: Option<&CaptureSummary>) -> Vec<MoveReport> {
        const WINDOW: Duration = Duration::from_secs(3);
        let since =
            |later: SystemTime, earlier: SystemTime| later.duration_since(earlier).unwrap_or_default();
        let mut reports = Vec::new();
        for (i, t) in self.moves.iter().enumerate() {
            let mut report = MoveReport {
                at_s: since(t.started, self.started).as_secs_f64(),
                from: format!("{:?}", t.from),
                to: format!("{:?}", t.to),
                address_change_ms: t.duration().as_secs_f64() * 1e3,
                gap_ms: None,
                recovered: false,
                goodput_before_mbps: 0.0,
                goodput_after_mbps: 0.0,
            };
            let filter = self
                .measured_filter
                .or_else(|| self.measured.map(|dst| PacketFilter::to(Protocol::Tcp, dst)));
            if let (Some(summary), Some(filter)) = (summary, filter) {
                // Half-way back to the previous move: that move's own silence lies just
                // after it and must not be taken for this one's.
                let before = i.checked_sub(1).map_or(WINDOW, |p| {
                    (since(t.started, self.moves[p].started) / 2).min(WINDOW)
                });
                let after = self
                    .moves
                    .get(i + 1)
                    .map_or(WINDOW, |n| since(n.started, t.started).min(WINDOW));
                if let Some(g) = handover_gap(&summary.records, &filter, t.started, before, after) {
                    report.gap_ms = Some(g.length.as_secs_f64() * 1e3);
                    report.recovered = g.recovered;
                }
                let second = Duration::from_secs(1);
                let mbps = |from: SystemTime, to: SystemTime| {
                    goodput(&summary.records, &filter, from, to).bits_per_second() / 1e6
                };
                report.goodput_before_mbps = mbps(t.started - second, t.started);
                report.goodput_after_mbps = mbps(t.started, t.started + second);
            }
            reports.push(report);
        }
        reports
    }

    fn finish(mut self, result: Result<(), LabError>) -> Result<LabReport, LabError> {
        // Let the last snapshot land before reading it.
        std::thread::sleep(Duration::from_millis(1100));
        let roamd: Vec<(String, serde_json::Value)> = ["a", "b"]
            .iter()
            .filter_map(|h| self.status(h).map(|s| (h.to_string(), s)))
            .collect();
        for (_, c) in &self.roamd {
            c.kill();
        }
        let summary = self.capture.take().map(Capture::stop).transpose()?;
        if let Err(e) = &result {
            self.notes.push(format!("scenario error: {e}"));
        }
        let moves = self.measure_moves(summary.as_ref());
        let measured = self
            .plan
            .take()
            .map(|p| p.summarize(self.started, &moves, summary.as_ref()));
        if let Some(s) = &summary
            && s.kernel_drops > 0
        {
            self.notes.push(format!(
                "the capture missed {} frames (gaps may read long)",
                s.kernel_drops
            ));
        }
        if let Some(s) = &summary
            && s.over_limit > 0
        {
            self.notes.push(format!(
                "the capture kept its first {} packets only ({} more not recorded): measurements past that read as silence",
                s.records.len(),
                s.over_limit
            ));
        }
        let ok = result.is_ok()
            && !self.streams.is_empty()
            && self
                .streams
                .iter()
                .all(|s| s.ok || self.expected_broken.contains(&s.name))
            && self.streams.iter().any(|s| s.ok)
            && self.sessions.iter().all(|s| s.ok)
            && self.checks.iter().all(|c| c.ok);
        if !(self.temporary && ok) {
            self.notes.push(format!("logs kept in {}", self.dir.display()));
        }
        let report = LabReport {
            scenario: self.name.to_owned(),
            family: format!("{:?}", self.options.family).to_lowercase(),
            roam: self.options.roam,
            nudge: self.options.nudge,
            data_plane: self.options.data_plane.clone(),
            streams: self.streams.clone(),
            moves,
            summary: measured,
            sessions: self.sessions.clone(),
            checks: self.checks.clone(),
            expected_broken: self.expected_broken.clone(),
            roamd,
            notes: self.notes.clone(),
            ok,
            wall_s: self.wall.elapsed().as_secs_f64(),
        };
        if self.temporary && ok {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        Ok(report)
    }
}
