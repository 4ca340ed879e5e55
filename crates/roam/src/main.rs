//! `roam`: the one command-line entry point.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use roam_core::config::key_file_contents;
use roam_core::security::StaticKey;
use roam_sim::{Family, RunOptions, Scenario, builtin};
use roamd::config::{load_host, read_key_file};
use roamd::ctl::{ClientError, Request, Response};

mod bench;
mod status_view;

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

/// roamd's data planes, named as in its configuration (`data_plane = "tun"`).
#[derive(Clone, Copy, ValueEnum)]
enum DataPlaneArg {
    /// In-kernel rewriting with nftables.
    Nftables,
    /// roamd rewrites the packets itself, through TUN devices.
    Tun,
    /// roamd wraps moved flows' packets whole in UDP (tunnel mode), through a TUN device.
    Tunnel,
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

/// How the operator commands reach roamd.
#[derive(clap::Args)]
struct CtlArgs {
    /// Print roamd's answer as JSON (the response body, pretty), for scripts.
    #[arg(long)]
    json: bool,
    /// roamd's control socket (roamd --socket).
    #[arg(long, value_name = "PATH", default_value = roamd::ctl::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// How long roamd may take to answer (`roam up` opens the data plane).
const CTL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Subcommand)]
enum Command {
    /// Show roamd on this host: identity, addresses, peers, migrated flows, and every
    /// drop or error that is not zero (root).
    Status(CtlArgs),
    /// Show roamd's peers: addresses, round-trip time, flows, last move (root).
    Peers(CtlArgs),
    /// Show every flow roamd knows: original and current addresses, peer, state (root).
    Flows(CtlArgs),
    /// Turn roam back on after `roam down` (root).
    ///
    /// The data plane opens again and roamd lists the host's flows and addresses as at
    /// its start: flows register with their peers again and moves are handled from
    /// now on. A move made while roam was down is not undone: sessions it broke stay
    /// broken.
    Up(CtlArgs),
    /// Turn roam off until `roam up`: remove all translation, stop handling moves (root).
    ///
    /// roamd keeps running and answering `roam status`, but does what it does at exit:
    /// every translation entry is removed, so migrated sessions go back to their
    /// original addresses (and break if those addresses are gone: that is what down
    /// means), the addresses kept on `lo` for old sockets are given back, and no
    /// move is handled, this host's or a peer's, until `roam up`.
    Down(CtlArgs),
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
    /// Run a scenario in the namespace lab (root): real kernel TCP across a move of a
    /// real address, roamd on both hosts, measured from a capture.
    Lab {
        /// Scenario name (see --list).
        #[arg(long, short, required_unless_present = "list")]
        scenario: Option<String>,
        /// List the lab scenarios.
        #[arg(long)]
        list: bool,
        /// Address family.
        #[arg(long, value_enum, default_value = "ipv4")]
        family: FamilyArg,
        /// Seed of the links' loss and the hosts' keys.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run without roam (plain TCP: the reference that dies).
        #[arg(long)]
        no_roam: bool,
        /// Turn off the retransmit nudge after a move.
        #[arg(long)]
        no_nudge: bool,
        /// roamd's data plane on both hosts.
        #[arg(long, value_enum, default_value = "nftables")]
        data_plane: DataPlaneArg,
        /// Bytes of each bulk stream.
        #[arg(long, default_value_t = 40_000_000)]
        bytes: u64,
        /// Keep roamd's logs, status files and the capture (b.pcap) in DIR.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Write the report (report.txt, report.json) and the goodput plot (goodput.png,
        /// goodput.csv) into DIR [default: roam-lab-SCENARIO in the current directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Width of the goodput plot's bins, in milliseconds (1 to 10000).
        #[arg(long, value_name = "MS", default_value_t = 50,
              value_parser = clap::value_parser!(u64).range(1..=10_000))]
        bin_ms: u64,
        /// Moves in the `moves` scenario (A alternates between its subnets, 2 s apart).
        #[arg(long, default_value_t = 10)]
        moves: usize,
        /// Seconds of the `iperf3` scenario's run across the move (at least 5).
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        duration: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measurements that decide how roam is built: `roam bench dataplane` (root), `roam bench sim`.
    Bench(bench::BenchArgs),
    /// Run roamd, the host daemon, in the foreground (the same as the `roamd` command).
    Daemon(roam::DaemonArgs),
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
    let cli = Cli::parse();
    if let Command::Daemon(args) = cli.command {
        roam::init_logging("info");
        return roam::daemon_main(args);
    }
    roam::init_logging("warn");
    match run(cli) {
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
            let (cfg, key) = load_host(&file)?;
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
        Command::Daemon(_) => unreachable!("handled in main"),
        Command::Bench(args) => bench::run(args),
        Command::Status(args) => control(Request::Status, &args),
        Command::Peers(args) => control(Request::Peers, &args),
        Command::Flows(args) => control(Request::Flows, &args),
        Command::Up(args) => control(Request::Up, &args),
        Command::Down(args) => control(Request::Down, &args),
        Command::Lab { list: true, .. } => {
            for s in roam_lab::scenario::SCENARIOS {
                println!("{:<20} {}", s.name, s.description);
            }
            Ok(true)
        }
        Command::Lab {
            scenario,
            family,
            seed,
            no_roam,
            no_nudge,
            data_plane,
            bytes,
            keep,
            out,
            bin_ms,
            moves,
            duration,
            json,
            ..
        } => {
            let name = scenario.expect("clap requires --scenario without --list");
            // An unknown name is refused before anything needs root.
            roam_lab::scenario::find(&name)?;
            if !roam_lab::lab_available()? {
                bail!("the lab is switched off (ROAM_SKIP_NETNS=1)");
            }
            let mut opts = roam_lab::scenario::LabOptions::new(
                std::env::current_exe().context("cannot find the roam executable")?,
            );
            opts.family = match family {
                FamilyArg::Ipv4 => roam_lab::topology::Family::V4,
                FamilyArg::Ipv6 => roam_lab::topology::Family::V6,
            };
            opts.seed = seed;
            opts.roam = !no_roam;
            opts.nudge = !no_nudge;
            opts.data_plane = data_plane
                .to_possible_value()
                .expect("no variant is skipped")
                .get_name()
                .to_owned();
            opts.bytes = bytes;
            opts.keep = keep;
            opts.out = Some(out.unwrap_or_else(|| PathBuf::from(format!("roam-lab-{name}"))));
            opts.bin = std::time::Duration::from_millis(bin_ms);
            opts.moves = moves;
            opts.duration = std::time::Duration::from_secs(duration);
            let report = roam_lab::scenario::run(&name, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(report.ok)
        }
        Command::Sim { scenario, run, .. } => {
            let name = scenario.expect("clap requires --scenario without --list");
            let sc = load(&name)?;
            simulate(&sc, &run)
        }
    }
}

