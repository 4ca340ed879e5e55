//! `roam bench dataplane`: nftables ([`roam_linux::nft`]) against tc-BPF
//! ([`roam_linux::tcbpf`]) as roam's kernel data plane, measured in one run on this
//! kernel (issue 5: "chosen by measurement").
//!
//! # The path
//!
//! Two namespaces, A and B, joined by one veth pair and nothing else: no userspace link
//! emulation, so what differs between the runs is the data plane's cost, not a link's.
//! A has its *current* address 10.89.0.3 on the veth and its *original* one 10.89.0.1
//! on `lo` (a host after a move keeps its old address for existing sockets); B is
//! 10.89.0.2.
//!
//! - **plain TCP**: iperf3 from 10.89.0.3 to B, no data plane loaded at all.
//! - **nftables**: iperf3 from 10.89.0.1 (the original tuple), `NftDataPlane` in both
//!   namespaces with the flow's entries: A rewrites 10.89.0.1 -> 10.89.0.3 on the way
//!   out and back on the way in, B the reverse; the wire carries 10.89.0.3 only.
//! - **tc-BPF**: the same with `TcBpfDataPlane` on both veth ends.
//!
//! Only iperf3's data connection has entries (`--cport` fixes its port); its control
//! connection crosses untranslated. Each run is `seconds` long, one TCP stream; the
//! rounds run the three planes in a rotating order (interleaved, so that the load of
//! the machine's other work falls on all three alike), and the ratios to plain TCP are
//! the medians of the ratios *within* each round.
//!
//! # CPU per GB
//!
//! The CPU time of the two iperf3 processes as getrusage(2) counts it (iperf3 reports
//! its own and its server's: `cpu_utilization_percent` host_total and remote_total,
//! times the run's length), plus the time of the `ksoftirqd` threads over the run (from
//! /proc). Over veth nearly all of the receive path (softirq) runs in the sending
//! process's context when it re-enables bottom halves, and without
//! CONFIG_IRQ_TIME_ACCOUNTING (this kernel has none) the scheduler charges that time to
//! the process it interrupted: so getrusage already holds the softirq work done in the
//! iperf3 processes' context, and ksoftirqd holds what was deferred. Not counted: a
//! softirq that happens to run in another process's context (a timer firing while a
//! compiler runs). The system-wide /proc/stat busy time is recorded too (`--json`), but
//! on a machine shared with other work it measures that work as well.
//!
//! # Rule-install latency
//!
//! One batch of N new flow entries (both directions of each), timed around
//! `apply_batch`: nft runs one `nft -f -` transaction, tc-BPF writes its two hash maps
//! with `BPF_MAP_UPDATE_BATCH`. Fresh flows each repetition (a first install, as on a
//! move), removed (also timed) before the next. nft's drain is off here (a removal
//! deletes at once) so that every repetition starts from the same table.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roam_core::DataPlaneCommand;
use roam_core::translate::{FlowMapping, Protocol, TableChange, Tuple};
use roam_lab::netns::ChildOutput;
use roam_lab::{Lab, Ns};
use roam_linux::nft::{NftConfig, NftDataPlane};
use roam_linux::tcbpf::{TcBpfConfig, TcBpfDataPlane};
use serde::Serialize;

use super::stats::{max, median, min};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds; each runs plain TCP, nftables and tc-BPF once, in a rotating order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Batch sizes for the install latency, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000,100000")]
    flows: Vec<usize>,
    /// Skip the goodput and CPU part.
    #[arg(long)]
    no_goodput: bool,
    /// Skip the install-latency part.
    #[arg(long)]
    no_install: bool,
    /// Print every measurement as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) const A_IF: &str = "rba";
pub(crate) const B_IF: &str = "rbb";
pub(crate) const A_ORIGINAL: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
const A_CURRENT: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 3);
const IPERF_PORT: u16 = 5201;
/// /proc's unit of CPU time (USER_HZ, 100 on every Linux architecture roam runs on).
pub(crate) const USER_HZ: f64 = 100.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plane {
    Plain,
    Nftables,
    TcBpf,
}

