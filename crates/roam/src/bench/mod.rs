//! `roam bench`: measurements that decide how roam is built and show how it compares,
//! run on this machine's kernel (docs/BENCHMARKS.md). With no subcommand every section
//! runs in one invocation ([`all`]); each part is also a subcommand of its own.

use anyhow::Result;

pub mod all;
pub mod dataplane;
pub mod handover;
pub mod plot;
pub mod scale;
pub mod sim;
mod stats;
pub mod steady;
pub mod systems;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Option<BenchCommand>,
    #[command(flatten)]
    pub all: all::Args,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// nftables against tc-BPF as roam's translator (root): goodput and CPU per GB
    /// against plain TCP over one veth, and rule-install latency.
    Dataplane(dataplane::Args),
    /// The simulator's speed on the built-in scenarios: scenarios per second and
    /// virtual seconds per wall second, each run checked to replay exactly.
    Sim(sim::Args),
    /// Many migrated flows (root): install latency, throughput with them installed,
    /// control-plane cost per move, roamd's memory per flow.
    Scale(scale::Args),
}

/// `Ok(true)`: the measurement ran and every check in it held.
pub fn run(args: BenchArgs) -> Result<bool> {
    match args.what {
        None => all::run(args.all),
        Some(BenchCommand::Dataplane(a)) => dataplane::run(a),
        Some(BenchCommand::Sim(a)) => sim::run(a),
        Some(BenchCommand::Scale(a)) => scale::run(a),
    }
}
