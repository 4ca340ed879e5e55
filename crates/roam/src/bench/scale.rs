//! `roam bench scale`: what many migrated flows cost (issue 7, section 3 "Scale"). The
//! target: 100,000 migrated flows installed in under 1 s, with throughput unchanged.
//!
//! Four measurements, each against a baseline of the same run where one makes sense:
//!
//! 1. **Rule install** ([`super::dataplane`]'s install latency, on its two namespaces):
//!    one batch of N new flow entries, nftables (the shipped plane) and tc-BPF; per flow.
//! 2. **Throughput with N migrated flows installed**: two copies of the data-plane
//!    bench's namespace pair side by side, each with the plane loaded in both hosts and
//!    one iperf3 stream over a translated flow. One pair's planes also hold N other
//!    migrated flows (both directions, on both hosts); the other holds none: the
//!    baseline. The rounds alternate which pair runs first; the ratio is taken within a
//!    round. Each run also times installing its own flow's entries (one more flow with
//!    N present, against one more with none: what a move costs when the table is big).
//! 3. **Control-plane cost per move**: two roam-core [`Endpoint`]s in this process
//!    joined by an in-memory network (10 ms each way, no loss), N TCP flows between
//!    them, registered. The mover's address changes (new address in, old one out, as
//!    DHCP does) and the pair is run until nothing is in flight and no timer is due:
//!    every message of the move (update, answers, path challenge and response,
//!    retransmissions). Time and randomness are the core's inputs, so everything here is
//!    deterministic except the wall and CPU time (this thread's,
//!    CLOCK_THREAD_CPUTIME_ID). Measured for the default Connection Update (one
//!    migration per flow, as many datagrams as it takes) and for seed 003's Address
//!    Change (one message per address pair), each as a ratio to its own 1-flow move.
//! 4. **roamd's memory per flow**: the lab's standard topology (20 ms RTT), `roam
//!    daemon` (this executable) on A and B as the lab runs it (nftables plane), and N
//!    real TCP connections A->B opened in steps. B's ends are left in the listener's
//!    accept queue (established, listed by sock_diag like any other, but without a
//!    descriptor), so N connections take N descriptors here: RLIMIT_NOFILE is raised to
//!    fit, up to its hard limit. At each step, once both roamds list the flows and have
//!    written one more status, VmRSS and VmHWM of each roamd from /proc; bytes per flow
//!    is the growth from the 1-flow step (a session exists by then) over the flows
//!    added. Then A moves once with all of them (roamd's `move_message` as asked) and
//!    the move's timing (on roamd's own clock, from its status), retransmissions and
//!    the translation entries on each host are read from the roamds' status. A move
//!    that does not settle within the wait is reported as it stood, not as a failure of
//!    the benchmark.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use roam_core::security::{StaticKey, Trust};
use roam_core::translate::{Protocol, TableChange, Tuple};
use roam_core::{Config, DataPlaneCommand, Endpoint, Input, MoveMessage, Transmit};
use roam_lab::roamd::{RoamdConfig, Roamds};
use roam_lab::topology::{Family, Topology, TopologyOptions};
use serde::Serialize;

use super::dataplane::{
    self, A_IF, A_ORIGINAL, B_IF, Batch, CpuSnapshot, Install, Net, Plane, USER_HZ, batch_flow, bpf_plane,
    install, install_latency, ms, nft_plane,
};
use super::stats::{Spread, median, spread};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Numbers of migrated flows, comma-separated [default: 1,100,10000,100000; with
    /// --quick: 1,100,1000]. roamd's memory is measured with real connections up to
    /// 10,000 (1,000 with --quick).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=MAX_FLOWS as u64))]
    flows: Vec<u64>,
    /// Small sizes and short runs (under 40 s): checks that the benchmark works.
    #[arg(long)]
    quick: bool,
    /// What roamd sends when it moves, in the memory measurement's move of every
    /// connection: connection-update (roamd's default), migration-request or
    /// address-change. (The in-process cost is measured for connection-update and
    /// address-change always.)
    #[arg(long, value_parser = parse_move_message, default_value = "connection-update")]
    move_message: MoveMessage,
    /// Keep roamd's keys, logs and status files of the memory measurement here.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Print every measurement as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_move_message(s: &str) -> Result<MoveMessage, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: connection-update, migration-request or address-change"))
}

/// The largest N: the install benchmark's flows are distinct up to 2^20, and the
/// throughput pair holds N + a few.
const MAX_FLOWS: usize = 500_000;

/// What to measure, and how long.
#[derive(Clone, Debug)]
pub struct Options {
    /// The numbers of migrated flows (install, throughput, control plane).
    pub flows: Vec<usize>,
    /// Real TCP connections for roamd's memory: the sizes of `flows` up to this many
    /// (and this many if `flows` goes beyond it).
    pub memory_max: usize,
    /// Seconds of each iperf3 run.
    pub seconds: u64,
    /// Rounds of the throughput comparison (each runs the loaded and the empty pair).
    pub rounds: usize,
    /// Repetitions of each control-plane move of up to 1,000 flows (the median is
    /// reported; larger moves run once).
    pub control_reps: usize,
    /// Wall-clock budget of one control-plane move: a move still running past it is
    /// reported as unfinished.
    pub control_budget: Duration,
    /// The `roam` executable whose `roam daemon` is measured.
    pub roam_binary: PathBuf,
    /// Keep roamd's keys, logs and status files here (a temporary directory otherwise,
    /// removed at the end).
    pub keep: Option<PathBuf>,
    /// How long roamd's move of every connection may take to settle.
    pub memory_move_wait: Duration,
    /// What roamd sends when it moves (its `move_message`; roamd's default is
    /// Connection Update).
    pub memory_move_message: MoveMessage,
    pub install: bool,
    pub throughput: bool,
    pub control: bool,
    pub memory: bool,
    pub quick: bool,
}

impl Options {
    /// The full run, or the quick one (1, 100 and 1,000 flows, 1 s runs, one round).
    pub fn new(quick: bool) -> Options {
        Options {
            flows: if quick {
                vec![1, 100, 1000]
            } else {
                vec![1, 100, 10_000, 100_000]
            },
            memory_max: if quick { 1000 } else { 10_000 },
            seconds: if quick { 1 } else { 3 },
            rounds: if quick { 1 } else { 3 },
            control_reps: if quick { 3 } else { 5 },
            control_budget: Duration::from_secs(if quick { 20 } else { 120 }),
            roam_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("roam")),
            keep: None,
            memory_move_wait: Duration::from_secs(if quick { 30 } else { 120 }),
            memory_move_message: MoveMessage::default(),
            install: true,
            throughput: true,
            control: true,
            memory: true,
            quick,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub kernel: String,
    pub quick: bool,
    /// Built with debug assertions (a dev or test profile): the control plane is slower.
    pub debug_build: bool,
    pub flows: Vec<usize>,
    pub install: Vec<InstallRow>,
    pub throughput: Vec<ThroughputRow>,
    pub control: Vec<ControlMove>,
    pub memory: Option<MemoryReport>,
    /// Where the figures fall short of the targets (100,000 flows installed in
    /// under 1 s, throughput unchanged) or a move did not complete: reported, never a
    /// failure of the benchmark.
    pub shortfalls: Vec<String>,
    /// Measurements that could not run, and why.
    pub errors: Vec<String>,
    /// Every measurement ran and every check in it held (translated runs translated,
    /// flows registered, the memory's connections listed). Slowness never fails it.
    pub ok: bool,
}

/// Install latency of one batch size on one plane.
#[derive(Clone, Debug, Serialize)]
pub struct InstallRow {
    #[serde(flatten)]
    pub install: Install,
    /// The median install over the flows, in microseconds.
    pub us_per_flow: f64,
    /// The median install took under a second (the target, for 100,000 flows).
    pub under_1s: bool,
}

/// One iperf3 run of the throughput comparison.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRun {
    pub round: usize,
    /// Other migrated flows in the planes (0: the baseline pair).
    pub others: usize,
    pub goodput_bps: f64,
    pub cpu_s_per_gb: f64,
    pub retransmits: u64,
}