impl Plane {
    const ALL: [Plane; 3] = [Plane::Plain, Plane::Nftables, Plane::TcBpf];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Plane::Plain => "plain TCP",
            Plane::Nftables => "nftables",
            Plane::TcBpf => "tc-BPF",
        }
    }
}

/// One iperf3 run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub round: usize,
    pub plane: Plane,
    pub client_port: u16,
    pub seconds: f64,
    /// Bytes the receiver got.
    pub bytes: u64,
    pub goodput_bps: f64,
    pub retransmits: u64,
    /// getrusage of the iperf3 client and server (their own report).
    pub client_cpu_s: f64,
    pub server_cpu_s: f64,
    /// ksoftirqd threads over the run.
    pub ksoftirqd_s: f64,
    /// client + server + ksoftirqd.
    pub cpu_s: f64,
    pub cpu_s_per_gb: f64,
    /// /proc/stat over the run, all CPUs (includes the machine's other work).
    pub system_busy_s: f64,
    pub system_softirq_s: f64,
    /// Packets the plane translated: A's egress and B's ingress (none for plain TCP).
    pub translated: Option<(u64, u64)>,
}

/// A plane's runs, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub plane: Plane,
    pub runs: usize,
    pub goodput_gbps_median: f64,
    pub cpu_s_per_gb_median: f64,
    /// Within each round: this plane / plain TCP. Median, min, max over the rounds.
    pub goodput_ratio: [f64; 3],
    pub cpu_per_gb_ratio: [f64; 3],
}

/// Install latency of one batch size on one plane.
#[derive(Clone, Debug, Serialize)]
pub struct Install {
    pub plane: Plane,
    pub flows: usize,
    /// Opening the plane (nft: the base table; tc-BPF: load, verify, attach).
    pub open_ms: f64,
    pub install_ms: Vec<f64>,
    pub remove_ms: Vec<f64>,
    pub install_median_ms: f64,
    pub install_best_ms: f64,
    pub remove_median_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub iperf3: String,
    pub seconds: u64,
    pub rounds: usize,
    pub runs: Vec<Run>,
    pub summary: Vec<Summary>,
    pub install: Vec<Install>,
    /// Every translated run translated (its counters moved).
    pub ok: bool,
}

