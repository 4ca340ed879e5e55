//! `roam bench sim`: the simulator's speed on every built-in scenario, with its
//! determinism check (issue 7). Speed is reported, not asserted.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_quick_sim_bench_runs_every_builtin_scenario_and_each_replays_exactly() {
    let started = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["bench", "sim", "--quick", "--json"])
        .output()
        .expect("roam runs");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "roam bench sim failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(r["ok"], true);
    assert_eq!(r["deterministic"], true);
    assert_eq!(r["rounds"], 1);
    assert_eq!(r["baseline"], "demo");

    let runs = r["scenarios"].as_array().expect("a scenarios array");
    let names: Vec<&str> = runs.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let builtin: Vec<&str> = roam_sim::builtin::SCENARIOS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, builtin, "every built-in scenario, in order");

    let positive = |v: &serde_json::Value, key: &str| {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is a number in {v}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x} in {v}");
        x
    };
    for s in runs {
        assert_eq!(s["deterministic"], true, "{s}");
        assert!(s["error"].is_null(), "{s}");
        assert_eq!(s["wall_ms"].as_array().map(Vec::len), Some(1), "{s}");
        for key in [
            "virtual_s",
            "engine_steps",
            "wall_ms_median",
            "virtual_s_per_wall_s",
            "steps_per_wall_s",
            "wall_ratio",
            "speed_ratio",
        ] {
            positive(s, key);
        }
        // The figures agree with each other: virtual s per wall s is what it says.
        let speed = positive(s, "virtual_s") / (positive(s, "wall_ms_median") / 1e3);
        assert!(
            (speed / positive(s, "virtual_s_per_wall_s") - 1.0).abs() < 1e-9,
            "{s}"
        );
    }
    let demo = runs.iter().find(|s| s["name"] == "demo").unwrap();
    assert_eq!(demo["wall_ratio"], 1.0);
    assert_eq!(demo["speed_ratio"], 1.0);

    let t = &r["total"];
    assert_eq!(t["scenarios"].as_u64(), Some(builtin.len() as u64));
    for key in [
        "virtual_s",
        "wall_s",
        "scenarios_per_s",
        "virtual_s_per_wall_s",
        "scenarios_per_s_ratio",
        "speed_ratio",
    ] {
        positive(t, key);
    }
    // --quick exists so that this stays short; a bound on the whole bench, not a
    // performance assertion (the full set takes a few seconds even unoptimised).
    assert!(took < Duration::from_secs(60), "--quick took {took:?}");
}

#[test]
fn the_sim_bench_refuses_zero_rounds() {
    let o = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["bench", "sim", "--rounds", "0"])
        .output()
        .expect("roam runs");
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--rounds"), "{stderr}");
    assert!(o.stdout.is_empty());
}
