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
        // `roam bench` refuses bad settings before it builds anything.
        &["bench", "--loss", "0.5"],
        &["bench", "--rtt-ms", "-3"],
        &["bench", "--rate-mbps", "fast"],
        &["bench", "--moves", "0"],
        &["bench", "--systems", "carrier-pigeon"],
        &["bench", "--sections", "everything"],
        &["bench", "--family", "v5"],
        &["bench", "--quick", "sim"],
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

/// A fresh directory of this test's own under the system's temporary directory.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("roam-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn keygen_writes_a_private_key_once_with_mode_0600_and_pubkey_reads_it() {
    let d = scratch("keygen");
    let key = d.join("host.key");
    let k = key.to_str().unwrap();
    let o = roam(&["keygen", k]);
    assert!(o.status.success(), "{}", stderr(&o));
    let public = stdout(&o).trim().to_string();
    assert_eq!(public.len(), 44, "base64 of 32 bytes: {public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let o = roam(&["pubkey", k]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), public);
    // Never overwritten: the second keygen fails and the key stays.
    let before = std::fs::read(&key).unwrap();
    let o = roam(&["keygen", k]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("never overwrites"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // Two keys are never the same.
    let o = roam(&["keygen", d.join("other.key").to_str().unwrap()]);
    assert_ne!(stdout(&o).trim(), public);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_configuration_is_checked_and_its_mistakes_named_with_their_line() {
    let d = scratch("config");
    let key = d.join("host.key");
    let o = roam(&["keygen", key.to_str().unwrap()]);
    let public = stdout(&o).trim().to_string();
    let cfg = d.join("roam.toml");
    std::fs::write(
        &cfg,
        format!(
            "private_key_file = \"host.key\"\n\n[[peer]]\nname = \"laptop\"\npublic_key = \"{public}\"\n"
        ),
    )
    .unwrap();
    let o = roam(&["check-config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("laptop") && text.contains("trust on first use: off"),
        "{text}"
    );
    // A bad key on line 5.
    std::fs::write(
        &cfg,
        "private_key_file = \"host.key\"\n\n[[peer]]\nname = \"laptop\"\npublic_key = \"AAAA\"\n",
    )
    .unwrap();
    let o = roam(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("roam.toml:5:"), "{}", stderr(&o));
    // A private key others can read is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &cfg,
            format!(
                "private_key_file = \"host.key\"\n[[peer]]\nname = \"laptop\"\npublic_key = \"{public}\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = roam(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn roamd_checks_its_configuration_and_refuses_a_bad_one_before_starting() {
    let d = scratch("roamd-config");
    let key = d.join("host.key");
    let o = roam(&["keygen", key.to_str().unwrap()]);
    let public = stdout(&o).trim().to_string();
    let cfg = d.join("roam.toml");
    let good = format!(
        "private_key_file = \"host.key\"\n[[peer]]\nname = \"b\"\npublic_key = \"{public}\"\n[daemon]\nflow_scan_ms = 100\n"
    );
    std::fs::write(&cfg, &good).unwrap();
    let roamd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_roamd"))
            .args(args)
            .output()
            .expect("roamd runs")
    };
    let o = roamd(&["--check-config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok"), "{}", stdout(&o));
    // A mistake in [daemon] on line 6: refused with its line, by both the check and a
    // real start (nothing starts).
    std::fs::write(&cfg, good.replace("flow_scan_ms = 100", "flow_scan_ms = 1")).unwrap();
    for args in [
        vec!["--check-config", cfg.to_str().unwrap()],
        vec!["--config", cfg.to_str().unwrap()],
    ] {
        let o = roamd(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("roam.toml:6:"), "{}", stderr(&o));
        assert!(stderr(&o).contains("flow_scan_ms"), "{}", stderr(&o));
    }
    // Arguments that make no sense are refused with usage.
    let o = roamd(&["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let o = roamd(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--config"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_lab_scenarios_are_listed_and_an_unknown_one_is_refused() {
    let o = roam(&["lab", "--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["tcp-move", "two-moves", "lossy-new-path", "peer-stopped"] {
        assert!(stdout(&o).contains(name), "{}", stdout(&o));
    }
    let o = roam(&["lab", "--scenario", "no-such-scenario"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no lab scenario"), "{}", stderr(&o));
}

#[test]
fn malformed_operator_commands_are_refused_with_usage() {
    for (args, says) in [
        (&["stauts"][..], "unrecognized subcommand"),
        (&["status", "--json=yes"], "unexpected value"),
        (&["flows", "--bogus"], "unexpected argument"),
        (&["peers", "--socket"], "a value is required"),
        (&["down", "now"], "unexpected argument"),
    ] {
        let o = roam(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("error") && e.contains(says), "{args:?}: {e}");
        assert!(stdout(&o).is_empty(), "{args:?}");
    }
    // The help says what down and up do.
    let o = roam(&["down", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("roam up"), "{}", stdout(&o));
}

#[test]
fn the_operator_commands_say_when_roamd_is_not_running() {
    let d = scratch("no-daemon");
    let missing = d.join("roamd.sock");
    for cmd in ["status", "peers", "flows", "up", "down"] {
        for json in [false, true] {
            let mut args = vec![cmd, "--socket", missing.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let o = roam(&args);
            assert_eq!(o.status.code(), Some(2), "{args:?}");
            let e = stderr(&o);
            assert!(
                e.contains(&format!(
                    "roamd is not running (no socket at {})",
                    missing.display()
                )),
                "{args:?}: {e}"
            );
            assert!(
                e.contains("systemctl start roamd") && e.contains("roamd --config FILE"),
                "{e}"
            );
            assert!(stdout(&o).is_empty(), "{args:?}");
        }
    }
    // A socket left behind by a roamd that died.
    #[cfg(unix)]
    {
        drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
        let o = roam(&["status", "--socket", missing.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("roamd is not running (nothing listens on"),
            "{}",
            stderr(&o)
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The README's first command is `cargo run --release -- demo`: with two binaries in the
/// package, cargo runs that only if the package names its default.
#[test]
fn cargo_run_runs_roam() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        manifest.lines().any(|l| l.trim() == "default-run = \"roam\""),
        "crates/roam/Cargo.toml must say default-run = \"roam\", or `cargo run -- demo` fails"
    );
}
