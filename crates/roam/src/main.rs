//! `roam`: the one command-line entry point.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use roam_core::config::{HostConfig, key_file_contents, read_key_file};
use roam_core::security::StaticKey;
use roam_sim::{Family, RunOptions, Scenario, builtin};

#[derive(Parser)]
#[command(
    name = "roam",
    version,
    about = "Keep TCP and UDP sessions alive when a host's address changes",
    long_about = "roam keeps applications' TCP and UDP sessions alive when a host's IP address \
                  changes: unmodified programs keep their sockets, the kernel keeps its TCP state."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Family {
        match f {
            FamilyArg::Ipv4 => Family::Ipv4,
            FamilyArg::Ipv6 => Family::Ipv6,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Seed of the run: the same seed replays the run exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Address family.
    #[arg(long, value_enum, default_value = "ipv4")]
    family: FamilyArg,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write the simulated wire (every host's access link) as a pcap file.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a 20 MB TCP stream across a move, in virtual time (no root needed).
    Demo {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Write a new host key to FILE (mode 0600; an existing file is never overwritten)
    /// and print its public key.
    Keygen {
        /// Where to write the private key.
        file: PathBuf,
    },
    /// Print the public key of a key file (as peers list it in their configuration).
    Pubkey {
        /// A key file written by `roam keygen`.
        file: PathBuf,
    },
    /// Check a host configuration file (and the key file it names) and summarise it.
    CheckConfig { file: PathBuf },
    /// Run a simulated scenario: a built-in one by name, or a TOML file.
    Sim {
        /// Built-in scenario name or path to a scenario file.
        #[arg(long, short, required_unless_present = "list")]
        scenario: Option<String>,
        /// List the built-in scenarios.
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("roam: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `Ok(true)`: success; `Ok(false)`: the command ran and found a failure.
fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Demo { run } => {
            let sc = builtin::get("demo").expect("the demo is built in")?;
            simulate(&sc, &run)
        }
        Command::Keygen { file } => {
            let key = keygen(&file)?;
            println!("{}", key.public());
            eprintln!("roam: wrote {} (node {})", file.display(), key.public().node_id());
            Ok(true)
        }
        Command::Pubkey { file } => {
            let key = read_key_file(&file)?;
            println!("{}", key.public());
            Ok(true)
        }
        Command::CheckConfig { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let cfg = HostConfig::from_toml(&text, &file)?;
            let key = read_key_file(&cfg.private_key_file)?;
            check_key_file_mode(&cfg.private_key_file)?;
            println!("{}: ok", file.display());
            println!(
                "  this host:   {} (node {})",
                key.public(),
                key.public().node_id()
            );
            println!("  trusts:      {} peer(s)", cfg.peers.len());
            for (k, name) in &cfg.peers {
                println!("    {name:<20} {k} (node {})", k.node_id());
            }
            if cfg.trust_on_first_use {
                println!(
                    "  trust on first use: ON (up to {} unknown keys are accepted and logged)",
                    cfg.max_learned_keys
                );
            } else {
                println!("  trust on first use: off");
            }
            Ok(true)
        }
        Command::Sim { list: true, .. } => {
            for sc in builtin::all() {
                let sc = sc?;
                let first = sc.description.lines().next().unwrap_or("");
                println!("{:<20} {first}", sc.name);
            }
            Ok(true)
        }
        Command::Sim { scenario, run, .. } => {
            let name = scenario.expect("clap requires --scenario without --list");
            let sc = load(&name)?;
            simulate(&sc, &run)
        }
    }
}

/// A fresh key from the operating system's random source, written to `path`: created
/// (never overwritten) with mode 0600, as SSH and WireGuard keep private keys.
fn keygen(path: &Path) -> Result<StaticKey> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = StaticKey::from_bytes(secret);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| {
        if path.exists() {
            format!("{} exists: roam keygen never overwrites a key", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    f.write_all(key_file_contents(&key).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

/// A private key readable by others is refused, as ssh refuses such a key.
fn check_key_file_mode(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{}: mode {:o} lets others read the private key (chmod 600 it)",
                path.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

fn load(name: &str) -> Result<Scenario> {
    if let Some(sc) = builtin::get(name) {
        return Ok(sc?);
    }
    let path = PathBuf::from(name);
    if !path.exists() {
        let names: Vec<&str> = builtin::SCENARIOS.iter().map(|(n, _)| *n).collect();
        bail!(
            "no built-in scenario and no file named {name:?} (built-in: {})",
            names.join(", ")
        );
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Scenario::from_toml(&text, &path.display().to_string())?)
}

fn simulate(sc: &Scenario, args: &RunArgs) -> Result<bool> {
    let opts = RunOptions {
        family: args.family.into(),
        seed: args.seed,
        pcap: args.pcap.clone(),
    };
    let report = roam_sim::run(sc, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
        if let Some(p) = &args.pcap {
            println!("capture written to {}", p.display());
        }
    }
    Ok(report.ok)
}
