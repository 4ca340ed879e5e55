//! Handover: N moves of A under a workload, for every system that can survive one, and
//! plain TCP as the reference that dies.
//!
//! Each system runs on a fresh topology with one session open across the moves, either
//! a bulk TCP transfer A->B (a seeded pattern, digested at both ends) or a
//! request/response loop (A asks, B answers, every answer checked). A moves between its
//! two subnets every `interval`; the carrier decides how (roam and WireGuard: the lab's
//! break-before-make address change; Multipath TCP: make-before-break or
//! break-before-make through its path manager's endpoints).
//!
//! - **Gap**: from a capture on B's link, the longest silence of the data direction's
//!   packets ([`Carrier::wire_filter`]) around each move ([`handover_gap`]), from the last
//!   payload packet before it to the first after. For WireGuard that is the overlay's
//!   datagrams; for Multipath TCP any subflow's segments.
//! - **Survived**: the session made progress between 300 ms after the move (when what
//!   was on the wire at the move has arrived) and the next move (bytes at B, or
//!   completed transactions). A session that did not is
//!   counted dead, closed, and replaced by a new one (from A's new address) before the
//!   next move, so that every move is measured.
//! - **Bytes lost**: what the bulk source handed to its kernel and the sink never got,
//!   over the sessions that died; a survivor's digests must match at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use roam_lab::capture::{Capture, CaptureOptions, PacketRecord, handover_gap};
use roam_lab::scenario::GapStats;
use roam_lab::systems::Carrier;
use roam_lab::topology::{B_IF, Family, MoveTimes, Topology};
use roam_lab::traffic::{RrClient, RrServer, TcpSink, TcpSource};
use serde::Serialize;

use super::systems::System;

const FIRST_PORT: u16 = 5400;
/// A bulk session's size: more than any run sends (it is stopped at the end).
const BULK_BYTES: u64 = 1 << 40;
/// After a move, when what was already on the wire has arrived (many round trips of the
/// lab's paths, and their queues).
const DRAINED: Duration = Duration::from_millis(300);
/// Request and response sizes of the request/response workload.
const REQUEST: usize = 200;
const RESPONSE: usize = 2000;

/// What runs across the moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One bulk TCP stream A->B.
    Bulk,
    /// Requests from A answered by B, one at a time, back to back.
    Rr,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::Bulk => "bulk",
            Workload::Rr => "req/resp",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub systems: Vec<System>,
    pub workloads: Vec<Workload>,
    #[serde(skip)]
    pub family: Family,
    pub rtt_ms: f64,
    pub rate_mbps: f64,
    pub loss: f64,
    pub moves: usize,
    /// Between moves.
    pub interval_s: f64,
    /// From a session's start to its first move.
    pub warm_up_s: f64,
    pub seed: u64,
    #[serde(skip)]
    pub binary: PathBuf,
    #[serde(skip)]
    pub work_dir: PathBuf,
}

/// One move as measured.
#[derive(Clone, Debug, Serialize)]
pub struct Move {
    /// Seconds from the run's first move.
    pub at_s: f64,
    pub address_change_ms: f64,
    /// `None`: the session was not flowing at the move (nothing to measure).
    pub gap_ms: Option<f64>,
    pub survived: bool,
}

/// One system under one workload.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub system: System,
    pub label: String,
    pub workload: Workload,
    pub moves: Vec<Move>,
    /// Gaps of the moves the session survived.
    pub gap_ms: Option<GapStats>,
    /// The median gap in round trips.
    pub gap_p50_rtts: Option<f64>,
    pub sessions: usize,
    pub sessions_died: usize,
    /// Bulk: bytes handed to the kernel that never arrived, over the sessions that died.
    pub bytes_lost: u64,
    /// Request/response: transactions completed, and answers that were wrong.
    pub transactions: u64,
    pub bad_answers: u64,
    /// Every session that survived ended with matching digests (bulk) or only right
    /// answers (request/response).
    pub intact: bool,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

