//! roam's deterministic network simulator.
//!
//! Virtual time, one seeded RNG, links with latency, rate, loss, reordering and
//! duplication, routers, and hosts that each run a real TCP/IP stack (smoltcp) with the
//! roam core and the translation data plane between the stack and the wire. The
//! simulator is just another data plane: the endpoint in each host is the same code
//! the daemon drives.
//!
//! - [`scenario`]: scenarios as TOML data, validated with line numbers.
//! - [`sim`]: the engine ([`run`]).
//! - [`report`]: what happened, for people and machines.
//! - [`builtin`]: the scenarios that ship with roam (seed 000's figures).
#![forbid(unsafe_code)]

pub mod apps;
mod attack;
pub mod builtin;
pub mod host;
pub mod net;
pub mod report;
pub mod scenario;
pub mod sim;

pub use report::Report;
pub use scenario::{Family, Scenario, ScenarioError};
pub use sim::{RunOptions, SimError, run};
