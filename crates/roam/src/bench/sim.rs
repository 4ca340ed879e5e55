//! `roam bench sim`: how fast the simulator ([`roam_sim`]) runs the built-in scenarios
//! (issue 7, "Simulator"): scenarios per second of wall time, and virtual seconds
//! simulated per wall second.
//!
//! # What is measured
//!
//! Every built-in scenario (`roam sim --list`, embedded from `scenarios/*.toml`) with
//! one seed and one address family (IPv4 unless the scenario runs over IPv6 only). Each
//! is run once untimed (a warm-up: code paged in, allocator primed) and then `--rounds`
//! times timed; a round runs every scenario once, so that the load of the machine's
//! other work falls on all of them alike. Wall time is taken around `roam_sim::run`
//! (building the simulation, running it, building the report), not parsing.
//!
//! # The baseline
//!
//! Every figure is also given as a ratio to the `demo` scenario measured in the same
//! run: `roam demo`, seed 000's reference workload (one 20 MB TCP stream at 100 Mbit/s,
//! one move). Each ratio is taken within a round (against the baseline's run moments
//! apart) and the median over the rounds is reported: that cancels most of the
//! machine's speed and load, so ratios compare across machines and runs where absolute
//! figures do not. The total's ratios compare a round's whole set against that round's
//! `demo` run (scenarios per second against 1 / its wall time). An idle
//! network is no baseline: with no flows the engine stops after its grace period and
//! does almost nothing, so ratios to it would measure the idle loop, not the stack.
//!
//! # The determinism check
//!
//! The simulator promises that a seed replays a run exactly. Every timed run's report
//! must equal the warm-up's, except `wall_ms` (the report's own wall clock); the bench
//! fails if one differs. It never fails on slowness.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};
use roam_sim::{Family, RunOptions, Scenario, builtin};
use serde::Serialize;

use super::stats;

/// The median, 0 for no values (a scenario that failed has no wall times).
fn median(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { stats::median(v) }
}

/// The scenario every ratio is relative to (see the module comment).
const BASELINE: &str = "demo";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Timed runs of every scenario (after one untimed warm-up run each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// One timed round. The full set takes a few seconds, even in a debug build, so
    /// --quick still runs every scenario.
    #[arg(long, conflicts_with = "rounds")]
    quick: bool,
    /// Seed of every run (`roam sim --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print every measurement as JSON.
    #[arg(long)]
    json: bool,
}

/// One scenario's runs.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioRun {
    pub name: String,
    pub family: Family,
    /// Virtual time the run simulated (the report's `virtual_ms`).
    pub virtual_s: f64,
    /// Events the engine handled (the report's `engine_steps`): the work done.
    pub engine_steps: u64,
    /// The scenario's own verdict (flows intact, expectations held). Reported, not
    /// required: a scenario that fails is still a measurement of the simulator.
    pub report_ok: bool,
    /// Every timed run's report equals the warm-up's (but for `wall_ms`).
    pub deterministic: bool,
    /// Wall time of each timed run, in round order.
    pub wall_ms: Vec<f64>,
    pub wall_ms_median: f64,
    pub virtual_s_per_wall_s: f64,
    pub steps_per_wall_s: f64,
    /// This scenario's median wall time over the baseline's.
    pub wall_ratio: f64,
    /// This scenario's virtual s per wall s over the baseline's.
    pub speed_ratio: f64,
    /// Why the scenario could not run (then the figures are zero).
    pub error: Option<String>,
}

/// All scenarios together, from their median wall times.
#[derive(Clone, Debug, Serialize)]
pub struct Total {
    pub scenarios: usize,
    pub virtual_s: f64,
    pub wall_s: f64,
    pub scenarios_per_s: f64,
    pub virtual_s_per_wall_s: f64,
    /// Scenarios per second over the baseline's (1 / its median wall time).
    pub scenarios_per_s_ratio: f64,
    /// Virtual s per wall s over the baseline's.
    pub speed_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub baseline: &'static str,
    pub baseline_why: &'static str,
    pub seed: u64,
    pub rounds: u64,
    pub quick: bool,
    /// Built with debug assertions (a dev or test profile, not `--release`): slower.
    pub debug_build: bool,
    pub scenarios: Vec<ScenarioRun>,
    pub total: Total,
    /// Every scenario ran and every run replayed its warm-up exactly.
    pub deterministic: bool,
    pub ok: bool,
}

const BASELINE_WHY: &str = "each scenario against `demo` in the same round, median over the rounds \
     (roam demo: one 20 MB TCP stream at 100 Mbit/s across one move, seed 000's reference \
     workload); an idle network would only time the engine's idle loop";

/// A built-in scenario, ready to run.
struct Case {
    sc: Scenario,
    opts: RunOptions,
    /// The warm-up's report as JSON without `wall_ms`: what every run must reproduce.
    reference: Option<serde_json::Value>,
    walls: Vec<f64>,
    virtual_ms: f64,
    steps: u64,
    report_ok: bool,
    deterministic: bool,
    error: Option<String>,
}

