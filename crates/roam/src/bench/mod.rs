//! `roam bench`: measurements that decide how roam is built, run on this machine's
//! kernel. Each part is a subcommand; `dataplane` compares the kernel data planes
//! (docs/BENCHMARKS.md).

use anyhow::Result;

pub mod dataplane;
pub mod sim;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// nftables against tc-BPF as roam's translator (root): goodput and CPU per GB
    /// against plain TCP over one veth, and rule-install latency.
    Dataplane(dataplane::Args),
    /// The simulator's speed on the built-in scenarios: scenarios per second and
    /// virtual seconds per wall second, each run checked to replay exactly.
    Sim(sim::Args),
}

/// `Ok(true)`: the measurement ran and every check in it held.
pub fn run(args: BenchArgs) -> Result<bool> {
    match args.what {
        BenchCommand::Dataplane(a) => dataplane::run(a),
        BenchCommand::Sim(a) => sim::run(a),
    }
}
