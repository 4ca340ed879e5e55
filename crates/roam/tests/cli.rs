//! The `roam` command line as a user runs it.

use std::process::{Command, Output};

fn roam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(args)
        .output()
        .expect("roam runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_demo_reports_matching_digests_as_json_and_exits_zero() {
    let o = roam(&["demo", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(r["ok"], true);
    let f = &r["flows"][0];
    assert_eq!(f["bytes_received"], 20_000_000);
    assert_eq!(f["sha256_sent"], f["sha256_received"]);
    assert!(r["moves"][0]["gap_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_demo_report_reads_for_a_person() {
    let o = roam(&["demo", "--family", "ipv6", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "what happened",
        "moves from",
        "handover gap",
        "sent     sha256",
        "result: OK",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let strip = |o: Output| {
        let mut v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v.as_object_mut().unwrap().remove("wall_ms");
        v
    };
    let a = strip(roam(&["sim", "-s", "move-twice", "--json", "--seed", "9"]));
    let b = strip(roam(&["sim", "-s", "move-twice", "--json", "--seed", "9"]));
    assert_eq!(a, b);
}

#[test]
fn the_built_in_scenarios_are_listed() {
    let o = roam(&["sim", "--list"]);
    assert!(o.status.success());
    for name in ["demo", "move-mid-stream", "old-address-reused", "udp-across-move"] {
        assert!(stdout(&o).contains(name), "{name}");
    }
}

#[test]
fn a_scenario_file_with_an_error_is_refused_with_its_line() {
    let path = std::env::temp_dir().join(format!("roam-cli-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "name = \"x\"\n[[router]]\nname = \"r\"\n[[subnet]]\nname = \"n\"\nrouter = \"nope\"\n",
    )
    .unwrap();
    let o = roam(&["sim", "-s", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains(":6: unknown router \"nope\""), "{e}");
}

#[test]
fn malformed_arguments_are_refused_with_usage() {
    for args in [
        &["demo", "--seed", "x"][..],
        &["demo", "--family", "ipx"],
        &["teleport"],
        &["sim"],
    ] {
        let o = roam(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&o).contains("Usage") || stderr(&o).contains("error"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = roam(&["sim", "-s", "no-such-scenario"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("built-in: demo"), "{}", stderr(&o));
}