impl Case {
    fn new(sc: Scenario, seed: u64) -> Case {
        // IPv4 as `roam sim` defaults to, unless the scenario is IPv6-only.
        let family = if sc.families.contains(&Family::Ipv4) {
            Family::Ipv4
        } else {
            sc.families.first().copied().unwrap_or(Family::Ipv4)
        };
        Case {
            opts: RunOptions {
                family,
                seed,
                pcap: None,
            },
            sc,
            reference: None,
            walls: Vec::new(),
            virtual_ms: 0.0,
            steps: 0,
            report_ok: false,
            deterministic: true,
            error: None,
        }
    }

    /// One run; `Some(wall ms)` if it ran, and the report checked against the reference.
    fn run_once(&mut self) -> Option<f64> {
        if self.error.is_some() {
            return None;
        }
        let t = Instant::now();
        let report = match roam_sim::run(&self.sc, &self.opts) {
            Ok(r) => r,
            Err(e) => {
                self.error = Some(e.to_string());
                return None;
            }
        };
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let value = match comparable(&report) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(format!("{e:#}"));
                return None;
            }
        };
        match &self.reference {
            None => {
                self.virtual_ms = report.virtual_ms;
                self.steps = report.engine_steps;
                self.report_ok = report.ok;
                self.reference = Some(value);
            }
            Some(r) if *r != value => {
                tracing::warn!(scenario = %self.sc.name, "a run's report differs from the warm-up's");
                self.deterministic = false;
            }
            Some(_) => {}
        }
        Some(wall)
    }
}

/// The report as JSON without its wall clock, the one field a replay may change.
fn comparable(report: &roam_sim::Report) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(report).context("cannot serialise a simulator report")?;
    if let Some(o) = v.as_object_mut() {
        o.remove("wall_ms");
    }
    Ok(v)
}

pub fn run(args: Args) -> Result<bool> {
    let rounds = if args.quick { 1 } else { args.rounds };
    let report = measure(rounds, args.seed, args.quick)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.ok)
}

/// Runs every built-in scenario once untimed, then `rounds` timed rounds.
pub fn measure(rounds: u64, seed: u64, quick: bool) -> Result<Report> {
    let mut cases = Vec::new();
    for sc in builtin::all() {
        let sc = sc.context("a built-in scenario does not parse")?;
        cases.push(Case::new(sc, seed));
    }
    for c in &mut cases {
        c.run_once();
    }
    for _ in 0..rounds {
        for c in &mut cases {
            if let Some(w) = c.run_once() {
                c.walls.push(w);
            }
        }
    }
    Ok(summarise(&cases, seed, quick, rounds))
}