pub fn run(args: Args) -> Result<bool> {
    if !roam_lab::lab_available()? {
        bail!("the lab is switched off (ROAM_SKIP_NETNS=1)");
    }
    if !roam_linux::tcbpf::available() {
        // Before building anything: the error says what to install.
        TcBpfDataPlane::open(TcBpfConfig::default())?;
    }
    let net = Net::new()?;
    let mut report = Report {
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        iperf3: iperf3_version(),
        seconds: args.seconds,
        rounds: args.rounds,
        runs: Vec::new(),
        summary: Vec::new(),
        install: Vec::new(),
        ok: true,
    };
    if !args.no_goodput {
        let server = net.start_server()?;
        let softirqd = ksoftirqd_threads();
        // A warm-up run, not recorded: the first connection pays for cold caches.
        net.iperf(A_CURRENT, 40999, 1).context("warm-up run")?;
        let mut port = 41000u16;
        for round in 0..args.rounds {
            for i in 0..Plane::ALL.len() {
                let plane = Plane::ALL[(i + round) % Plane::ALL.len()];
                port += 1;
                let run = net
                    .measure(plane, round, port, args.seconds, &softirqd)
                    .with_context(|| format!("round {round}, {}", plane.label()))?;
                if !args.json {
                    eprintln!(
                        "round {round} {:<10} {:>6.2} Gbit/s  {:>6.3} CPU s/GB",
                        plane.label(),
                        run.goodput_bps / 1e9,
                        run.cpu_s_per_gb
                    );
                }
                if let Some((a, b)) = run.translated
                    && (a == 0 || b == 0)
                {
                    report.ok = false;
                }
                report.runs.push(run);
            }
        }
        drop(server);
        report.summary = summarise(&report.runs);
    }
    if !args.no_install {
        for &n in &args.flows {
            for plane in [Plane::Nftables, Plane::TcBpf] {
                let r = install_latency(&net, plane, n)
                    .with_context(|| format!("installing {n} flows with {}", plane.label()))?;
                if !args.json {
                    eprintln!(
                        "install {n:>7} flows {:<9} median {:>9.3} ms",
                        plane.label(),
                        r.install_median_ms
                    );
                }
                report.install.push(r);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.ok)
}

/// The two namespaces and their veth.
pub(crate) struct Net {
    // Dropped last: deletes the namespaces.
    _lab: Lab,
    pub(crate) a: Ns,
    pub(crate) b: Ns,
}

impl Net {
    pub(crate) fn new() -> Result<Net> {
        let lab = Lab::with_prefix("rb")?;
        let a = lab.add_ns("a")?;
        let b = lab.add_ns("b")?;
        a.ip(&[
            "link",
            "add",
            A_IF,
            "type",
            "veth",
            "peer",
            "name",
            B_IF,
            "netns",
            b.name(),
        ])?;
        a.ip(&["link", "set", A_IF, "up"])?;
        b.ip(&["link", "set", B_IF, "up"])?;
        a.ip(&["addr", "add", &format!("{A_CURRENT}/24"), "dev", A_IF])?;
        // The original address, kept for existing sockets as after a move (nft.rs,
        // netlink.rs): B reaches it on this link too (ARP answers for any local
        // address), which the untranslated iperf3 control connection uses.
        a.ip(&["addr", "add", &format!("{A_ORIGINAL}/32"), "dev", "lo"])?;
        b.ip(&["addr", "add", &format!("{B_ADDR}/24"), "dev", B_IF])?;
        Ok(Net { _lab: lab, a, b })
    }

    /// iperf3's server in B, listening when this returns (killed when dropped).
    pub(crate) fn start_server(&self) -> Result<roam_lab::netns::Child> {
        let server = self
            .b
            .spawn(
                &[
                    "iperf3",
                    "-s",
                    "-B",
                    &B_ADDR.to_string(),
                    "-p",
                    &IPERF_PORT.to_string(),
                ],
                ChildOutput::Collect,
            )
            .context("starting the iperf3 server")?;
        self.b
            .wait_listening(IPERF_PORT, &server, Duration::from_secs(5))?;
        Ok(server)
    }

    /// The flow iperf3's data connection from `port` is, seen from A: original and
    /// current tuple.
    pub(crate) fn flow(port: u16) -> (Tuple, Tuple) {
        let b = SocketAddr::new(IpAddr::V4(B_ADDR), IPERF_PORT);
        (
            Tuple::new(Protocol::Tcp, SocketAddr::new(IpAddr::V4(A_ORIGINAL), port), b),
            Tuple::new(Protocol::Tcp, SocketAddr::new(IpAddr::V4(A_CURRENT), port), b),
        )
    }

    /// One run of `plane`: the plane set up with the flow's entries, iperf3, the
    /// plane's counters, the plane gone again.
    fn measure(&self, plane: Plane, round: usize, port: u16, seconds: u64, softirqd: &[u32]) -> Result<Run> {
        let (original, current) = Net::flow(port);
        let for_a = [install(original, current)];
        let for_b = [install(original.reversed(), current.reversed())];
        let active = match plane {
            Plane::Plain => Active::Plain,
            Plane::Nftables => {
                let mut pb = nft_plane(&self.b)?;
                pb.apply_batch(&for_b)?;
                let mut pa = nft_plane(&self.a)?;
                pa.apply_batch(&for_a)?;
                Active::Nft(Box::new((pa, pb)))
            }
            Plane::TcBpf => {
                let mut pb = bpf_plane(&self.b, B_IF, 1024)?;
                pb.apply_batch(&for_b)?;
                let mut pa = bpf_plane(&self.a, A_IF, 1024)?;
                pa.apply_batch(&for_a)?;
                Active::Bpf(Box::new((pa, pb)))
            }
        };
        let src = if plane == Plane::Plain {
            A_CURRENT
        } else {
            A_ORIGINAL
        };
        let before = CpuSnapshot::take(softirqd);
        let result = self.iperf(src, port, seconds)?;
        let after = CpuSnapshot::take(softirqd);
        let translated = match &active {
            Active::Plain => None,
            Active::Nft(p) => Some((
                p.0.counters()?.egress_translated.packets,
                p.1.counters()?.ingress_translated.packets,
            )),
            Active::Bpf(p) => Some((
                p.0.counters()?.egress_translated.packets,
                p.1.counters()?.ingress_translated.packets,
            )),
        };
        match active {
            Active::Plain => {}
            Active::Nft(p) => {
                let (pa, pb) = *p;
                pa.close()?;
                pb.close()?;
            }
            Active::Bpf(p) => {
                let (pa, pb) = *p;
                pa.close()?;
                pb.close()?;
            }
        }
        let ksoftirqd_s = (after.ksoftirqd - before.ksoftirqd) as f64 / USER_HZ;
        let client_cpu_s = result.client_cpu_pct / 100.0 * result.seconds;
        let server_cpu_s = result.server_cpu_pct / 100.0 * result.seconds;
        let cpu_s = client_cpu_s + server_cpu_s + ksoftirqd_s;
        Ok(Run {
            round,
            plane,
            client_port: port,
            seconds: result.seconds,
            bytes: result.bytes,
            goodput_bps: result.bps,
            retransmits: result.retransmits,
            client_cpu_s,
            server_cpu_s,
            ksoftirqd_s,
            cpu_s,
            cpu_s_per_gb: cpu_s / (result.bytes as f64 / 1e9),
            system_busy_s: (after.busy - before.busy) as f64 / USER_HZ,
            system_softirq_s: (after.softirq - before.softirq) as f64 / USER_HZ,
            translated,
        })
    }

    /// iperf3 from `src`:`port` to B for `seconds`.
    pub(crate) fn iperf(&self, src: Ipv4Addr, port: u16, seconds: u64) -> Result<IperfResult> {
        let (src, port, secs) = (src.to_string(), port.to_string(), seconds.to_string());
        let child = self.a.spawn(
            &[
                "iperf3",
                "-c",
                &B_ADDR.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-B",
                &src,
                "--cport",
                &port,
                "-t",
                &secs,
                "-J",
            ],
            ChildOutput::Collect,
        )?;
        let out = child.wait_output(Duration::from_secs(seconds + 30))?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("iperf3's output is not JSON: {} {}", out.stdout, out.stderr))?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3: {e}");
        }
        if !out.status.success() {
            bail!("iperf3 failed ({}): {}", out.status, out.stderr);
        }
        let end = &v["end"];
        let num = |x: &serde_json::Value, what: &str| {
            x.as_f64().with_context(|| format!("iperf3's JSON has no {what}"))
        };
        let received = &end["sum_received"];
        Ok(IperfResult {
            seconds: num(&received["seconds"], "end.sum_received.seconds")?,
            bytes: num(&received["bytes"], "end.sum_received.bytes")? as u64,
            bps: num(&received["bits_per_second"], "end.sum_received.bits_per_second")?,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            client_cpu_pct: num(&end["cpu_utilization_percent"]["host_total"], "host_total")?,
            server_cpu_pct: num(&end["cpu_utilization_percent"]["remote_total"], "remote_total")?,
        })
    }
}