/// One plane with N other migrated flows, against the same plane with none.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputRow {
    pub plane: Plane,
    pub others: usize,
    /// Installing the entries added for this row (from the previous row's N, with the
    /// measured flows of all rounds but the first), on both hosts.
    pub grow_ms: f64,
    /// Installing one flow (both hosts, one batch each) into the planes holding N, and
    /// into the empty ones: what one more move costs with this many installed.
    pub install_one_ms: f64,
    pub baseline_install_one_ms: f64,
    pub install_one_ratio: f64,
    pub goodput_gbps: f64,
    pub baseline_gbps: f64,
    /// Per round: loaded / baseline.
    pub goodput_ratio: Spread,
    pub cpu_per_gb_ratio: Spread,
    /// Packets translated over the row's runs, A's egress and B's ingress, in the pair
    /// with N flows and in the empty one. Read once a row: listing nft's counters loads
    /// the whole table, which takes a minute and more with 100,000 flows.
    pub translated: (u64, u64),
    pub baseline_translated: (u64, u64),
    pub runs: Vec<ThroughputRun>,
}

/// Messages and bytes of one kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

/// One move of N flows between two in-process endpoints.
#[derive(Clone, Debug, Serialize)]
pub struct ControlMove {
    pub move_message: MoveMessage,
    pub flows: usize,
    /// Repetitions (fresh pairs); times are their medians, the rest is deterministic.
    pub reps: usize,
    /// Ran until quiet within the wall budget (false: stopped, figures are partial).
    pub finished: bool,
    /// Flows the mover had confirmed, and given up on.
    pub flows_moved: u64,
    pub flows_failed: u64,
    /// Migrations the peer applied.
    pub peer_applied: u64,
    /// Registering the N flows on both hosts (before the move; not part of its cost).
    pub setup_ms: f64,
    pub wall_ms: f64,
    /// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID; None if the clock failed).
    pub cpu_ms: Option<f64>,
    /// Virtual time from the address change to the last translation-table change on
    /// either host, and to the last datagram delivered.
    pub virtual_ms_tables: f64,
    pub virtual_ms_quiet: f64,
    /// Control datagrams of the move, both directions.
    pub messages: u64,
    pub bytes: u64,
    pub by_type: BTreeMap<String, Traffic>,
    pub retransmits: u64,
    /// Dropped over the peer's update rate limit (per peer: 100/s, burst 200).
    pub rate_limited: u64,
    /// Control messages not sent to the mover's new address before it proved itself.
    pub budget_refusals: u64,
    /// The peer saw the mover's new address answer its path challenge.
    pub path_validated: bool,
    /// Translation-table changes the mover and the peer emitted.
    pub table_changes: (u64, u64),
    pub wall_us_per_flow: f64,
    pub cpu_us_per_flow: Option<f64>,
    pub bytes_per_flow: f64,
    /// CPU (wall where CPU is unknown) over the 1-flow move's, same message kind.
    pub cost_ratio_to_one: f64,
}

/// roamd's memory at one number of flows.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryStep {
    pub flows: usize,
    /// Opening the connections added at this step.
    pub connect_s: f64,
    /// From the connections open to both roamds listing them.
    pub listed_s: f64,
    pub a_rss_kib: u64,
    pub a_hwm_kib: u64,
    pub b_rss_kib: u64,
    pub b_hwm_kib: u64,
}

/// A's move with every connection of the last step.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryMove {
    pub flows: usize,
    pub move_message: MoveMessage,
    /// A's roamd confirmed or gave up on every flow within the wait (false: the
    /// figures are what it had done by then).
    pub settled: bool,
    /// The lab's address change itself (old addresses out, new in, routes).
    pub address_change_s: f64,
    /// From the address change to A's roamd sending its update (its "moving N flow(s)"
    /// event): how long it took to notice and to install the held entries.
    pub update_sent_s: Option<f64>,
    /// From the address change to A's roamd completing the exchange (its status'
    /// `last_move_at_s`); None if it did not within the wait.
    pub completed_s: Option<f64>,
    /// The exchange alone, as A's roamd timed it (first update to last answer).
    pub exchange_ms: Option<f64>,
    pub a_flows_moved: u64,
    pub a_flows_failed: u64,
    pub a_retransmits: u64,
    pub b_migrations_applied: u64,
    pub b_rate_limited: u64,
    /// Flows under other addresses than their sockets' (translation entries).
    pub a_entries: usize,
    pub b_entries: usize,
    pub a_rss_kib: u64,
    pub b_rss_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub steps: Vec<MemoryStep>,
    /// RSS growth from the first step to the last, over the flows added.
    pub a_bytes_per_flow: f64,
    pub b_bytes_per_flow: f64,
    pub moved: MemoryMove,
    /// Sizes of `flows` beyond the real-connection limit, not measured here.
    pub skipped: Vec<usize>,
    /// What did not go as it should (a move that did not settle, a roamd that did not
    /// stop when asked).
    pub notes: Vec<String>,
}

pub fn run(args: Args) -> Result<bool> {
    let mut opts = Options::new(args.quick);
    if !args.flows.is_empty() {
        opts.flows = args.flows.iter().map(|&n| n as usize).collect();
    }
    opts.memory_move_message = args.move_message;
    opts.keep = args.keep;
    let report = measure(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.ok)
}

/// Runs every part `opts` asks for. A part that cannot run is recorded in
/// [`ScaleReport::errors`] (and fails `ok`); the others still run.
pub fn measure(opts: &Options) -> Result<ScaleReport> {
    if opts.flows.is_empty() || opts.flows.iter().any(|&n| n == 0 || n > MAX_FLOWS) {
        bail!("the numbers of flows must be 1 to {MAX_FLOWS}");
    }
    if (opts.install || opts.throughput || opts.memory) && !roam_lab::lab_available()? {
        bail!("the lab is switched off (ROAM_SKIP_NETNS=1)");
    }
    let mut flows = opts.flows.clone();
    flows.sort_unstable();
    flows.dedup();
    let mut r = ScaleReport {
        kernel: dataplane::read_trimmed("/proc/sys/kernel/osrelease"),
        quick: opts.quick,
        debug_build: cfg!(debug_assertions),
        flows: flows.clone(),
        install: Vec::new(),
        throughput: Vec::new(),
        control: Vec::new(),
        memory: None,
        shortfalls: Vec::new(),
        errors: Vec::new(),
        ok: true,
    };
    let fail = |r: &mut ScaleReport, what: &str, e: anyhow::Error| {
        tracing::warn!("scale: {what}: {e:#}");
        r.errors.push(format!("{what}: {e:#}"));
        r.ok = false;
    };
    if opts.install {
        match measure_install(&flows) {
            Ok(v) => r.install = v,
            Err(e) => fail(&mut r, "rule install", e),
        }
    }
    if opts.throughput {
        let mut port = 42000u16;
        for plane in [Plane::Nftables, Plane::TcBpf] {
            match measure_throughput(opts, &flows, plane, &mut port) {
                Ok((rows, translated)) => {
                    r.throughput.extend(rows);
                    if !translated {
                        let what = format!("throughput ({})", plane.label());
                        fail(
                            &mut r,
                            &what,
                            anyhow!("a run's packets were not translated (see --json)"),
                        );
                    }
                }
                Err(e) => fail(&mut r, &format!("throughput ({})", plane.label()), e),
            }
        }
    }
    if opts.control {
        for message in [MoveMessage::ConnectionUpdate, MoveMessage::AddressChange] {
            match measure_control(opts, &flows, message) {
                Ok(v) => r.control.extend(v),
                Err(e) => fail(&mut r, &format!("control plane ({message:?})"), e),
            }
        }
    }
    if opts.memory {
        match measure_memory(opts, &flows) {
            Ok(m) => r.memory = Some(m),
            Err(e) => fail(&mut r, "roamd memory", e),
        }
    }
    r.shortfalls = shortfalls(&r);
    Ok(r)
}

