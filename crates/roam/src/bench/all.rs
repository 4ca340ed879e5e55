//! `roam bench` with no subcommand: every section in one run, on one topology's
//! settings, printed as one table and drawn as one plot (docs/BENCHMARKS.md).
//!
//! 1. steady state ([`super::steady`]): plain TCP, roam (translate on nftables and TUN,
//!    tunnel), Multipath TCP, WireGuard;
//! 2. handover ([`super::handover`]): N moves under a bulk transfer and under
//!    request/response, per system;
//! 3. scale ([`super::scale`]): install latency and throughput with many migrated flows,
//!    control-plane cost per move, roamd's memory per flow;
//! 4. simulator ([`super::sim`]): scenarios and virtual seconds per wall second.
//!
//! Every figure is a ratio to a baseline of the same run (plain TCP, no flows, the demo
//! scenario) or a distribution. The exit status says whether the benchmark *ran*: a
//! section that could not measure (a tool missing, a system that would not start) fails
//! it; slow figures never do. roam losing a session or a byte across a move is a failure
//! of roam, and fails it too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use roam_lab::topology::Family;
use serde::Serialize;

use super::handover::{self, Workload};
use super::systems::System;
use super::{plot, scale, sim, steady};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Small runs of every section (one round, two moves, few flows): under 3 minutes,
    /// for CI. It checks that the benchmark works, not how fast anything is.
    #[arg(long)]
    pub quick: bool,
    /// Print every raw figure as JSON (the tables go to the report file only).
    #[arg(long)]
    pub json: bool,
    /// Write report.txt, report.json and bench.png here.
    #[arg(long, default_value = "roam-bench")]
    pub out: PathBuf,
    /// Round-trip time A<->B of the emulated links.
    #[arg(long, default_value_t = 20.0, value_parser = parse_rtt)]
    pub rtt_ms: f64,
    /// Rate of every emulated link direction, Mbit/s (0: unlimited).
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    pub rate_mbps: f64,
    /// Random loss on every link direction, 0 to 0.2.
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    pub loss: f64,
    /// Moves per system and workload in the handover section (default 20; 2 with
    /// --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub moves: Option<u32>,
    /// IPv4 or IPv6 between A and B.
    #[arg(long, default_value = "v4", value_parser = ["v4", "v6"])]
    pub family: String,
    /// The systems to compare (default: all).
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<System>,
    /// The sections to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub sections: Vec<Section>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Steady,
    Handover,
    Scale,
    Sim,
}

fn parse_rtt(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if (0.0..=2000.0).contains(&v) {
        Ok(v)
    } else {
        Err("the RTT must be 0 to 2000 ms".into())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a rate in Mbit/s"))?;
    if v == 0.0 || (1.0..=100_000.0).contains(&v) {
        Ok(v)
    } else {
        Err("the rate must be 0 (unlimited) or 1 to 100000 Mbit/s".into())
    }
}

fn parse_loss(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a probability"))?;
    if (0.0..=0.2).contains(&v) {
        Ok(v)
    } else {
        Err("the loss must be 0 to 0.2".into())
    }
}

/// Everything one `roam bench` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub steady: Option<steady::Report>,
    pub handover: Option<handover::Report>,
    pub scale: Option<scale::ScaleReport>,
    pub sim: Option<sim::Report>,
    /// Sections that could not run, and why.
    pub failures: Vec<String>,
    pub wall_s: f64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub iperf3: String,
    pub load_average: String,
}

impl Machine {
    fn here() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_owned();
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            iperf3: super::dataplane::iperf3_version(),
            load_average: read("/proc/loadavg"),
        }
    }
}