pub(crate) struct IperfResult {
    pub(crate) seconds: f64,
    pub(crate) bytes: u64,
    pub(crate) bps: f64,
    pub(crate) retransmits: u64,
    pub(crate) client_cpu_pct: f64,
    pub(crate) server_cpu_pct: f64,
}

/// A's and B's plane during a run.
enum Active {
    Plain,
    Nft(Box<(NftDataPlane, NftDataPlane)>),
    Bpf(Box<(TcBpfDataPlane, TcBpfDataPlane)>),
}

pub(crate) fn install(original: Tuple, current: Tuple) -> DataPlaneCommand {
    DataPlaneCommand::Table(TableChange::InstallFlow(FlowMapping {
        original,
        current,
        hold: false,
    }))
}

pub(crate) fn nft_plane(ns: &Ns) -> Result<NftDataPlane> {
    Ok(NftDataPlane::open_with(NftConfig {
        netns: Some(ns.path()),
        nudge: false,
        drain: Duration::ZERO,
        ..NftConfig::default()
    })?)
}

pub(crate) fn bpf_plane(ns: &Ns, iface: &str, max_flows: u32) -> Result<TcBpfDataPlane> {
    Ok(TcBpfDataPlane::open(TcBpfConfig {
        interfaces: vec![iface.to_owned()],
        netns: Some(ns.path()),
        max_flows,
    })?)
}