/// What falls short of the targets, in words.
fn shortfalls(r: &ScaleReport) -> Vec<String> {
    let mut out = Vec::new();
    for i in r.install.iter().filter(|i| !i.under_1s) {
        out.push(format!(
            "{} installs {} flows in {:.2} s (target: 100,000 in under 1 s)",
            i.install.plane.label(),
            i.install.flows,
            i.install.install_median_ms / 1e3
        ));
    }
    // Every round at least 5% below, over three rounds at least: not noise (the
    // machine's other work moves a single ratio by 10% and more either way).
    let rounds = |t: &&ThroughputRow| t.runs.len() / 2;
    for t in r
        .throughput
        .iter()
        .filter(|t| rounds(t) >= 3 && t.goodput_ratio.max < 0.95)
    {
        out.push(format!(
            "{} with {} migrated flows installed: goodput {} of the same plane with none (target: unchanged)",
            t.plane.label(),
            t.others,
            t.goodput_ratio
        ));
    }
    for m in r.control.iter().filter(|m| !m.finished || m.flows_failed > 0) {
        out.push(format!(
            "{:?} move of {} flows (in-process): {} confirmed, {} given up{}, {} dropped over the peer's rate limit, {} answers over the unvalidated budget{}",
            m.move_message,
            m.flows,
            m.flows_moved,
            m.flows_failed,
            if m.finished { "" } else { ", stopped at the wall budget" },
            m.rate_limited,
            m.budget_refusals,
            if m.path_validated { "" } else { ", new address never validated" },
        ));
    }
    if let Some(m) = &r.memory {
        let mv = &m.moved;
        if !mv.settled || mv.a_flows_failed > 0 {
            out.push(format!(
                "roamd's move of {} real connections: {} moved, {} failed{}",
                mv.flows,
                mv.a_flows_moved,
                mv.a_flows_failed,
                if mv.settled {
                    ""
                } else {
                    ", not settled within the wait"
                }
            ));
        }
    }
    out
}

// ---- 1. rule install ----

fn measure_install(flows: &[usize]) -> Result<Vec<InstallRow>> {
    let net = Net::new()?;
    let mut rows = Vec::new();
    for &n in flows {
        for plane in [Plane::Nftables, Plane::TcBpf] {
            let i = install_latency(&net, plane, n)
                .with_context(|| format!("installing {n} flows with {}", plane.label()))?;
            tracing::info!(
                flows = n,
                plane = plane.label(),
                ms = i.install_median_ms,
                "install"
            );
            rows.push(InstallRow {
                us_per_flow: i.install_median_ms * 1e3 / n as f64,
                under_1s: i.install_median_ms < 1e3,
                install: i,
            });
        }
    }
    Ok(rows)
}

// ---- 2. throughput with N migrated flows installed ----

/// One namespace pair of the throughput comparison with its planes.
struct Loaded {
    // Field order is drop order: the server and the planes go before the namespaces.
    _server: roam_lab::netns::Child,
    a: Box<dyn Batch>,
    b: Box<dyn Batch>,
    net: Net,
    /// The counters at the last [`Loaded::translated`].
    counted: (u64, u64),
}

impl Loaded {
    fn new(plane: Plane, max_flows: usize) -> Result<Loaded> {
        let net = Net::new()?;
        let server = net.start_server()?;
        // The same map size in both pairs: only the entries differ.
        let cap = u32::try_from((max_flows + 16).max(1024)).context("too many flows")?;
        let (a, b): (Box<dyn Batch>, Box<dyn Batch>) = match plane {
            Plane::Nftables => (Box::new(nft_plane(&net.a)?), Box::new(nft_plane(&net.b)?)),
            Plane::TcBpf => (
                Box::new(bpf_plane(&net.a, A_IF, cap)?),
                Box::new(bpf_plane(&net.b, B_IF, cap)?),
            ),
            Plane::Plain => bail!("plain TCP has no plane"),
        };
        Ok(Loaded {
            _server: server,
            a,
            b,
            net,
            counted: (0, 0),
        })
    }

    /// One batch on each host: the batch flows `from..to` (B's entries are the same
    /// flows seen from the other end), and the measured flows from `install` and not
    /// those from `remove` (by port). Timed.
    fn change(&mut self, from: usize, to: usize, install_ports: &[u16], remove_ports: &[u16]) -> Result<f64> {
        let mut for_a = Vec::new();
        let mut for_b = Vec::new();
        for &port in remove_ports {
            let (original, _) = Net::flow(port);
            for_a.push(remove(original));
            for_b.push(remove(original.reversed()));
        }
        let pairs = (from..to)
            .map(batch_flow)
            .chain(install_ports.iter().map(|&p| Net::flow(p)));
        for (o, c) in pairs {
            for_a.push(install(o, c));
            for_b.push(install(o.reversed(), c.reversed()));
        }
        let t = Instant::now();
        if !for_a.is_empty() {
            self.b.apply(&for_b)?;
            self.a.apply(&for_a)?;
        }
        Ok(ms(t.elapsed()))
    }

    /// One iperf3 run over the translated flow from `port` (its entries installed).
    fn run(
        &mut self,
        round: usize,
        others: usize,
        port: u16,
        seconds: u64,
        softirqd: &[u32],
    ) -> Result<ThroughputRun> {
        let before = CpuSnapshot::take(softirqd);
        let result = self.net.iperf(A_ORIGINAL, port, seconds)?;
        let after = CpuSnapshot::take(softirqd);
        let ksoftirqd_s = after.ksoftirqd.saturating_sub(before.ksoftirqd) as f64 / USER_HZ;
        let cpu_s = (result.client_cpu_pct + result.server_cpu_pct) / 100.0 * result.seconds + ksoftirqd_s;
        Ok(ThroughputRun {
            round,
            others,
            goodput_bps: result.bps,
            cpu_s_per_gb: cpu_s / (result.bytes as f64 / 1e9),
            retransmits: result.retransmits,
        })
    }

    /// Packets translated since the last call: A's egress, B's ingress.
    fn translated(&mut self) -> Result<(u64, u64)> {
        let now = (self.a.translated()?.0, self.b.translated()?.1);
        let last = std::mem::replace(&mut self.counted, now);
        Ok((now.0.saturating_sub(last.0), now.1.saturating_sub(last.1)))
    }

    fn close(self) -> Result<()> {
        self.a.close()?;
        self.b.close()
    }
}

