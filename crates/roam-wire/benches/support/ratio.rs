//! What both roam benchmark programs share: criterion's settings, and the ratio table
//! they print after `cargo bench` (each benchmark's median against its baseline's, read
//! from criterion's results of this run). Shared by path (`#[path]`) between crates/roam-wire/benches/codec.rs and
//! crates/roam-core/benches/rewrite.rs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

/// Short runs: each benchmark settles within a second on an idle core, and more time
/// does not remove the noise of a shared machine; the ratio to a baseline measured in
/// the same run does. Command-line options still override.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(700))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args()
}

/// Whether this is a measuring run: `cargo bench` passes `--bench`; `cargo test
/// --benches` does not, and runs each routine once (no timings to report then).
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// (benchmark, its baseline) as criterion's directory names.
pub type Pairs = Vec<(String, String)>;

/// Where criterion keeps its results: as criterion decides it ($CRITERION_HOME, else
/// $CARGO_TARGET_DIR/criterion), else the workspace's default target directory.
fn criterion_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return h.into();
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("criterion"),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/criterion")),
    }
}

/// The median time (ns) of one benchmark of this run, from criterion's
/// `<id>/new/estimates.json`; `None` if it did not run now (filtered out) or cannot be
/// read.
fn median_ns(id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_home().join(id).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Prints `title`, then each benchmark's median against its baseline's, from this run.
pub fn ratio_table(title: &str, pairs: &Pairs, since: SystemTime) {
    let baselines: BTreeMap<&str, Option<f64>> = pairs
        .iter()
        .map(|(_, b)| (b.as_str(), median_ns(b, since)))
        .collect();
    println!("\n{title}");
    println!(
        "{:<44} {:>9} {:>11} {:>7}",
        "benchmark", "ns", "baseline ns", "ratio"
    );
    for (id, base) in pairs {
        let (Some(t), Some(Some(b))) = (median_ns(id, since), baselines.get(base.as_str())) else {
            continue;
        };
        println!("{id:<44} {t:>9.1} {b:>11.1} {:>7.1}", t / b);
    }
}