/// Asks roamd over its control socket and prints the answer, for a person or (`--json`)
/// a program.
fn control(request: Request, args: &CtlArgs) -> Result<bool> {
    let response = roamd::ctl::call(&args.socket, request, CTL_TIMEOUT).map_err(|e| {
        let hint = match e {
            ClientError::NoSocket(_) | ClientError::NotListening(_) => {
                ": start it with `systemctl start roamd` or `roamd --config FILE`".to_owned()
            }
            ClientError::PermissionDenied(_) => format!(": run as root (sudo roam {})", request.name()),
            _ => String::new(),
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    if let Response::Error { message } = &response {
        if message == roamd::ctl::PERMISSION_DENIED {
            bail!(
                "roamd refused: permission denied: roam needs root: run as root (sudo roam {})",
                request.name()
            );
        }
        bail!("roamd refused the request: {message}");
    }
    if args.json {
        println!("{}", response.body_pretty());
        return Ok(true);
    }
    match response {
        Response::Status(s) => print!("{}", status_view::status(&s)),
        Response::Peers(p) => print!("{}", status_view::peers(&p)),
        Response::Flows(f) => print!("{}", status_view::flows(&f)),
        Response::Ok { message } | Response::Error { message } => println!("{message}"),
    }
    Ok(true)
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