fn remove(original: Tuple) -> DataPlaneCommand {
    DataPlaneCommand::Table(TableChange::RemoveFlow { original })
}

/// The rows of one plane, and whether every row's runs were translated.
///
/// No run waits for a transaction: each row's measured flows (one per round and pair,
/// each its own client port) are installed before its runs, with the row's new entries,
/// and removed with the next row's. The first round's flow is installed alone, timed:
/// one more flow with N installed (an nft transaction's cost grows with the table).
fn measure_throughput(
    opts: &Options,
    flows: &[usize],
    plane: Plane,
    port: &mut u16,
) -> Result<(Vec<ThroughputRow>, bool)> {
    let max_flows = flows.iter().copied().max().unwrap_or(1);
    let mut base = Loaded::new(plane, max_flows)?;
    let mut loaded = Loaded::new(plane, max_flows)?;
    let softirqd = dataplane::ksoftirqd_threads();
    let mut next_ports = |k: usize| -> Vec<u16> {
        (0..k)
            .map(|_| {
                *port += 1;
                *port
            })
            .collect()
    };
    // A warm-up run in each pair, not recorded: the first connection pays for cold caches.
    let warm = next_ports(2);
    for (pair, &p) in [&mut base, &mut loaded].into_iter().zip(&warm) {
        pair.change(0, 0, &[p], &[])?;
        pair.run(0, 0, p, 1, &softirqd).context("warm-up run")?;
        pair.change(0, 0, &[], &[p])?;
        pair.translated()?;
    }
    let rounds = opts.rounds.max(1);
    let mut rows = Vec::new();
    let mut ok = true;
    let mut have = 0;
    let (mut base_old, mut loaded_old) = (Vec::new(), Vec::new());
    for &n in flows {
        let (base_ports, loaded_ports) = (next_ports(rounds), next_ports(rounds));
        let grow_ms = loaded
            .change(have, n, &loaded_ports[1..], &loaded_old)
            .with_context(|| format!("installing {n} flows"))?;
        base.change(0, 0, &base_ports[1..], &base_old)?;
        have = n;
        let install_one_ms = loaded.change(0, 0, &loaded_ports[..1], &[])?;
        let baseline_install_one_ms = base.change(0, 0, &base_ports[..1], &[])?;
        let mut runs = Vec::new();
        for round in 0..rounds {
            // Which pair goes first alternates, so that a trend in the machine's load
            // falls on both alike.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with_flows in order {
                let (pair, others, p) = if with_flows {
                    (&mut loaded, n, loaded_ports[round])
                } else {
                    (&mut base, 0, base_ports[round])
                };
                let run = pair
                    .run(round, others, p, opts.seconds, &softirqd)
                    .with_context(|| format!("{} with {others} flows, round {round}", plane.label()))?;
                tracing::info!(
                    plane = plane.label(),
                    others,
                    gbps = run.goodput_bps / 1e9,
                    "throughput run"
                );
                runs.push(run);
            }
        }
        let mut row = throughput_row(plane, n, grow_ms, runs);
        row.translated = loaded.translated()?;
        row.baseline_translated = base.translated()?;
        for (a, b) in [row.translated, row.baseline_translated] {
            ok &= a > 0 && b > 0;
        }
        row.install_one_ms = install_one_ms;
        row.baseline_install_one_ms = baseline_install_one_ms;
        row.install_one_ratio = install_one_ms / baseline_install_one_ms;
        rows.push(row);
        (base_old, loaded_old) = (base_ports, loaded_ports);
    }
    base.close()?;
    loaded.close()?;
    Ok((rows, ok))
}

/// Summarises the runs of one N: the ratios are taken within each round.
fn throughput_row(plane: Plane, others: usize, grow_ms: f64, runs: Vec<ThroughputRun>) -> ThroughputRow {
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    let pick =
        |round: usize, loaded: bool| runs.iter().find(|r| r.round == round && (r.others > 0) == loaded);
    let (mut g, mut c) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if let (Some(l), Some(b)) = (pick(round, true), pick(round, false)) {
            g.push(l.goodput_bps / b.goodput_bps);
            c.push(l.cpu_s_per_gb / b.cpu_s_per_gb);
        }
    }
    let gbps = |loaded: bool| {
        median(
            &runs
                .iter()
                .filter(|r| (r.others > 0) == loaded)
                .map(|r| r.goodput_bps / 1e9)
                .collect::<Vec<_>>(),
        )
    };
    let nan = Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
    };
    ThroughputRow {
        plane,
        others,
        grow_ms,
        install_one_ms: f64::NAN,
        baseline_install_one_ms: f64::NAN,
        install_one_ratio: f64::NAN,
        goodput_gbps: gbps(true),
        baseline_gbps: gbps(false),
        goodput_ratio: spread(&g).unwrap_or(nan),
        cpu_per_gb_ratio: spread(&c).unwrap_or(nan),
        translated: (0, 0),
        baseline_translated: (0, 0),
        runs,
    }
}

// ---- 3. control-plane cost per move ----

const CORE_A_OLD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2));
const CORE_A_NEW: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 7));
const CORE_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 2));
/// One way; the lab's RTT.
const CORE_LATENCY: Duration = Duration::from_millis(10);
/// How long (virtual) the move may run: past the longest retransmission schedule.
const CORE_HORIZON: Duration = Duration::from_secs(60);

/// A's flow `i` (B sees it reversed): local ports from 1024, one server port per 60,000.
fn core_flow(i: usize) -> Tuple {
    let local = SocketAddr::new(CORE_A_OLD, 1024 + (i % 60_000) as u16);
    let remote = SocketAddr::new(CORE_B, 5001 + (i / 60_000) as u16);
    Tuple::new(Protocol::Tcp, local, remote)
}

struct CoreHost {
    ep: Endpoint,
    table_changes: u64,
    last_change: roam_core::Instant,
}

/// Two endpoints and the network between them; the clock jumps to the next delivery
/// or timer.
struct CorePair {
    now: roam_core::Instant,
    hosts: [CoreHost; 2],
    /// Which host answers at each address.
    owner: BTreeMap<IpAddr, usize>,
    /// Sent at nondecreasing times with one latency: delivery order is sending order.
    in_flight: VecDeque<(roam_core::Instant, Transmit)>,
    /// Counted while true.
    counting: bool,
    traffic: BTreeMap<String, Traffic>,
    last_delivery: roam_core::Instant,
}

impl CorePair {
    fn new(message: MoveMessage) -> CorePair {
        let keys = [StaticKey::from_bytes([1; 32]), StaticKey::from_bytes([2; 32])];
        let host = |i: usize| {
            let trust = Trust::keys(
                keys.iter()
                    .enumerate()
                    .map(|(j, k)| (k.public(), format!("host{j}"))),
            );
            let mut cfg = Config::new(keys[i].clone(), trust);
            cfg.move_message = message;
            // As roamd on the kernel's plane (nftables): held packets are dropped.
            cfg.holds_packets = false;
            CoreHost {
                ep: Endpoint::new(cfg, Box::new(ChaCha8Rng::seed_from_u64(i as u64))),
                table_changes: 0,
                last_change: roam_core::Instant::ZERO,
            }
        };
        CorePair {
            now: roam_core::Instant::from_millis(1),
            hosts: [host(0), host(1)],
            owner: BTreeMap::new(),
            in_flight: VecDeque::new(),
            counting: false,
            traffic: BTreeMap::new(),
            last_delivery: roam_core::Instant::ZERO,
        }
    }

