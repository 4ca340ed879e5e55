//! Steady state: goodput, CPU per GB and per-packet bytes on the wire of one bulk TCP
//! stream (iperf3) over each system, on the lab's standard topology with its emulated
//! links (RTT, rate, loss as asked).
//!
//! Each system runs on a fresh topology. A moving system (roam, Multipath TCP,
//! WireGuard) is measured *after* a move, in the state a user lives in after a handover:
//! roam's flow translated on both hosts, Multipath TCP on its new subflow, WireGuard's
//! endpoint updated. Plain TCP cannot move, so A moves before its connection opens: every
//! measured stream crosses the same links (A's second access link, then B's).
//!
//! - **Goodput**: what iperf3's server read in the measured window (its own interval
//!   reports, `--get-server-output`), after a settling time past the move.
//! - **CPU**: over the window, the CPU time of both iperf3 processes, of the system's
//!   own processes (roamd, wireguard-go), of the ksoftirqd threads, and the kernel time
//!   of this process. That last part is there because the lab's link emulator writes
//!   frames into the hosts' veths, and the receiving stack's softirq work (the rewrite,
//!   the decryption, TCP) runs in the writer's context; it also holds the emulator's
//!   own packet-socket work, the same per frame for every system, which dilutes the
//!   ratios towards 1 (`roam bench dataplane` measures the kernel planes undiluted).
//!   The emulator's user time is left out. Per GB of goodput.
//! - **Header bytes per packet on the wire**: from a capture on B's link, the data
//!   direction's packets ([`Carrier::wire_filter`]) in the window. Where TCP is on the
//!   wire, each packet's frame length less its payload, averaged (Multipath TCP's DSS
//!   option rides on some packets only). Where datagrams carry the stream sealed
//!   (WireGuard, roam's tunnel), the most common full-sized frame less the sender's MSS
//!   (`ss -i` in A). A system's overhead is that less plain TCP's (Ethernet, IPv4, TCP
//!   with timestamps: 66 bytes).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use roam_lab::capture::{Capture, CaptureOptions, PacketRecord, Protocol};
use roam_lab::netns::{Child, ChildOutput};
use roam_lab::systems::Carrier;
use roam_lab::topology::{B_IF, Family, Topology, TopologyOptions};
use serde::Serialize;

use super::dataplane::{USER_HZ, ksoftirqd_threads, task_times};
use super::stats::{Spread, spread};
use super::systems::System;

const PORT: u16 = 5301;
/// From iperf3's start to the move: the connection is up and roam knows it.
const BEFORE_MOVE: Duration = Duration::from_millis(1500);

/// How the steady-state section runs.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub systems: Vec<System>,
    #[serde(skip)]
    pub family: Family,
    pub rtt_ms: f64,
    pub rate_mbps: f64,
    pub loss: f64,
    /// Length of the measured window.
    pub window_s: f64,
    /// From the move to the window: recovery, then the window back at capacity.
    pub settle_s: f64,
    pub rounds: usize,
    pub seed: u64,
    #[serde(skip)]
    pub binary: PathBuf,
    #[serde(skip)]
    pub work_dir: PathBuf,
}

impl Options {
    pub fn topology(&self, prefix: &str) -> TopologyOptions {
        TopologyOptions {
            rtt: Duration::from_secs_f64(self.rtt_ms / 1e3),
            rate_bps: (self.rate_mbps * 1e6) as u64,
            loss: self.loss,
            seed: self.seed,
            prefix: prefix.to_owned(),
            ..TopologyOptions::default()
        }
    }
}

/// One system in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub system: System,
    pub round: usize,
    pub goodput_mbps: f64,
    /// Bytes iperf3's server read in the window.
    pub bytes: u64,
    pub window_s: f64,
    /// Busy CPU time of the machine in the window, less this process's.
    pub cpu_s: f64,
    pub cpu_s_per_gb: f64,
    /// Data-direction packets on B's link in the window, and their frame bytes.
    pub wire_packets: u64,
    pub wire_bytes: u64,
    pub header_bytes_per_packet: f64,
    /// The sender's retransmissions over the whole test (iperf3).
    pub retransmits: u64,
}

/// One system over all rounds: medians, and ratios to plain TCP within each round.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub system: System,
    pub label: String,
    pub rounds: usize,
    pub goodput_mbps: f64,
    pub goodput_vs_plain: Option<Spread>,
    pub cpu_s_per_gb: f64,
    pub cpu_vs_plain: Option<Spread>,
    pub header_bytes_per_packet: f64,
    /// Header bytes per packet beyond plain TCP's.
    pub overhead_bytes_per_packet: Option<f64>,
    /// What failed, when a run did not complete.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub runs: Vec<Run>,
    pub rows: Vec<Row>,
}