fn summarise(cases: &[Case], seed: u64, quick: bool, rounds: u64) -> Report {
    let mut scenarios: Vec<ScenarioRun> = cases
        .iter()
        .map(|c| {
            let wall_ms_median = median(&c.walls);
            let per_wall_s = |x: f64| {
                if wall_ms_median > 0.0 {
                    x / (wall_ms_median / 1e3)
                } else {
                    0.0
                }
            };
            ScenarioRun {
                name: c.sc.name.clone(),
                family: c.opts.family,
                // The report's virtual_ms is in whole microseconds; keep them exact.
                virtual_s: (c.virtual_ms * 1e3).round() / 1e6,
                engine_steps: c.steps,
                report_ok: c.report_ok,
                deterministic: c.error.is_none() && c.deterministic,
                wall_ms: c.walls.clone(),
                wall_ms_median,
                virtual_s_per_wall_s: per_wall_s(c.virtual_ms / 1e3),
                steps_per_wall_s: per_wall_s(c.steps as f64),
                wall_ratio: 0.0,
                speed_ratio: 0.0,
                error: c.error.clone(),
            }
        })
        .collect();
    // Ratios are taken within each round (this scenario's run against the baseline's
    // run of the same round, moments apart) and then the median over the rounds: the
    // machine's other work changes between rounds more than within one.
    let base = scenarios
        .iter()
        .find(|s| s.name == BASELINE && s.error.is_none() && !s.wall_ms.is_empty())
        .map(|s| (s.wall_ms.clone(), s.virtual_s));
    let ratio = |x: f64, base: f64| if base > 0.0 { x / base } else { 0.0 };
    let per_round = |walls: &[f64], f: &dyn Fn(usize, f64) -> f64| -> f64 {
        median(
            &walls
                .iter()
                .enumerate()
                .map(|(i, w)| f(i, *w))
                .collect::<Vec<_>>(),
        )
    };
    if let Some((bw, bv)) = &base {
        for s in scenarios.iter_mut().filter(|s| s.wall_ms.len() == bw.len()) {
            let v = s.virtual_s;
            s.wall_ratio = per_round(&s.wall_ms, &|i, w| ratio(w, bw[i]));
            s.speed_ratio = per_round(&s.wall_ms, &|i, w| ratio(ratio(v, w), ratio(*bv, bw[i])));
        }
    }
    let ran: Vec<&ScenarioRun> = scenarios.iter().filter(|s| s.error.is_none()).collect();
    let virtual_s: f64 = ran.iter().map(|s| s.virtual_s).sum();
    let wall_s: f64 = ran.iter().map(|s| s.wall_ms_median).sum::<f64>() / 1e3;
    let per_s = |x: f64| if wall_s > 0.0 { x / wall_s } else { 0.0 };
    let (scenarios_per_s, virtual_s_per_wall_s) = (per_s(ran.len() as f64), per_s(virtual_s));
    let mut total = Total {
        scenarios: ran.len(),
        virtual_s,
        wall_s,
        scenarios_per_s,
        virtual_s_per_wall_s,
        scenarios_per_s_ratio: 0.0,
        speed_ratio: 0.0,
    };
    if let Some((bw, bv)) = &base
        && ran.iter().all(|s| s.wall_ms.len() == bw.len())
    {
        // Each round's whole set (its wall time summed) against that round's baseline.
        let sums: Vec<f64> = (0..bw.len())
            .map(|i| ran.iter().map(|s| s.wall_ms[i]).sum())
            .collect();
        let n = ran.len() as f64;
        total.scenarios_per_s_ratio = per_round(&sums, &|i, sum| ratio(ratio(n, sum), ratio(1.0, bw[i])));
        total.speed_ratio = per_round(&sums, &|i, sum| ratio(ratio(virtual_s, sum), ratio(*bv, bw[i])));
    }
    let deterministic = scenarios.iter().all(|s| s.deterministic);
    let all_ran = scenarios
        .iter()
        .all(|s| s.error.is_none() && !s.wall_ms.is_empty());
    Report {
        baseline: BASELINE,
        baseline_why: BASELINE_WHY,
        seed,
        rounds,
        quick,
        debug_build: cfg!(debug_assertions),
        scenarios,
        total,
        deterministic,
        ok: deterministic && all_ran && base.is_some(),
    }
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let build = if r.debug_build {
        "debug build"
    } else {
        "release build"
    };
    let _ = writeln!(
        s,
        "simulator speed: {} built-in scenarios, seed {}, {} timed round(s) after a warm-up, {build}",
        r.scenarios.len(),
        r.seed,
        r.rounds
    );
    let _ = writeln!(s, "x {}: {}", r.baseline, r.baseline_why);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>10} {:>8} {:>12} {:>8} {:>10} {:>6}",
        "scenario", "virtual s", "wall ms", "x demo", "virt s/wall s", "x demo", "steps/s", "same"
    );
    for sc in &r.scenarios {
        if let Some(e) = &sc.error {
            let _ = writeln!(s, "{:<24} did not run: {e}", sc.name);
            continue;
        }
        let _ = writeln!(
            s,
            "{:<24} {:>9.3} {:>10.1} {:>8.2} {:>12.1} {:>8.2} {:>10.0} {:>6}",
            sc.name,
            sc.virtual_s,
            sc.wall_ms_median,
            sc.wall_ratio,
            sc.virtual_s_per_wall_s,
            sc.speed_ratio,
            sc.steps_per_wall_s,
            if sc.deterministic { "yes" } else { "NO" },
        );
    }
    let t = &r.total;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "all {} scenarios: {:.3} virtual s in {:.3} wall s (medians): {:.1} scenarios/s (x demo {:.2}), {:.1} virtual s per wall s (x demo {:.2})",
        t.scenarios,
        t.virtual_s,
        t.wall_s,
        t.scenarios_per_s,
        t.scenarios_per_s_ratio,
        t.virtual_s_per_wall_s,
        t.speed_ratio
    );
    let failing: Vec<&str> = r
        .scenarios
        .iter()
        .filter(|s| s.error.is_none() && !s.report_ok)
        .map(|s| s.name.as_str())
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(
            s,
            "note: these scenarios' own checks failed (timed all the same): {}",
            failing.join(", ")
        );
    }
    let verdict = if r.ok {
        "OK: every scenario ran, every run replayed its warm-up exactly"
    } else if !r.deterministic {
        "FAILED: a run did not replay its warm-up exactly (or did not run)"
    } else {
        "FAILED: a scenario did not run"
    };
    let _ = writeln!(s, "{verdict}");
    s
}

#[cfg(test)]
mod tests {
    use super::Case;

    #[test]
    fn a_run_that_differs_from_the_warm_up_is_caught() {
        let sc = roam_sim::builtin::get("udp-across-move").unwrap().unwrap();
        let mut c = Case::new(sc, 5);
        assert!(c.run_once().is_some());
        assert!(c.run_once().is_some());
        assert!(c.deterministic, "the same seed replays");
        assert!(c.virtual_ms > 0.0 && c.steps > 0);
        // Another seed is another run: the check must see it.
        c.opts.seed = 6;
        assert!(c.run_once().is_some());
        assert!(!c.deterministic);
        assert!(c.error.is_none());
    }
}