    fn input(&mut self, h: usize, input: Input<'_>) {
        let now = self.now;
        let host = &mut self.hosts[h];
        host.ep.handle(now, input);
        // Drained in the order the endpoint's documentation asks for.
        while let Some(c) = host.ep.poll_dataplane() {
            if matches!(c, DataPlaneCommand::Table(_)) {
                host.table_changes += 1;
                host.last_change = now;
            }
        }
        while let Some(t) = host.ep.poll_transmit() {
            if self.counting {
                let kind = roam_wire::Frame::parse(&t.payload)
                    .map(|f| f.header().msg_type.to_string())
                    .unwrap_or_else(|_| "malformed".into());
                let e = self.traffic.entry(kind).or_default();
                e.messages += 1;
                e.bytes += t.payload.len() as u64;
            }
            self.in_flight.push_back((now + CORE_LATENCY, t));
        }
        while host.ep.poll_event().is_some() {}
    }

    fn add_address(&mut self, h: usize, a: IpAddr) {
        self.owner.insert(a, h);
        self.input(h, Input::AddressAdded(a));
    }

    fn remove_address(&mut self, h: usize, a: IpAddr) {
        self.owner.remove(&a);
        self.input(h, Input::AddressRemoved(a));
    }

    /// Runs until nothing is in flight and no timer is due before `until`: true then,
    /// false if the wall clock passed `deadline` first.
    fn drive(&mut self, until: roam_core::Instant, deadline: Instant) -> bool {
        for step in 0u64.. {
            if step % 256 == 0 && Instant::now() > deadline {
                return false;
            }
            let next_packet = self.in_flight.front().map(|(t, _)| *t);
            let next_timer = self.hosts.iter().filter_map(|h| h.ep.poll_timeout()).min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                return true;
            };
            if next > until {
                return true;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let Some((_, t)) = self.in_flight.pop_front() else {
                    continue;
                };
                self.last_delivery = self.now;
                if let Some(&h) = self.owner.get(&t.dst.ip()) {
                    self.input(
                        h,
                        Input::Datagram {
                            local: t.dst,
                            remote: t.src,
                            payload: &t.payload,
                        },
                    );
                }
            } else {
                for h in 0..2 {
                    if self.hosts[h].ep.poll_timeout().is_some_and(|t| t <= self.now) {
                        self.input(h, Input::Timeout);
                    }
                }
            }
        }
        true
    }
}

/// This thread's CPU time in nanoseconds. (Not /proc/thread-self/schedstat: the
/// running thread's figure there is only brought up to date at a scheduler tick.)
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// One move of `n` flows on a fresh pair.
fn control_move_once(n: usize, message: MoveMessage, budget: Duration) -> Result<ControlMove> {
    let mut p = CorePair::new(message);
    p.add_address(0, CORE_A_OLD);
    p.add_address(1, CORE_B);
    let setup = Instant::now();
    for i in 0..n {
        let t = core_flow(i);
        p.input(0, Input::FlowOpened(t));
        p.input(1, Input::FlowOpened(t.reversed()));
    }
    if !p.drive(p.now + Duration::from_secs(10), setup + budget) {
        bail!("registering {n} flows took longer than {budget:?}");
    }
    let setup_ms = ms(setup.elapsed());
    for (h, ep) in p.hosts.iter().map(|h| &h.ep).enumerate() {
        let shared = ep.peers().map(|peer| peer.flows.len()).max().unwrap_or(0);
        if shared != n {
            bail!("host {h} registered {shared} of {n} flows with its peer");
        }
    }
    let before: Vec<roam_core::Counters> = p.hosts.iter().map(|h| h.ep.counters().clone()).collect();
    let changes_before = (p.hosts[0].table_changes, p.hosts[1].table_changes);
    p.counting = true;
    let t0 = p.now;
    let cpu0 = thread_cpu_ns();
    let wall = Instant::now();
    // As DHCP does: the new address comes, then the old one goes.
    p.add_address(0, CORE_A_NEW);
    p.remove_address(0, CORE_A_OLD);
    let finished = p.drive(t0 + CORE_HORIZON, wall + budget);
    let wall_ms = ms(wall.elapsed());
    let cpu_ms = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6),
        _ => None,
    };
    let (a, b) = (p.hosts[0].ep.counters(), p.hosts[1].ep.counters());
    let since = |t: roam_core::Instant| if t > t0 { ms(t - t0) } else { 0.0 };
    let messages = p.traffic.values().map(|t| t.messages).sum();
    let bytes: u64 = p.traffic.values().map(|t| t.bytes).sum();
    Ok(ControlMove {
        move_message: message,
        flows: n,
        reps: 1,
        finished,
        flows_moved: a.flows_moved - before[0].flows_moved,
        flows_failed: a.flows_move_failed - before[0].flows_move_failed,
        peer_applied: b.migrations_applied - before[1].migrations_applied,
        setup_ms,
        wall_ms,
        cpu_ms,
        virtual_ms_tables: since(p.hosts[0].last_change.max(p.hosts[1].last_change)),
        virtual_ms_quiet: since(p.last_delivery),
        messages,
        bytes,
        by_type: p.traffic.clone(),
        retransmits: (a.retransmits - before[0].retransmits) + (b.retransmits - before[1].retransmits),
        rate_limited: (a.drop_rate_limited - before[0].drop_rate_limited)
            + (b.drop_rate_limited - before[1].drop_rate_limited),
        budget_refusals: (a.budget_refusals - before[0].budget_refusals)
            + (b.budget_refusals - before[1].budget_refusals),
        path_validated: b.paths_validated > before[1].paths_validated,
        table_changes: (
            p.hosts[0].table_changes - changes_before.0,
            p.hosts[1].table_changes - changes_before.1,
        ),
        wall_us_per_flow: wall_ms * 1e3 / n as f64,
        cpu_us_per_flow: cpu_ms.map(|c| c * 1e3 / n as f64),
        bytes_per_flow: bytes as f64 / n as f64,
        cost_ratio_to_one: f64::NAN,
    })
}

/// Every size in `flows` (and 1, the baseline), for one kind of move message.
fn measure_control(opts: &Options, flows: &[usize], message: MoveMessage) -> Result<Vec<ControlMove>> {
    let mut sizes = flows.to_vec();
    if !sizes.contains(&1) {
        sizes.insert(0, 1);
    }
    let mut out: Vec<ControlMove> = Vec::new();
    for &n in &sizes {
        let reps = if n <= 1000 { opts.control_reps.max(1) } else { 1 };
        let mut runs = Vec::new();
        for _ in 0..reps {
            let m = control_move_once(n, message, opts.control_budget)
                .with_context(|| format!("moving {n} flows"))?;
            let done = m.finished;
            runs.push(m);
            if !done {
                break;
            }
        }
        let mut m = runs[0].clone();
        m.reps = runs.len();
        m.wall_ms = median(&runs.iter().map(|r| r.wall_ms).collect::<Vec<_>>());
        m.setup_ms = median(&runs.iter().map(|r| r.setup_ms).collect::<Vec<_>>());
        m.cpu_ms = runs
            .iter()
            .map(|r| r.cpu_ms)
            .collect::<Option<Vec<f64>>>()
            .map(|v| median(&v));
        m.wall_us_per_flow = m.wall_ms * 1e3 / n as f64;
        m.cpu_us_per_flow = m.cpu_ms.map(|c| c * 1e3 / n as f64);
        tracing::info!(
            ?message,
            flows = n,
            wall_ms = m.wall_ms,
            messages = m.messages,
            finished = m.finished,
            "control-plane move"
        );
        out.push(m);
    }
    let cost = |m: &ControlMove| m.cpu_ms.unwrap_or(m.wall_ms);
    let one = out.iter().find(|m| m.flows == 1).map(cost);
    for m in &mut out {
        if let Some(one) = one.filter(|&c| c > 0.0) {
            m.cost_ratio_to_one = cost(m) / one;
        }
    }
    // The baseline was added for the ratios only.
    out.retain(|m| flows.contains(&m.flows));
    Ok(out)
}