/// CPU time counters read from /proc, in USER_HZ ticks.
pub(crate) struct CpuSnapshot {
    pub(crate) ksoftirqd: u64,
    pub(crate) busy: u64,
    pub(crate) softirq: u64,
}

impl CpuSnapshot {
    pub(crate) fn take(softirqd: &[u32]) -> CpuSnapshot {
        let ksoftirqd = softirqd.iter().map(|pid| task_ticks(*pid)).sum();
        // cpu  user nice system idle iowait irq softirq steal ...
        let stat = read_trimmed("/proc/stat");
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or(0);
        let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
        CpuSnapshot {
            ksoftirqd,
            busy,
            softirq: get(6),
        }
    }
}

/// utime + stime of a task, in ticks (0 if it is gone).
pub(crate) fn task_ticks(pid: u32) -> u64 {
    let (user, system) = task_times(pid);
    user + system
}

/// utime and stime of a task, in ticks ((0, 0) if it is gone).
pub(crate) fn task_times(pid: u32) -> (u64, u64) {
    let stat = read_trimmed(&format!("/proc/{pid}/stat"));
    // The command may hold spaces and parentheses: fields count from the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12).
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (n(11), n(12))
}

pub(crate) fn ksoftirqd_threads() -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if read_trimmed(&format!("/proc/{pid}/comm")).starts_with("ksoftirqd/") {
                pids.push(pid);
            }
        }
    }
    pids
}

pub(crate) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn iperf3_version() -> String {
    std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

/// Flow `i` of an install batch: distinct original and current local addresses (up to
/// 2^20 flows), one remote.
pub(crate) fn batch_flow(i: usize) -> (Tuple, Tuple) {
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 443);
    let port = 20000 + (i % 30000) as u16;
    let o = Ipv4Addr::from(0x0a10_0000u32 + i as u32);
    let c = Ipv4Addr::from(0x0a40_0000u32 + i as u32);
    (
        Tuple::new(Protocol::Tcp, SocketAddr::new(IpAddr::V4(o), port), remote),
        Tuple::new(Protocol::Tcp, SocketAddr::new(IpAddr::V4(c), port), remote),
    )
}

pub(crate) fn install_latency(net: &Net, plane: Plane, n: usize) -> Result<Install> {
    if n == 0 || n > 1 << 20 {
        bail!("install batches of 1 to 2^20 flows");
    }
    let reps = match n {
        0..=100 => 7,
        101..=10_000 => 3,
        _ => 1,
    };
    let opened = Instant::now();
    let mut p: Box<dyn Batch> = match plane {
        Plane::Nftables => Box::new(nft_plane(&net.a)?),
        Plane::TcBpf => Box::new(bpf_plane(&net.a, A_IF, n.max(1024) as u32)?),
        Plane::Plain => bail!("plain TCP has no rules"),
    };
    let open_ms = ms(opened.elapsed());
    let (mut install_ms, mut remove_ms) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let range = (rep * n)..((rep + 1) * n);
        let cmds: Vec<DataPlaneCommand> = range
            .clone()
            .map(|i| {
                let (o, c) = batch_flow(i);
                install(o, c)
            })
            .collect();
        let started = Instant::now();
        p.apply(&cmds)?;
        install_ms.push(ms(started.elapsed()));
        let removes: Vec<DataPlaneCommand> = range
            .map(|i| {
                DataPlaneCommand::Table(TableChange::RemoveFlow {
                    original: batch_flow(i).0,
                })
            })
            .collect();
        let started = Instant::now();
        p.apply(&removes)?;
        remove_ms.push(ms(started.elapsed()));
    }
    p.close()?;
    let (install_median_ms, install_best_ms) = (median(&install_ms), min(&install_ms));
    Ok(Install {
        plane,
        flows: n,
        open_ms,
        remove_median_ms: median(&remove_ms),
        install_ms,
        remove_ms,
        install_median_ms,
        install_best_ms,
    })
}

