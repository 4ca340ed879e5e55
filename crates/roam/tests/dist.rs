//! What the repository ships for running roamd (dist/): the systemd unit only uses
//! flags roamd has, and the example configuration is valid once its placeholders are
//! filled in (and refused, naming the line, while they are not).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist")
        .join(name)
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_systemd_unit_starts_roamd_with_flags_it_has() {
    let unit = std::fs::read_to_string(dist("roamd.service")).unwrap();
    let help = text(&run(env!("CARGO_BIN_EXE_roamd"), &["--help"]));
    let mut checked = 0;
    for line in unit.lines().filter(|l| l.starts_with("ExecStart")) {
        let (_, cmd) = line.split_once('=').unwrap();
        let mut words = cmd.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/roamd"), "{line}");
        for flag in words.filter(|w| w.starts_with("--")) {
            assert!(help.contains(flag), "roamd --help has no {flag}:\n{help}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "ExecStartPre and ExecStart checked");
    for needed in [
        "StateDirectory=roam",
        "RuntimeDirectory=roam",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(needed), "{needed}");
    }
}

#[test]
fn the_example_configuration_is_valid_once_filled_in() {
    let dir = std::env::temp_dir().join(format!("roam-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let roam = env!("CARGO_BIN_EXE_roam");
    let roamd = env!("CARGO_BIN_EXE_roamd");
    let example = std::fs::read_to_string(dist("roam.toml")).unwrap();

    // As shipped: the peer's key is a placeholder, and the error names its line.
    let host_key = dir.join("host.key");
    let o = run(roam, &["keygen", host_key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = dir.join("roam.toml");
    std::fs::write(&cfg, &example).unwrap();
    let o = run(roamd, &["--check-config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let line = example.lines().position(|l| l.starts_with("public_key")).unwrap() + 1;
    assert!(
        text(&o).contains(&format!("roam.toml:{line}: public_key")),
        "{}",
        text(&o)
    );

    // Filled in with a real peer key: valid, and it says what it understood.
    let peer_key = dir.join("peer.key");
    let o = run(roam, &["keygen", peer_key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(roam, &["pubkey", peer_key.to_str().unwrap()]);
    let public = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(!public.is_empty());
    std::fs::write(
        &cfg,
        example.replace("REPLACE-WITH-THE-SERVER'S-PUBLIC-KEY", &public),
    )
    .unwrap();
    let o = run(roamd, &["--check-config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("1 peer(s)") && out.contains("Nftables") && out.contains("4791"),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
