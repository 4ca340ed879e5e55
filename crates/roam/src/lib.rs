//! What the `roam` and `roamd` commands share.

use std::path::PathBuf;
use std::process::ExitCode;

use roamd::config::load_host;

/// Logs go to stderr; `ROAM_LOG` (an `EnvFilter` directive such as `debug` or
/// `roamd=debug`) overrides `default`.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// How roamd is started (`roamd ...` or `roam daemon ...`).
#[derive(clap::Parser, Debug)]
#[command(
    name = "roamd",
    version,
    about = "roam's host daemon: keeps this host's TCP and UDP sessions alive when its addresses change (root or CAP_NET_ADMIN)"
)]
pub struct DaemonArgs {
    /// The host configuration file (keys, trusted peers, [daemon] settings).
    #[arg(long, short, value_name = "FILE", required_unless_present = "check_config")]
    pub config: Option<PathBuf>,
    /// Check FILE (and the key file it names), print line-numbered errors, and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// Keep a JSON status snapshot in FILE (rewritten every second and at exit).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// At exit, remove the kernel's translation entries (migrated sessions go back to
    /// their original addresses and break if those are gone). By default they stay,
    /// so that sessions keep working while roamd is down and across a restart or an
    /// upgrade; `roam down` removes them at any time.
    #[arg(long)]
    pub remove_entries_on_exit: bool,
    /// Persist the translation entries in FILE (crash-safely, after every change), and
    /// reinstall them from it at start.
    #[arg(long, value_name = "FILE", default_value = roamd::persist::DEFAULT_STATE_FILE)]
    pub state: PathBuf,
    /// Do not persist anything (a restart then drops migrated sessions).
    #[arg(long, conflicts_with = "state")]
    pub no_state: bool,
    /// Serve Prometheus metrics over HTTP at ADDR (`GET /metrics`), e.g.
    /// 127.0.0.1:9641. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the operator's control socket (`roam status`, `roam down`, ...) at PATH
    /// [default: /run/roam/roamd.sock, where roamd runs on without it if another
    /// roamd has it].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Runs roamd with `args`; the exit code says how it ended.
pub fn daemon_main(args: DaemonArgs) -> ExitCode {
    if let Some(file) = args.check_config {
        return match load_host(&file) {
            Ok((cfg, key)) => {
                println!(
                    "{}: ok (host {}, {} peer(s), data plane {:?}, control port {})",
                    file.display(),
                    key.public(),
                    cfg.peers.len(),
                    cfg.daemon.data_plane,
                    cfg.daemon.control_port
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("roamd: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = args
        .config
        .expect("clap requires --config without --check-config");
    let options = roamd::Options {
        config,
        status_file: args.status_file,
        keep_entries_on_exit: !args.remove_entries_on_exit,
        state_file: (!args.no_state).then_some(args.state),
        metrics: args.metrics,
        socket: args.socket,
    };
    match roamd::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roamd: {e:#}");
            ExitCode::from(2)
        }
    }
}