// ---- 4. roamd's memory per flow ----

/// The port B's test server listens on.
const MEMORY_PORT: u16 = 7001;
/// Threads opening connections at once (each waits one round trip per connection).
const CONNECTORS: usize = 64;

/// VmRSS and VmHWM of a process, in KiB.
fn rss_kib(pid: u64) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Raises RLIMIT_NOFILE's soft limit to at least `want` descriptors (up to the hard
/// limit, which only CAP_SYS_RESOURCE may raise).
fn raise_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    if lim.rlim_max < want {
        bail!(
            "{want} descriptors needed for the connections, but RLIMIT_NOFILE's hard limit is {} (raise it, or measure fewer flows)",
            lim.rlim_max
        );
    }
    lim.rlim_cur = want;
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("raising RLIMIT_NOFILE to {want}"));
    }
    Ok(())
}

/// The connections of the memory measurement. A's ends are sockets of this process;
/// B's stay in the listener's accept queue, established but never accepted: the
/// kernel holds them without a descriptor (sock_diag, and so roamd, lists them like any
/// other), so N connections cost N descriptors here, not 2N.
struct Connections {
    // Closing it resets the queued connections: dropped after the clients.
    clients: Vec<TcpStream>,
    _listener: TcpListener,
    to: SocketAddr,
}

impl Connections {
    /// Listens in B for up to `max` connections.
    fn new(topology: &Topology, max: usize) -> Result<Connections> {
        let to = SocketAddr::new(topology.b_address(Family::V4), MEMORY_PORT);
        let backlog = max + CONNECTORS;
        // The accept queue is min(backlog, somaxconn), a per-namespace setting.
        topology
            .b()
            .sysctl(&[("net.core.somaxconn", &backlog.max(4096).to_string())])?;
        // A socket belongs to the namespace it was made in, whichever thread uses it.
        let listener = topology
            .b()
            .run(|| -> std::io::Result<TcpListener> {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&to.into())?;
                s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
                Ok(s.into())
            })?
            .with_context(|| format!("listening on {to} in B"))?;
        Ok(Connections {
            clients: Vec::new(),
            _listener: listener,
            to,
        })
    }

    /// Opens connections from A until there are `total`.
    fn grow_to(&mut self, topology: &Topology, total: usize) -> Result<()> {
        let add = total.saturating_sub(self.clients.len());
        if add == 0 {
            return Ok(());
        }
        let to = self.to;
        // Threads made inside A's namespace start in it.
        let clients = topology.a().run(|| {
            std::thread::scope(|s| {
                let k = CONNECTORS.min(add);
                let workers: Vec<_> = (0..k)
                    .map(|w| {
                        let share = add / k + usize::from(w < add % k);
                        s.spawn(move || -> Result<Vec<TcpStream>> {
                            (0..share)
                                .map(|_| {
                                    TcpStream::connect_timeout(&to, Duration::from_secs(10))
                                        .with_context(|| format!("connecting to {to}"))
                                })
                                .collect()
                        })
                    })
                    .collect();
                let mut all = Vec::with_capacity(add);
                for w in workers {
                    all.extend(w.join().map_err(|_| anyhow!("a connecting thread panicked"))??);
                }
                Ok::<_, anyhow::Error>(all)
            })
        })??;
        self.clients.extend(clients);
        Ok(())
    }
}

/// roamd on A and B, killed when dropped (stopped properly by [`Daemons::stop`]).
struct Daemons {
    roamds: Roamds,
}

impl Daemons {
    /// Starts `roam daemon` on A and B as the lab runs it (nftables plane), sending
    /// `message` when it moves; returns once both are up.
    fn start(
        topology: &Topology,
        dir: &std::path::Path,
        binary: &std::path::Path,
        message: MoveMessage,
    ) -> Result<Daemons> {
        let mut d = Daemons {
            roamds: Roamds::new(dir, binary),
        };
        let name = serde_json::to_value(message)?;
        let name = name.as_str().context("a move message's name")?;
        d.roamds.configure(
            &HOSTS,
            &RoamdConfig {
                nudge: true,
                data_plane: "nftables".into(),
                move_message: Some(name.to_owned()),
            },
        )?;
        d.roamds.spawn(topology.a(), "a")?;
        d.roamds.spawn(topology.b(), "b")?;
        d.roamds.wait_up(&HOSTS)?;
        Ok(d)
    }

    /// `roam down` and SIGTERM on both; the first error, after trying both.
    fn stop(&mut self) -> Result<()> {
        let results: Vec<_> = HOSTS.iter().map(|h| self.roamds.stop(h)).collect();
        for r in results {
            r?;
        }
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        self.roamds.kill_all();
    }
}

const HOSTS: [&str; 2] = ["a", "b"];

/// What the memory measurement reads of a roamd's status.
struct RoamdView<'a> {
    roamds: &'a Roamds,
    host: &'static str,
}

impl RoamdView<'_> {
    /// Waits (bounded) for a status satisfying `ok`, written after `after`.
    fn wait(
        &self,
        after: SystemTime,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        Ok(self.roamds.wait_status_since(self.host, after, within, ok)?)
    }

    fn pid(&self, status: &serde_json::Value) -> Result<u64> {
        status["pid"]
            .as_u64()
            .with_context(|| format!("roamd {}'s status has no pid", self.host))
    }
}