/// What the install benchmark (and `roam bench scale`) needs of a plane.
pub(crate) trait Batch {
    fn apply(&mut self, cmds: &[DataPlaneCommand]) -> Result<()>;
    /// Packets translated so far: (egress, ingress).
    fn translated(&self) -> Result<(u64, u64)>;
    fn close(self: Box<Self>) -> Result<()>;
}

impl Batch for NftDataPlane {
    fn apply(&mut self, cmds: &[DataPlaneCommand]) -> Result<()> {
        Ok(self.apply_batch(cmds)?)
    }
    fn translated(&self) -> Result<(u64, u64)> {
        let c = self.counters()?;
        Ok((c.egress_translated.packets, c.ingress_translated.packets))
    }
    fn close(self: Box<Self>) -> Result<()> {
        Ok(NftDataPlane::close(*self)?)
    }
}

impl Batch for TcBpfDataPlane {
    fn apply(&mut self, cmds: &[DataPlaneCommand]) -> Result<()> {
        Ok(self.apply_batch(cmds)?)
    }
    fn translated(&self) -> Result<(u64, u64)> {
        let c = self.counters()?;
        Ok((c.egress_translated.packets, c.ingress_translated.packets))
    }
    fn close(self: Box<Self>) -> Result<()> {
        Ok(TcBpfDataPlane::close(*self)?)
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summarise(runs: &[Run]) -> Vec<Summary> {
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    let find = |round: usize, plane: Plane| runs.iter().find(|r| r.round == round && r.plane == plane);
    Plane::ALL
        .iter()
        .map(|&plane| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.plane == plane).collect();
            let (mut g, mut c) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                if let (Some(r), Some(p)) = (find(round, plane), find(round, Plane::Plain)) {
                    g.push(r.goodput_bps / p.goodput_bps);
                    c.push(r.cpu_s_per_gb / p.cpu_s_per_gb);
                }
            }
            let goodputs: Vec<f64> = mine.iter().map(|r| r.goodput_bps / 1e9).collect();
            let cpus: Vec<f64> = mine.iter().map(|r| r.cpu_s_per_gb).collect();
            Summary {
                plane,
                runs: mine.len(),
                goodput_gbps_median: median(&goodputs),
                cpu_s_per_gb_median: median(&cpus),
                goodput_ratio: [median(&g), min(&g), max(&g)],
                cpu_per_gb_ratio: [median(&c), min(&c), max(&c)],
            }
        })
        .collect()
}

fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "roam bench dataplane: one veth between two namespaces, Linux {}, {}",
        r.kernel, r.iperf3
    );
    if !r.summary.is_empty() {
        let _ = writeln!(
            s,
            "\niperf3, one TCP stream, {} rounds x {} s per plane, interleaved; ratios: median (min-max) of the per-round ratios to plain TCP",
            r.rounds, r.seconds
        );
        let _ = writeln!(
            s,
            "{:<10} {:>13} {:>20} {:>12} {:>20}",
            "plane", "Gbit/s (med)", "goodput vs plain", "CPU s/GB", "CPU/GB vs plain"
        );
        for m in &r.summary {
            let _ = writeln!(
                s,
                "{:<10} {:>13.2} {:>20} {:>12.3} {:>20}",
                m.plane.label(),
                m.goodput_gbps_median,
                ratio(m.goodput_ratio),
                m.cpu_s_per_gb_median,
                ratio(m.cpu_per_gb_ratio),
            );
        }
        let _ = writeln!(
            s,
            "CPU = getrusage of iperf3 client + server (softirq work in their context included) + ksoftirqd"
        );
    }
    if !r.install.is_empty() {
        let _ = writeln!(
            s,
            "\nrule install: one batch of N new flow entries (both directions each); median (best) of the repetitions"
        );
        let _ = writeln!(
            s,
            "{:>8} {:>24} {:>24} {:>16} {:>16}",
            "flows", "nftables install ms", "tc-BPF install ms", "nft remove ms", "BPF remove ms"
        );
        let mut sizes: Vec<usize> = r.install.iter().map(|i| i.flows).collect();
        sizes.dedup();
        for n in sizes {
            let get = |p: Plane| r.install.iter().find(|i| i.flows == n && i.plane == p);
            let cell = |i: Option<&Install>| {
                i.map_or("-".to_owned(), |i| {
                    format!("{:.3} ({:.3})", i.install_median_ms, i.install_best_ms)
                })
            };
            let rm = |i: Option<&Install>| i.map_or("-".to_owned(), |i| format!("{:.3}", i.remove_median_ms));
            let _ = writeln!(
                s,
                "{:>8} {:>24} {:>24} {:>16} {:>16}",
                n,
                cell(get(Plane::Nftables)),
                cell(get(Plane::TcBpf)),
                rm(get(Plane::Nftables)),
                rm(get(Plane::TcBpf)),
            );
        }
        let open = |p: Plane| {
            let v: Vec<f64> = r
                .install
                .iter()
                .filter(|i| i.plane == p)
                .map(|i| i.open_ms)
                .collect();
            median(&v)
        };
        let _ = writeln!(
            s,
            "opening the plane: nftables {:.1} ms (base table), tc-BPF {:.1} ms (load, verify, attach)",
            open(Plane::Nftables),
            open(Plane::TcBpf)
        );
    }
    if !r.ok {
        let _ = writeln!(
            s,
            "\nFAILED: a translated run's counters did not move (see --json)"
        );
    }
    s
}

fn ratio([med, lo, hi]: [f64; 3]) -> String {
    format!("{med:.3} ({lo:.3}-{hi:.3})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_flows_are_distinct() {
        let mut originals = std::collections::HashSet::new();
        let mut currents = std::collections::HashSet::new();
        for i in 0..200_000 {
            let (o, c) = batch_flow(i);
            assert!(originals.insert(o) && currents.insert(c), "flow {i}");
        }
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        let run = |round, plane, gbps: f64, cpu| Run {
            round,
            plane,
            client_port: 0,
            seconds: 1.0,
            bytes: 1,
            goodput_bps: gbps * 1e9,
            retransmits: 0,
            client_cpu_s: 0.0,
            server_cpu_s: 0.0,
            ksoftirqd_s: 0.0,
            cpu_s: 0.0,
            cpu_s_per_gb: cpu,
            system_busy_s: 0.0,
            system_softirq_s: 0.0,
            translated: None,
        };
        // Round 1 is slow for everyone: the per-round ratios stay 0.5 and 2.
        let runs = vec![
            run(0, Plane::Plain, 10.0, 1.0),
            run(0, Plane::Nftables, 5.0, 2.0),
            run(1, Plane::Plain, 2.0, 4.0),
            run(1, Plane::Nftables, 1.0, 8.0),
        ];
        let s = summarise(&runs);
        let nft = s.iter().find(|m| m.plane == Plane::Nftables).unwrap();
        assert_eq!(nft.goodput_ratio, [0.5, 0.5, 0.5]);
        assert_eq!(nft.cpu_per_gb_ratio, [2.0, 2.0, 2.0]);
        assert_eq!(nft.goodput_gbps_median, 3.0);
        let plain = s.iter().find(|m| m.plane == Plane::Plain).unwrap();
        assert_eq!(plain.goodput_ratio, [1.0, 1.0, 1.0]);
    }
}