impl Report {
    /// Every system measured in every round.
    pub fn complete(&self) -> bool {
        self.rows.iter().all(|r| r.errors.is_empty() && r.rounds > 0)
    }
}

pub fn measure(options: &Options) -> Result<Report> {
    let mut runs = Vec::new();
    let mut errors: Vec<(System, String)> = Vec::new();
    let n = options.systems.len();
    for round in 0..options.rounds {
        // A rotating order: the machine's other load falls on every system alike.
        for i in 0..n {
            let system = options.systems[(i + round) % n];
            tracing::info!("steady state: {} (round {})", system.label(true), round + 1);
            match measure_one(options, system, round) {
                Ok(run) => runs.push(run),
                Err(e) => {
                    tracing::warn!("steady state, {}: {e:#}", system.label(true));
                    errors.push((system, format!("round {}: {e:#}", round + 1)));
                }
            }
        }
    }
    let rows = summarise(&options.systems, &runs, &errors);
    Ok(Report {
        options: options.clone(),
        runs,
        rows,
    })
}

fn measure_one(options: &Options, system: System, round: usize) -> Result<Run> {
    let topology = Topology::build(options.topology("rbs"))?;
    let dir = options
        .work_dir
        .join(format!("steady-{system:?}-{round}").to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut carrier = system.start(&topology, options.family, &dir, &options.binary)?;
    let result = run_stream(options, system, round, &topology, carrier.as_mut());
    let stopped = carrier.stop(&topology);
    let run = result?;
    stopped.with_context(|| format!("stopping {}", system.label(true)))?;
    Ok(run)
}

fn run_stream(
    options: &Options,
    system: System,
    round: usize,
    topology: &Topology,
    carrier: &mut dyn Carrier,
) -> Result<Run> {
    let family = options.family;
    let moves = system != System::Plain;
    if !moves {
        carrier.move_a(topology)?;
    }
    let capture = Capture::start(topology.b(), B_IF, CaptureOptions::default())?;
    let endpoint = carrier.b_endpoint(topology, family, PORT);
    let wrap = carrier.wrap_command();
    let server = spawn_wrapped(
        topology.b(),
        &wrap,
        &["iperf3", "-s", "-1", "-J", "-i", "0.5", "-p", &PORT.to_string()],
    )?;
    topology
        .b()
        .wait_listening(PORT, &server, Duration::from_secs(5))?;
    let settle = Duration::from_secs_f64(options.settle_s);
    let window = Duration::from_secs_f64(options.window_s);
    let total = BEFORE_MOVE + settle + window + Duration::from_millis(500);
    let client = spawn_wrapped(
        topology.a(),
        &wrap,
        &[
            "iperf3",
            "-c",
            &endpoint.ip().to_string(),
            "-p",
            &PORT.to_string(),
            "-t",
            &format!("{:.1}", total.as_secs_f64()),
            "-i",
            "0.5",
            "-J",
            "--get-server-output",
        ],
    )?;
    let started = Instant::now();
    if moves {
        // The data connection is up once iperf3 runs; the move waits for the system to
        // be ready to carry it (roam's daemons know both connections).
        std::thread::sleep(Duration::from_millis(300));
        carrier.wait_ready(topology, PORT)?;
        sleep_until(started + BEFORE_MOVE);
        carrier.move_a(topology)?;
    }
    let window_start = started + BEFORE_MOVE + settle;
    sleep_until(window_start);
    let mut pids = vec![client.pid(), server.pid()];
    pids.extend(carrier.processes());
    pids.extend(ksoftirqd_threads());
    let cpu0 = CpuTicks::take(&pids);
    let t0 = SystemTime::now();
    sleep_until(window_start + window);
    let cpu1 = CpuTicks::take(&pids);
    let t1 = SystemTime::now();
    let mss = sender_mss(topology, PORT);
    let out = client.wait_output(total + Duration::from_secs(20))?;
    let _ = server.wait_timeout(Duration::from_secs(5));
    server.kill();
    let records = capture.stop()?.records;
    let result = Iperf3::parse(&out.stdout)
        .with_context(|| format!("iperf3 over {}: {}", system.label(true), out.stderr.trim()))?;
    // The server's intervals count from its test's start, which is the client's start
    // give or take a connect; the window is taken in whole half-second intervals.
    let from = (BEFORE_MOVE + settle).as_secs_f64();
    let to = from + window.as_secs_f64();
    let (bytes, secs) = result.server_bytes_between(from, to);
    if secs <= 0.0 || bytes == 0 {
        bail!(
            "iperf3 over {} moved no data in the measured window",
            system.label(true)
        );
    }
    let cpu_s = cpu1.since(&cpu0) / USER_HZ;
    let capture_s = t1.duration_since(t0).unwrap_or_default().as_secs_f64();
    let filter = carrier.wire_filter(topology, family, PORT);
    let data: Vec<&PacketRecord> = records
        .iter()
        .filter(|r| r.time >= t0 && r.time < t1 && filter.matches(r) && r.payload_len > 0)
        .collect();
    let wire_packets = data.len() as u64;
    let wire_bytes: u64 = data.iter().map(|r| u64::from(r.frame_len)).sum();
    let header = if filter.protocol == Some(Protocol::Tcp) {
        // TCP on the wire: each packet's own header bytes (Ethernet, IP, TCP with its
        // options: Multipath TCP's DSS is in some packets only), averaged.
        if data.is_empty() {
            bail!("no data packet on the wire in the measured window");
        }
        data.iter()
            .map(|r| f64::from(r.frame_len - r.payload_len))
            .sum::<f64>()
            / data.len() as f64
    } else {
        // Datagrams carrying the stream's packets sealed: the inner payload is not
        // visible, so a full-sized datagram against the sender's MSS.
        match (full_sized_frame(&data), mss) {
            (Some(frame), Some(mss)) => f64::from(frame) - f64::from(mss),
            _ => bail!("no full-sized datagram on the wire, or no MSS for the connection (mss {mss:?})"),
        }
    };
    Ok(Run {
        system,
        round,
        goodput_mbps: bytes as f64 * 8.0 / secs / 1e6,
        bytes,
        window_s: secs,
        cpu_s,
        // The CPU was counted over the wall-clock window, the bytes over iperf3's
        // intervals: per GB of the goodput over the CPU's window.
        cpu_s_per_gb: cpu_s / (bytes as f64 / secs * capture_s / 1e9),
        wire_packets,
        wire_bytes,
        header_bytes_per_packet: header,
        retransmits: result.retransmits,
    })
}

/// Runs `args` in `ns`, behind the carrier's wrapper (`mptcpize run`).
fn spawn_wrapped(ns: &roam_lab::Ns, wrap: &[String], args: &[&str]) -> Result<Child> {
    let mut all: Vec<&str> = wrap.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    Ok(ns.spawn(&all, ChildOutput::Collect)?)
}

/// CPU ticks of the processes that carry the stream (both iperf3s, the system's
/// daemons, the ksoftirqd threads), plus the kernel time of this process: the link
/// emulator's writes into the veths run the receiving stack's softirq work in its
/// context, and that work (rewrites, decryption, TCP) belongs to the system. Its own
/// user time (the emulator's logic, the capture's parsing) is left out.
struct CpuTicks(u64);

impl CpuTicks {
    fn take(pids: &[u32]) -> CpuTicks {
        let theirs: u64 = pids
            .iter()
            .map(|p| {
                let (u, s) = task_times(*p);
                u + s
            })
            .sum();
        let (_, own_kernel) = task_times(std::process::id());
        CpuTicks(theirs + own_kernel)
    }

    fn since(&self, earlier: &CpuTicks) -> f64 {
        self.0.saturating_sub(earlier.0) as f64
    }
}

/// The payload bytes per segment of A's connections to `port` (TCP_INFO's snd_mss, as
/// `ss -i` prints it; the largest, for Multipath TCP's subflows and iperf3's control
/// connection alike).
fn sender_mss(topology: &Topology, port: u16) -> Option<u32> {
    let filter = format!("( dport = :{port} )");
    let out = topology
        .a()
        .exec(&["ss", "-Htin", "state", "established", &filter])
        .ok()?;
    out.stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("mss:")?.parse::<u32>().ok())
        .max()
}