/// How long a fresh status may take: roamd writes it every second, but a status of
/// thousands of flows takes a while to write (about 630 bytes of JSON a flow), and
/// longer while roamd is busy.
fn snapshot_wait(flows: usize) -> Duration {
    Duration::from_secs(10 + flows as u64 / 500)
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

fn peer_flows(status: &serde_json::Value) -> u64 {
    status["peers"]
        .as_array()
        .and_then(|p| p.iter().filter_map(|p| p["flows"].as_u64()).max())
        .unwrap_or(0)
}

/// Flows on the wire under other addresses than their sockets'.
fn migrated_entries(status: &serde_json::Value) -> usize {
    status["flows"]
        .as_array()
        .map_or(0, |f| f.iter().filter(|f| f["original"] != f["current"]).count())
}

fn measure_memory(opts: &Options, flows: &[usize]) -> Result<MemoryReport> {
    let mut steps: Vec<usize> = flows.iter().copied().filter(|&n| n <= opts.memory_max).collect();
    let skipped: Vec<usize> = flows.iter().copied().filter(|&n| n > opts.memory_max).collect();
    if !skipped.is_empty() {
        steps.push(opts.memory_max);
    }
    // The first step is the baseline: one flow, so that the session exists.
    steps.insert(0, 1);
    steps.sort_unstable();
    steps.dedup();
    let max_flows = *steps.last().unwrap_or(&1);
    raise_nofile(max_flows as u64 + 1024)?;

    let topology = Topology::build(TopologyOptions {
        prefix: "rbs".into(),
        ..TopologyOptions::default()
    })?;
    let dir = match &opts.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("roam-bench-scale-{}", std::process::id())),
    };
    let result = memory_on(&topology, &dir, opts, &steps, skipped);
    if opts.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn memory_on(
    topology: &Topology,
    dir: &std::path::Path,
    opts: &Options,
    steps: &[usize],
    skipped: Vec<usize>,
) -> Result<MemoryReport> {
    let mut daemons = Daemons::start(topology, dir, &opts.roam_binary, opts.memory_move_message)?;
    let a = RoamdView {
        roamds: &daemons.roamds,
        host: "a",
    };
    let b = RoamdView {
        roamds: &daemons.roamds,
        host: "b",
    };
    let mut conns = Connections::new(topology, *steps.last().unwrap_or(&1))?;
    let mut out = Vec::new();
    let (mut a_pid, mut b_pid) = (0, 0);
    // roamd's clock (seconds since it started) on the wall clock, from the first
    // (small, quickly written) status: its file time less its uptime.
    let mut a_started = None;
    for &n in steps {
        let t = Instant::now();
        conns
            .grow_to(topology, n)
            .with_context(|| format!("opening {n} connections"))?;
        let connect_s = t.elapsed().as_secs_f64();
        let opened = SystemTime::now();
        let listed = Instant::now();
        let within = Duration::from_secs(30 + n as u64 / 500);
        a.wait(opened, within, |s| peer_flows(s) >= n as u64)?;
        b.wait(opened, within, |s| peer_flows(s) >= n as u64)?;
        let listed_s = listed.elapsed().as_secs_f64();
        // One more snapshot each: roamd's periodic work has run with every flow.
        let now = SystemTime::now();
        let sa = a.wait(now, snapshot_wait(n), |_| true)?;
        let sb = b.wait(now, snapshot_wait(n), |_| true)?;
        if a_started.is_none() {
            let mtime = std::fs::metadata(daemons.roamds.status_path("a"))?.modified()?;
            let up = Duration::from_secs_f64(sa["uptime_s"].as_f64().unwrap_or(0.0));
            a_started = mtime.checked_sub(up);
        }
        (a_pid, b_pid) = (a.pid(&sa)?, b.pid(&sb)?);
        let (a_rss_kib, a_hwm_kib) = rss_kib(a_pid)?;
        let (b_rss_kib, b_hwm_kib) = rss_kib(b_pid)?;
        tracing::info!(flows = n, a_rss_kib, b_rss_kib, "roamd memory");
        out.push(MemoryStep {
            flows: n,
            connect_s,
            listed_s,
            a_rss_kib,
            a_hwm_kib,
            b_rss_kib,
            b_hwm_kib,
        });
    }
    let per_flow = |f: fn(&MemoryStep) -> u64| match (out.first(), out.last()) {
        (Some(x), Some(y)) if y.flows > x.flows => {
            (f(y) as f64 - f(x) as f64) * 1024.0 / (y.flows - x.flows) as f64
        }
        _ => f64::NAN,
    };
    let a_bytes_per_flow = per_flow(|s| s.a_rss_kib);
    let b_bytes_per_flow = per_flow(|s| s.b_rss_kib);

    // One move with every connection.
    let n = *steps.last().unwrap_or(&1);
    let before_a = a.wait(SystemTime::UNIX_EPOCH, Duration::from_secs(5), |_| true)?;
    let before_b = b.wait(SystemTime::UNIX_EPOCH, Duration::from_secs(5), |_| true)?;
    let times = roam_lab::systems::lab_move(topology)?;
    let within = opts.memory_move_wait;
    let settled = |s: &serde_json::Value| {
        counter(s, "flows_moved") + counter(s, "flows_move_failed")
            >= counter(&before_a, "flows_moved") + counter(&before_a, "flows_move_failed") + n as u64
    };
    let (sa, settled) = match a.wait(times.started, within, settled) {
        Ok(s) => (s, true),
        Err(e) => {
            tracing::warn!("the move of {n} flows did not settle: {e:#}");
            // What it had done by then.
            (
                a.wait(SystemTime::UNIX_EPOCH, Duration::from_secs(5), |_| true)?,
                false,
            )
        }
    };
    // B's entries: once A is done, B applied what it will.
    let sb = b.wait(SystemTime::now(), snapshot_wait(n), |_| true)?;
    let peers_max = |key: &str| {
        sa["peers"]
            .as_array()
            .and_then(|p| p.iter().filter_map(|p| p[key].as_f64()).reduce(f64::max))
    };
    // roamd's clock (seconds since it started, put on the wall clock from its first
    // status) as seconds since the address change.
    let since_change = |at_s: f64| {
        a_started
            .and_then(|started| {
                (started + Duration::from_secs_f64(at_s))
                    .duration_since(times.started)
                    .ok()
            })
            .map(|d| d.as_secs_f64())
    };
    let change_at = a_started
        .and_then(|s| times.started.duration_since(s).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    // The endpoint's MoveStarted event, as roamd records it (its Display).
    let update_sent_s = sa["events"]
        .as_array()
        .and_then(|ev| {
            ev.iter().find(|e| {
                e["at_s"].as_f64().is_some_and(|t| t >= change_at)
                    && e["what"].as_str().is_some_and(|w| w.starts_with("moving "))
            })
        })
        .and_then(|e| e["at_s"].as_f64())
        .and_then(since_change);
    let completed_s = peers_max("last_move_at_s")
        .filter(|_| settled)
        .and_then(since_change);
    let delta = |now: &serde_json::Value, before: &serde_json::Value, name: &str| {
        counter(now, name).saturating_sub(counter(before, name))
    };
    let (a_rss_kib, _) = rss_kib(a_pid)?;
    let (b_rss_kib, _) = rss_kib(b_pid)?;
    let moved = MemoryMove {
        flows: n,
        move_message: opts.memory_move_message,
        settled,
        address_change_s: times.duration().as_secs_f64(),
        update_sent_s,
        completed_s,
        exchange_ms: peers_max("last_move_ms").filter(|_| settled),
        a_flows_moved: delta(&sa, &before_a, "flows_moved"),
        a_flows_failed: delta(&sa, &before_a, "flows_move_failed"),
        a_retransmits: delta(&sa, &before_a, "retransmits"),
        b_migrations_applied: delta(&sb, &before_b, "migrations_applied"),
        b_rate_limited: delta(&sb, &before_b, "drop_rate_limited"),
        a_entries: migrated_entries(&sa),
        b_entries: migrated_entries(&sb),
        a_rss_kib,
        b_rss_kib,
    };
    let mut notes = Vec::new();
    if !settled {
        notes.push(format!(
            "A's move of {n} flows had not settled {:.0} s after the address change",
            within.as_secs_f64()
        ));
    }
    drop(conns);
    // Taking roam out (`roam down`) removes every entry; a roamd still busy with the move
    // may not answer in time. It is killed then (and its namespaces go): a finding, not
    // a failure of the measurement.
    if let Err(e) = daemons.stop() {
        notes.push(format!("stopping roamd: {e}"));
    }
    Ok(MemoryReport {
        steps: out,
        a_bytes_per_flow,
        b_bytes_per_flow,
        moved,
        skipped,
        notes,
    })
}

// ---- the table ----

/// The report as plain-text tables.
pub fn render(r: &ScaleReport) -> String {
    let mut s = String::new();
    let build = if r.debug_build {
        "debug build"
    } else {
        "release build"
    };
    let _ = writeln!(
        s,
        "roam bench scale: Linux {}, {build}{}",
        r.kernel,
        if r.quick { ", quick" } else { "" }
    );
    if !r.install.is_empty() {
        let _ = writeln!(
            s,
            "\nrule install: one batch of N new flow entries (both directions each) on one host, median (best) of the repetitions; target: 100,000 in under 1 s"
        );
        let _ = writeln!(
            s,
            "{:>8} {:>22} {:>10} {:>20} {:>10}",
            "flows", "nftables ms", "us/flow", "tc-BPF ms", "us/flow"
        );
        for &n in &r.flows {
            let get = |p: Plane| {
                r.install
                    .iter()
                    .find(|i| i.install.flows == n && i.install.plane == p)
            };
            let cell = |i: Option<&InstallRow>| {
                i.map_or(("-".to_owned(), "-".to_owned()), |i| {
                    (
                        format!(
                            "{:.3} ({:.3}){}",
                            i.install.install_median_ms,
                            i.install.install_best_ms,
                            if i.under_1s { "" } else { " !" }
                        ),
                        format!("{:.2}", i.us_per_flow),
                    )
                })
            };
            let (nft, nft_us) = cell(get(Plane::Nftables));
            let (bpf, bpf_us) = cell(get(Plane::TcBpf));
            let _ = writeln!(s, "{n:>8} {nft:>22} {nft_us:>10} {bpf:>20} {bpf_us:>10}");
        }
        let _ = writeln!(s, "(! = over 1 s)");
    }
    if !r.throughput.is_empty() {
        let _ = writeln!(
            s,
            "\nthroughput: iperf3 over one translated flow while the planes (both hosts) hold N other migrated flows, against the same with none; per-round ratios, median (min-max)"
        );
        let _ = writeln!(
            s,
            "{:<9} {:>8} {:>9} {:>22} {:>22} {:>22} {:>11}",
            "plane",
            "flows",
            "Gbit/s",
            "goodput vs 0 flows",
            "CPU/GB vs 0 flows",
            "+1 flow ms (x 0 flows)",
            "install ms"
        );
        for t in &r.throughput {
            let _ = writeln!(
                s,
                "{:<9} {:>8} {:>9.2} {:>22} {:>22} {:>22} {:>11.1}",
                t.plane.label(),
                t.others,
                t.goodput_gbps,
                t.goodput_ratio.to_string(),
                t.cpu_per_gb_ratio.to_string(),
                format!("{:.1} (x {:.1})", t.install_one_ms, t.install_one_ratio),
                t.grow_ms,
            );
        }
        let _ = writeln!(
            s,
            "(+1 flow: installing one more flow on both hosts with N installed, and its ratio to the same with none; install ms: adding this row's entries to both hosts; baseline Gbit/s: {})",
            r.throughput
                .iter()
                .map(|t| format!("{:.2}", t.baseline_gbps))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if r.throughput.iter().any(|t| t.runs.len() < 6) {
            let _ = writeln!(
                s,
                "(fewer than three rounds: a single ratio moves by 20% and more with the machine's other work)"
            );
        }
    }
    if !r.control.is_empty() {
        let _ = writeln!(
            s,
            "\ncontrol plane: one move of N flows between two roam-core endpoints in this process (10 ms each way, no loss), until quiet; cost x 1 flow: CPU over the 1-flow move's"
        );
        let _ = writeln!(
            s,
            "{:<17} {:>7} {:>4} {:>7} {:>7} {:>9} {:>9} {:>8} {:>8} {:>6} {:>9} {:>7} {:>7} {:>5} {:>5} {:>6}",
            "message",
            "flows",
            "done",
            "moved",
            "failed",
            "wall ms",
            "CPU ms",
            "x 1 flow",
            "us/flow",
            "msgs",
            "bytes",
            "B/flow",
            "virt ms",
            "retx",
            "limit",
            "budget"
        );
        for m in &r.control {
            let name = match m.move_message {
                MoveMessage::ConnectionUpdate => "connection-update",
                MoveMessage::MigrationRequest => "migration-request",
                MoveMessage::AddressChange => "address-change",
            };
            let _ = writeln!(
                s,
                "{:<17} {:>7} {:>4} {:>7} {:>7} {:>9.2} {:>9} {:>8.1} {:>8} {:>6} {:>9} {:>7.1} {:>7.0} {:>5} {:>5} {:>6}",
                name,
                m.flows,
                if m.finished { "yes" } else { "NO" },
                m.flows_moved,
                m.flows_failed,
                m.wall_ms,
                m.cpu_ms.map_or("-".into(), |c| format!("{c:.2}")),
                m.cost_ratio_to_one,
                m.cpu_us_per_flow.map_or("-".into(), |c| format!("{c:.2}")),
                m.messages,
                m.bytes,
                m.bytes_per_flow,
                m.virtual_ms_tables,
                m.retransmits,
                m.rate_limited,
                m.budget_refusals,
            );
        }
        let _ = writeln!(
            s,
            "(done: ran until quiet within the wall budget; moved/failed: flows the mover had confirmed / gave up on; us/flow: CPU; virt ms: virtual time to the last table change; retx: retransmissions; limit: dropped over the peer's update rate limit; budget: answers not sent to the mover's unproven new address)"
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "\nroamd memory: real TCP connections A->B on the lab topology, roamd (nftables) on both hosts"
        );
        let _ = writeln!(
            s,
            "{:>8} {:>11} {:>11} {:>11} {:>11} {:>10} {:>10}",
            "flows", "A RSS KiB", "A peak KiB", "B RSS KiB", "B peak KiB", "connect s", "listed s"
        );
        for st in &m.steps {
            let _ = writeln!(
                s,
                "{:>8} {:>11} {:>11} {:>11} {:>11} {:>10.2} {:>10.2}",
                st.flows, st.a_rss_kib, st.a_hwm_kib, st.b_rss_kib, st.b_hwm_kib, st.connect_s, st.listed_s
            );
        }
        let _ = writeln!(
            s,
            "per flow (RSS growth from the first step): A {:.0} bytes, B {:.0} bytes",
            m.a_bytes_per_flow, m.b_bytes_per_flow
        );
        let mv = &m.moved;
        let _ = writeln!(
            s,
            "A moved with {} flows: address change {:.2} s; update sent {} and {} after it (exchange {}); {} moved, {} failed, {} retransmissions; B applied {} ({} rate-limited drops); entries A {} / B {}; RSS after: A {} KiB, B {} KiB",
            mv.flows,
            mv.address_change_s,
            mv.update_sent_s.map_or("?".into(), |c| format!("{c:.2} s")),
            match mv.completed_s {
                Some(c) => format!("done {c:.2} s"),
                None if mv.settled => "done (time unknown)".into(),
                None => "NOT settled".into(),
            },
            mv.exchange_ms.map_or("?".into(), |c| format!("{c:.0} ms")),
            mv.a_flows_moved,
            mv.a_flows_failed,
            mv.a_retransmits,
            mv.b_migrations_applied,
            mv.b_rate_limited,
            mv.a_entries,
            mv.b_entries,
            mv.a_rss_kib,
            mv.b_rss_kib
        );
        for n in &m.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if !m.skipped.is_empty() {
            let _ = writeln!(
                s,
                "not measured with real connections: {:?} (largest measured instead)",
                m.skipped
            );
        }
    }
    if !r.shortfalls.is_empty() {
        let _ = writeln!(s, "\nshort of the targets:");
        for x in &r.shortfalls {
            let _ = writeln!(s, "- {x}");
        }
    }
    for e in &r.errors {
        let _ = writeln!(s, "\nFAILED: {e}");
    }
    if r.ok {
        let _ = writeln!(s, "\nOK: every part ran and every check held");
    }
    s
}