impl Row {
    /// Nothing measured yet.
    fn new(system: System, workload: Workload) -> Row {
        Row {
            system,
            label: system.label(false).to_owned(),
            workload,
            moves: Vec::new(),
            gap_ms: None,
            gap_p50_rtts: None,
            sessions: 0,
            sessions_died: 0,
            bytes_lost: 0,
            transactions: 0,
            bad_answers: 0,
            intact: true,
            error: None,
            notes: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub rows: Vec<Row>,
}

impl Report {
    /// Every run completed, and no roam session died or lost a byte.
    pub fn roam_kept_everything(&self) -> bool {
        self.rows
            .iter()
            .filter(|r| r.system.is_roam())
            .all(|r| r.error.is_none() && r.sessions_died == 0 && r.bytes_lost == 0 && r.intact)
    }

    pub fn complete(&self) -> bool {
        self.rows.iter().all(|r| r.error.is_none())
    }
}

pub fn measure(options: &Options) -> Result<Report> {
    let mut rows = Vec::new();
    for &workload in &options.workloads {
        for &system in &options.systems {
            tracing::info!("handover: {} under {}", system.label(false), workload.label());
            let row = match measure_one(options, system, workload) {
                Ok(row) => row,
                Err(e) => {
                    tracing::warn!("handover, {}: {e:#}", system.label(false));
                    Row {
                        intact: false,
                        error: Some(format!("{e:#}")),
                        ..Row::new(system, workload)
                    }
                }
            };
            rows.push(row);
        }
    }
    Ok(Report {
        options: options.clone(),
        rows,
    })
}

fn measure_one(options: &Options, system: System, workload: Workload) -> Result<Row> {
    let topology = Topology::build(roam_lab::topology::TopologyOptions {
        rtt: Duration::from_secs_f64(options.rtt_ms / 1e3),
        rate_bps: (options.rate_mbps * 1e6) as u64,
        loss: options.loss,
        seed: options.seed,
        prefix: "rbh".into(),
        ..Default::default()
    })?;
    let dir = options
        .work_dir
        .join(format!("handover-{system:?}-{workload:?}").to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut carrier = system.start(&topology, options.family, &dir, &options.binary)?;
    let capture = Capture::start(
        topology.b(),
        B_IF,
        CaptureOptions {
            max_records: 4_000_000,
            ..CaptureOptions::default()
        },
    )?;
    let result = run_moves(options, system, workload, &topology, carrier.as_mut());
    let notes = carrier.notes();
    let stopped = carrier.stop(&topology);
    let records = capture.stop()?.records;
    let (mut row, pending) = result?;
    stopped.with_context(|| format!("stopping {}", system.label(false)))?;
    row.notes = notes;
    measure_gaps(options, &mut row, &pending, &records);
    Ok(row)
}

/// A move as it happened, before the capture is read.
struct Pending {
    times: MoveTimes,
    filter: roam_lab::capture::PacketFilter,
    survived: bool,
}

/// The session open across the moves.
enum Session {
    Bulk { sink: TcpSink, source: TcpSource },
    Rr { server: RrServer, client: RrClient },
}

/// How a session ended.
#[derive(Default)]
struct Closed {
    bytes_lost: u64,
    transactions: u64,
    bad_answers: u64,
    intact: bool,
}

impl Session {
    fn open(
        workload: Workload,
        topology: &Topology,
        carrier: &dyn Carrier,
        family: Family,
        port: u16,
        seed: u64,
    ) -> Result<Session> {
        let to = carrier.b_endpoint(topology, family, port);
        let listen = SocketAddr::new(
            match to.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            port,
        );
        let protocol = carrier.tcp_protocol();
        // Longer than any run: the sessions are stopped, not timed out.
        let deadline = Duration::from_secs(3600);
        Ok(match workload {
            Workload::Bulk => {
                let sink = TcpSink::start_with(topology.b(), listen, deadline, protocol)?;
                let source = TcpSource::start_with(topology.a(), to, BULK_BYTES, seed, deadline, protocol)?;
                Session::Bulk { sink, source }
            }
            Workload::Rr => {
                let server = RrServer::start(topology.b(), listen, REQUEST, RESPONSE, deadline, protocol)?;
                let client = RrClient::start(topology.a(), to, REQUEST, RESPONSE, seed, deadline, protocol)?;
                Session::Rr { server, client }
            }
        })
    }

    /// Bytes at B, or transactions completed.
    fn progress(&self) -> u64 {
        match self {
            Session::Bulk { sink, .. } => sink.received(),
            Session::Rr { client, .. } => client.transactions(),
        }
    }

    /// Ends the session: a live one is closed cleanly and checked end to end, a dead
    /// one is torn down and its losses counted.
    fn close(self, alive: bool) -> Result<Closed> {
        match self {
            Session::Bulk { sink, source } => {
                let drain = Duration::from_secs(if alive { 10 } else { 1 });
                let end = roam_lab::traffic::end_stream(sink, source, drain)?;
                Ok(Closed {
                    bytes_lost: end.lost(),
                    intact: end.intact(),
                    ..Closed::default()
                })
            }
            Session::Rr { server, client } => {
                let report = client.stop()?;
                let _ = server.stop();
                Ok(Closed {
                    transactions: report.transactions,
                    bad_answers: report.mismatches,
                    intact: report.mismatches == 0 && report.errors.is_empty() && report.alive,
                    ..Closed::default()
                })
            }
        }
    }
}

fn run_moves(
    options: &Options,
    system: System,
    workload: Workload,
    topology: &Topology,
    carrier: &mut dyn Carrier,
) -> Result<(Row, Vec<Pending>)> {
    let family = options.family;
    let interval = Duration::from_secs_f64(options.interval_s);
    let warm_up = Duration::from_secs_f64(options.warm_up_s);
    let mut row = Row::new(system, workload);
    let mut pending = Vec::new();
    let mut session: Option<(Session, u16)> = None;
    let mut port = FIRST_PORT;
    let absorb = |row: &mut Row, closed: Closed, alive: bool| {
        row.bytes_lost += closed.bytes_lost;
        row.transactions += closed.transactions;
        row.bad_answers += closed.bad_answers;
        if alive {
            row.intact &= closed.intact;
        }
    };
    for _ in 0..options.moves {
        if session.is_none() {
            port += 1;
            let s = Session::open(
                workload,
                topology,
                carrier,
                family,
                port,
                options.seed + u64::from(port),
            )?;
            row.sessions += 1;
            std::thread::sleep(Duration::from_millis(200));
            carrier.wait_ready(topology, port)?;
            std::thread::sleep(warm_up);
            session = Some((s, port));
        }
        let (s, port) = session.take().expect("opened above");
        let times = carrier.move_a(topology)?;
        let moved = Instant::now();
        // What was on the wire at the move still arrives for a few round trips; after
        // that, progress means the session lives (however long its gap, up to the next
        // move: a slow machine makes gaps longer, not sessions dead).
        std::thread::sleep(DRAINED.min(interval / 2));
        let midway = s.progress();
        std::thread::sleep((moved + interval).saturating_duration_since(Instant::now()));
        let alive = s.progress() > midway;
        pending.push(Pending {
            times,
            filter: carrier.wire_filter(topology, family, port),
            survived: alive,
        });
        if alive {
            session = Some((s, port));
        } else {
            row.sessions_died += 1;
            let closed = s.close(false)?;
            absorb(&mut row, closed, false);
        }
    }
    if let Some((s, _)) = session.take() {
        let closed = s.close(true)?;
        absorb(&mut row, closed, true);
    }
    Ok((row, pending))
}

/// Each move's gap from the capture: within the interval after it, and half an interval
/// before it (the previous move's own silence must not be taken for this one's).
fn measure_gaps(options: &Options, row: &mut Row, pending: &[Pending], records: &[PacketRecord]) {
    let interval = Duration::from_secs_f64(options.interval_s);
    let first = pending.first().map(|p| p.times.started);
    for p in pending {
        let gap = handover_gap(records, &p.filter, p.times.started, interval / 2, interval);
        row.moves.push(Move {
            at_s: first
                .and_then(|f| p.times.started.duration_since(f).ok())
                .unwrap_or_default()
                .as_secs_f64(),
            address_change_ms: p.times.duration().as_secs_f64() * 1e3,
            gap_ms: gap.map(|g| g.length.as_secs_f64() * 1e3),
            survived: p.survived && gap.is_some_and(|g| g.recovered),
        });
    }
    let gaps: Vec<f64> = row
        .moves
        .iter()
        .filter(|m| m.survived)
        .filter_map(|m| m.gap_ms)
        .collect();
    row.gap_ms = GapStats::of(&gaps);
    row.gap_p50_rtts = row.gap_ms.map(|g| g.p50 / options.rtt_ms);
}

/// The section as a table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let o = &r.options;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "handover: {} move(s) {:.1} s apart per system and workload, {:.0} ms RTT, {} Mbit/s, loss {}; gap = longest silence of the data on B's link around each move (survived moves only)",
        o.moves, o.interval_s, o.rtt_ms, o.rate_mbps, o.loss
    );
    let _ = writeln!(
        s,
        "{:<26} {:<9} {:>8} {:>8} {:>8} {:>7} {:>13} {:>11} {:>7}",
        "system",
        "workload",
        "p50 ms",
        "p90 ms",
        "max ms",
        "p50/RTT",
        "died/sessions",
        "bytes lost",
        "intact"
    );
    for row in &r.rows {
        if let Some(e) = &row.error {
            let _ = writeln!(s, "{:<26} {:<9} failed: {e}", row.label, row.workload.label());
            continue;
        }
        let (p50, p90, max) = row.gap_ms.map_or(("-".into(), "-".into(), "-".into()), |g| {
            (
                format!("{:.1}", g.p50),
                format!("{:.1}", g.p90),
                format!("{:.1}", g.max),
            )
        });
        let _ = writeln!(
            s,
            "{:<26} {:<9} {:>8} {:>8} {:>8} {:>7} {:>13} {:>11} {:>7}",
            row.label,
            row.workload.label(),
            p50,
            p90,
            max,
            row.gap_p50_rtts.map_or("-".into(), |x| format!("{x:.1}")),
            format!("{}/{}", row.sessions_died, row.sessions),
            row.bytes_lost,
            if row.sessions_died == row.sessions {
                "-"
            } else if row.intact {
                "yes"
            } else {
                "NO"
            },
        );
    }
    s
}