/// The most common frame length among the data packets at or near the largest: the
/// length of a full-sized segment on the wire.
fn full_sized_frame(data: &[&PacketRecord]) -> Option<u32> {
    let largest = data.iter().map(|r| r.frame_len).max()?;
    let mut counts = std::collections::BTreeMap::new();
    for r in data.iter().filter(|r| r.frame_len + 64 >= largest) {
        *counts.entry(r.frame_len).or_insert(0u64) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(len, n)| (*n, *len))
        .map(|(len, _)| len)
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// What the bench reads from iperf3's JSON.
struct Iperf3 {
    retransmits: u64,
    /// The server's intervals: (start s, end s, bytes).
    server_intervals: Vec<(f64, f64, u64)>,
}

impl Iperf3 {
    fn parse(stdout: &str) -> Result<Iperf3> {
        let v: serde_json::Value = serde_json::from_str(stdout).context("iperf3's output is not JSON")?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3: {e}");
        }
        let server = &v["server_output_json"];
        let intervals = server["intervals"]
            .as_array()
            .context("iperf3's JSON has no server intervals (--get-server-output)")?;
        let server_intervals = intervals
            .iter()
            .filter_map(|i| {
                let s = &i["sum"];
                Some((s["start"].as_f64()?, s["end"].as_f64()?, s["bytes"].as_u64()?))
            })
            .collect();
        Ok(Iperf3 {
            retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            server_intervals,
        })
    }

    /// Bytes and seconds of the server's intervals that lie within `[from, to]` seconds.
    fn server_bytes_between(&self, from: f64, to: f64) -> (u64, f64) {
        self.server_intervals
            .iter()
            .filter(|(s, e, _)| *s >= from - 0.01 && *e <= to + 0.01)
            .fold((0, 0.0), |(b, t), (s, e, n)| (b + n, t + (e - s)))
    }
}

