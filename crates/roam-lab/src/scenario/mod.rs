//! Lab scenarios: the standard topology, roamd on A and B, real kernel sockets across
//! moves, and a report measured from a capture on B's access link.
//!
//! Every scenario checks what a user of host mobility cares about: every session
//! survived, every byte arrived (SHA-256 at both ends), and how long the stream stood
//! still (the handover gap, from packet timestamps on the wire, not from roam's logs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::capture::{
    Capture, CaptureOptions, CaptureSummary, PacketFilter, Protocol, goodput, handover_gap,
};
use crate::netns::{LabError, Ns};
use crate::roamd::{RoamdConfig, Roamds};
use crate::timeline::Timeline;
use crate::topology::{B_IF, Family, MoveTimes, Subnet, Topology, TopologyOptions};
use crate::traffic::{SinkReport, SourceReport, TcpSink, TcpSource};

mod adversary;
mod measure;
mod output;
mod programs;
mod restart;
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
    ScenarioInfo {
        name: "curl",
        description: "curl (unmodified) downloads --bytes from python3 -m http.server on B; A moves 30% in (exit 0, digest)",
        run: programs::curl,
    },
    ScenarioInfo {
        name: "ssh",
        description: "ssh (unmodified, to Debian's sshd on B) streams a command's --bytes of output; A moves 30% in (exit 0, digest)",
        run: programs::ssh,
    },
    ScenarioInfo {
        name: "socat",
        description: "socat at both ends exchanges --bytes each way on one TCP connection; A moves 30% in (exit 0, digests)",
        run: programs::socat,
    },
    ScenarioInfo {
        name: "restart-kill9",
        description: "a TCP stream; A moves; A's roamd is killed (SIGKILL) and restarted 1 s later from its state file; A moves back",
        run: restart::restart_kill9,
    },
    ScenarioInfo {
        name: "upgrade",
        description: "a TCP stream; A moves; A's roamd is stopped (SIGTERM) and started from a copy of the binary at a new path; A moves back",
        run: restart::upgrade,
    },
    ScenarioInfo {
        name: "restart-b",
        description: "a TCP stream; A moves; B's roamd is killed (SIGKILL) and restarted 1 s later from its state file; A moves back",
        run: restart::restart_b,
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
    /// Write the report (`report.txt`, `report.json`) and the measured stream's goodput
    /// (`goodput.png`, `goodput.csv`) here; nothing is written when `None`.
    pub out: Option<PathBuf>,
    /// The goodput series' bin width (1 ms to 10 s).
    pub bin: Duration,
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
            out: None,
            bin: crate::timeline::DEFAULT_BIN,
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
    /// Where the gap lay, seconds from the start of the run: the last payload packet
    /// before it, and the first after it (or the end of the window).
    pub gap_from_s: Option<f64>,
    pub gap_to_s: Option<f64>,
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
    /// The measured stream's goodput over the run, its moves and gaps (what the plot
    /// shows); `None` when the scenario measures no stream.
    pub timeline: Option<Timeline>,
    /// The goodput plot (PNG), when one was written.
    pub plot: Option<String>,
    /// Where the report and the plot were written (`LabOptions::out`).
    pub out_dir: Option<String>,
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
        if let Some(p) = &self.plot {
            writeln!(f, "  goodput plot: {p}")?;
        }
        if let Some(d) = &self.out_dir {
            writeln!(f, "  report written to {d}")?;
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
    let mut report = run.finish(result)?;
    if let Some(dir) = &options.out {
        output::write_report(dir, &mut report);
    }
    Ok(report)
}

/// A run in progress: the topology, roamd on both hosts, the capture.
pub struct Run {
    name: &'static str,
    options: LabOptions,
    topology: Topology,
    dir: PathBuf,
    temporary: bool,
    roamds: Roamds,
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
        // Bad options are refused before anything is built.
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&options.bin) {
            return Err(LabError::Invalid(format!(
                "the goodput bin must be 1 ms to 10 s, not {:?}",
                options.bin
            )));
        }
        if let Some(out) = &options.out {
            output::prepare(out)?;
        }
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
        let roamds = Roamds::new(&dir, &options.roam_binary);
        let mut run = Run {
            name,
            options: options.clone(),
            topology,
            dir,
            temporary,
            roamds,
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
        self.roamds.configure(
            &["a", "b"],
            &RoamdConfig {
                nudge: self.options.nudge,
                data_plane: self.options.data_plane.clone(),
                move_message: None,
            },
        )?;
        for host in ["a", "b"] {
            self.spawn_roamd(host)?;
        }
        self.roamds.wait_up(&["a", "b"])
    }

    fn spawn_roamd(&mut self, host: &str) -> Result<(), LabError> {
        let bin = self.options.roam_binary.clone();
        self.spawn_roamd_from(host, &bin)
    }

    /// Starts `roam daemon` on `host` from the executable `bin` (see
    /// [`Roamds::spawn_from`]).
    fn spawn_roamd_from(&mut self, host: &str, bin: &std::path::Path) -> Result<(), LabError> {
        let ns = if host == "a" {
            self.topology.a()
        } else {
            self.topology.b()
        };
        self.roamds.spawn_from(ns, host, bin)
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
        self.roamds.wait_flows(&["a", "b"], flows)
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
                gap_from_s: None,
                gap_to_s: None,
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
                    report.gap_from_s = Some(since(g.from, self.started).as_secs_f64());
                    report.gap_to_s = Some(since(g.to, self.started).as_secs_f64());
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
            .filter_map(|h| self.roamds.status(h).map(|s| (h.to_string(), s)))
            .collect();
        // What `roam status` shows on each host at the end, for a person to read.
        if let Some(out) = self.options.out.clone() {
            for host in self.roamds.hosts() {
                let socket = self.roamds.socket(&host);
                match output::write_roam_status(&out, &self.options.roam_binary, &host, &socket) {
                    Ok(path) => self
                        .notes
                        .push(format!("`roam status` on {host}: {}", path.display())),
                    Err(e) => self.notes.push(format!("no `roam status` from {host}: {e}")),
                }
            }
        }
        self.roamds.kill_all();
        let summary = self.capture.take().map(Capture::stop).transpose()?;
        if let Err(e) = &result {
            self.notes.push(format!("scenario error: {e}"));
        }
        let moves = self.measure_moves(summary.as_ref());
        let timeline = self.timeline(summary.as_ref(), &moves);
        let plot = match (&self.options.out, &timeline) {
            (Some(dir), Some(t)) => match output::write_plot(dir, self.name, &self.options, t) {
                Ok(path) => Some(path.display().to_string()),
                Err(e) => {
                    self.notes.push(format!("no goodput plot: {e}"));
                    None
                }
            },
            _ => None,
        };
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
            timeline,
            plot,
            out_dir: self.options.out.as_ref().map(|d| d.display().to_string()),
            ok,
            wall_s: self.wall.elapsed().as_secs_f64(),
        };
        if self.temporary && ok {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        Ok(report)
    }
}

/// Records a check in the report: what was checked, what was expected and observed.
pub(super) fn check(run: &mut Run, what: String, expected: impl ToString, observed: impl ToString, ok: bool) {
    run.checks.push(CheckReport {
        what,
        expected: expected.to_string(),
        observed: observed.to_string(),
        ok,
    });
}

/// Stops the stream and waits (bounded) for everything sent to arrive; reports it.
pub(super) fn end_stream(run: &mut Run, sink: TcpSink, source: TcpSource) -> Result<(), LabError> {
    let end = crate::traffic::end_stream(sink, source, Duration::from_secs(10))?;
    if let Err(e) = &end.sent {
        run.notes.push(format!("the source failed: {e}"));
    }
    run.streams.push(StreamReport {
        name: "bulk a->b".into(),
        bytes_sent: end.sent.as_ref().map_or(end.handed, |s| s.bytes),
        bytes_received: end.got.bytes,
        ok: end.intact(),
        sent_sha256: end.sent.as_ref().map_or(String::new(), |s| s.sha256.clone()),
        received_sha256: end.got.sha256.clone(),
    });
    Ok(())
}
