//! `roamd`: the host daemon, as its own command (for service managers). The same as
//! `roam daemon`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    roam::init_logging("info");
    roam::daemon_main(roam::DaemonArgs::parse())
}