pub fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    let sections = if args.sections.is_empty() {
        vec![Section::Steady, Section::Handover, Section::Scale, Section::Sim]
    } else {
        args.sections.clone()
    };
    let needs_lab = sections.iter().any(|s| *s != Section::Sim);
    if needs_lab && !roam_lab::lab_available()? {
        bail!("the lab is switched off (ROAM_SKIP_NETNS=1)");
    }
    let family = if args.family == "v6" {
        Family::V6
    } else {
        Family::V4
    };
    let binary = std::env::current_exe().context("finding the roam executable")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let work_dir = std::env::temp_dir().join(format!("roam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let pick = |all: &[System]| -> Vec<System> {
        all.iter()
            .copied()
            .filter(|s| args.systems.is_empty() || args.systems.contains(s) || *s == System::Plain)
            .collect()
    };
    let mut report = Report {
        machine: Machine::here(),
        quick: args.quick,
        steady: None,
        handover: None,
        scale: None,
        sim: None,
        failures: Vec::new(),
        wall_s: 0.0,
        ok: true,
    };
    let (rtt_ms, rate_mbps, loss, seed) = (args.rtt_ms, args.rate_mbps, args.loss, args.seed);
    for section in sections {
        let result: Result<()> = match section {
            Section::Steady => {
                let options = steady::Options {
                    systems: pick(&System::STEADY),
                    family,
                    rtt_ms,
                    rate_mbps,
                    loss,
                    window_s: if args.quick { 1.5 } else { 5.0 },
                    settle_s: if args.quick { 1.0 } else { 2.0 },
                    rounds: if args.quick { 1 } else { 3 },
                    seed,
                    binary: binary.clone(),
                    work_dir: work_dir.clone(),
                };
                steady::measure(&options).map(|r| {
                    if !r.complete() {
                        report
                            .failures
                            .push("steady state: a run failed (see its row)".into());
                    }
                    eprint!("{}", steady::render(&r));
                    report.steady = Some(r);
                })
            }
            Section::Handover => {
                let options = handover::Options {
                    systems: pick(&System::HANDOVER),
                    workloads: vec![Workload::Bulk, Workload::Rr],
                    family,
                    rtt_ms,
                    rate_mbps,
                    loss,
                    moves: args.moves.map_or(if args.quick { 2 } else { 20 }, |m| m as usize),
                    interval_s: if args.quick { 1.2 } else { 2.0 },
                    warm_up_s: if args.quick { 0.5 } else { 1.0 },
                    seed,
                    binary: binary.clone(),
                    work_dir: work_dir.clone(),
                };
                handover::measure(&options).map(|r| {
                    if !r.complete() {
                        report
                            .failures
                            .push("handover: a run failed (see its row)".into());
                    }
                    if !r.roam_kept_everything() {
                        report
                            .failures
                            .push("handover: roam lost a session or a byte".into());
                    }
                    eprint!("{}", handover::render(&r));
                    report.handover = Some(r);
                })
            }
            Section::Scale => scale::measure(&scale::Options::new(args.quick)).map(|r| {
                eprint!("{}", scale::render(&r));
                report.scale = Some(r);
            }),
            Section::Sim => sim::measure(1, seed, args.quick).map(|r| {
                if !r.ok {
                    report
                        .failures
                        .push("simulator: a scenario failed or did not replay".into());
                }
                eprint!("{}", sim::render(&r));
                report.sim = Some(r);
            }),
        };
        if let Err(e) = result {
            report.failures.push(format!("{section:?}: {e:#}"));
        }
    }
    report.wall_s = started.elapsed().as_secs_f64();
    report.ok = report.failures.is_empty();
    let text = render(&report);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("report.txt"), &text)?;
    std::fs::write(args.out.join("report.json"), &json)?;
    let png = args.out.join("bench.png");
    match plot::write(&report, &png) {
        Ok(()) => {}
        Err(e) => report.failures.push(format!("plot: {e}")),
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{text}");
        println!("plot: {}", png.display());
        println!("report: {}", args.out.join("report.json").display());
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(report.failures.is_empty())
}

/// Every section's table, then the verdict.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "roam bench{}: Linux {}, {} CPU(s), {:.0} GiB, {}, load {}",
        if r.quick { " --quick" } else { "" },
        m.kernel,
        m.cpus,
        m.memory_gib,
        m.iperf3,
        m.load_average
    );
    if let Some(x) = &r.steady {
        let _ = writeln!(s, "\n{}", steady::render(x));
    }
    if let Some(x) = &r.handover {
        let _ = writeln!(s, "\n{}", handover::render(x));
    }
    if let Some(x) = &r.scale {
        let _ = writeln!(s, "\n{}", scale::render(x));
    }
    if let Some(x) = &r.sim {
        let _ = writeln!(s, "\n{}", sim::render(x));
    }
    for f in &r.failures {
        let _ = writeln!(s, "FAILED: {f}");
    }
    let _ = writeln!(
        s,
        "\nwall time {:.0} s; result: {}",
        r.wall_s,
        if r.failures.is_empty() {
            "every section ran"
        } else {
            "FAILED (see above)"
        }
    );
    s
}