fn summarise(systems: &[System], runs: &[Run], errors: &[(System, String)]) -> Vec<Row> {
    let plain_of = |round: usize| {
        runs.iter()
            .find(|r| r.system == System::Plain && r.round == round)
    };
    let plain_header: Vec<f64> = runs
        .iter()
        .filter(|r| r.system == System::Plain)
        .map(|r| r.header_bytes_per_packet)
        .collect();
    let plain_header = super::stats::median(&plain_header);
    systems
        .iter()
        .map(|&system| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.system == system).collect();
            let values = |f: fn(&Run) -> f64| mine.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let ratios = |f: fn(&Run) -> f64| {
                mine.iter()
                    .filter_map(|r| plain_of(r.round).map(|p| f(r) / f(p)))
                    .filter(|x| x.is_finite())
                    .collect::<Vec<f64>>()
            };
            let header = super::stats::median(&values(|r| r.header_bytes_per_packet));
            Row {
                system,
                label: system.label(true).to_owned(),
                rounds: mine.len(),
                goodput_mbps: super::stats::median(&values(|r| r.goodput_mbps)),
                goodput_vs_plain: spread(&ratios(|r| r.goodput_mbps)),
                cpu_s_per_gb: super::stats::median(&values(|r| r.cpu_s_per_gb)),
                cpu_vs_plain: spread(&ratios(|r| r.cpu_s_per_gb)),
                header_bytes_per_packet: header,
                overhead_bytes_per_packet: (!mine.is_empty() && plain_header.is_finite())
                    .then_some(header - plain_header),
                errors: errors
                    .iter()
                    .filter(|(s, _)| *s == system)
                    .map(|(_, e)| e.clone())
                    .collect(),
            }
        })
        .collect()
}

/// The section as a table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let o = &r.options;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "steady state: one iperf3 stream A->B, {} round(s) x {:.1} s window, {:.0} ms RTT, {} Mbit/s, loss {}; ratios: median (min-max) of per-round ratios to plain TCP",
        o.rounds, o.window_s, o.rtt_ms, o.rate_mbps, o.loss
    );
    let _ = writeln!(
        s,
        "{:<26} {:>9} {:>22} {:>9} {:>22} {:>10} {:>9}",
        "system", "Mbit/s", "goodput vs plain", "CPU s/GB", "CPU/GB vs plain", "hdr B/pkt", "overhead"
    );
    for row in &r.rows {
        if row.rounds == 0 {
            let _ = writeln!(s, "{:<26} failed: {}", row.label, row.errors.join("; "));
            continue;
        }
        let _ = writeln!(
            s,
            "{:<26} {:>9.1} {:>22} {:>9.3} {:>22} {:>10.1} {:>9}",
            row.label,
            row.goodput_mbps,
            row.goodput_vs_plain.map_or("-".into(), |x| x.to_string()),
            row.cpu_s_per_gb,
            row.cpu_vs_plain.map_or("-".into(), |x| x.to_string()),
            row.header_bytes_per_packet,
            row.overhead_bytes_per_packet
                .map_or("-".into(), |x| format!("{x:+.1}")),
        );
        for e in &row.errors {
            let _ = writeln!(s, "{:<26} (a run failed: {e})", "");
        }
    }
    s
}
