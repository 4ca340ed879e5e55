//! roam's lab: topologies in Linux network namespaces (hosts, a router, two subnets for
//! the mover), links emulated in userspace (delay, rate, loss; this kernel has no
//! netem), real unmodified programs across a move, and measurements from captures.
//!
//! - [`netns`]: [`Lab`] owns namespaces and processes and cleans them up (drop, panic,
//!   Ctrl-C, stale runs); [`Ns`] runs commands, children and closures inside one.
//! - [`link`]: a wire between two interfaces over AF_PACKET: delay, rate, tail-drop
//!   queue, seeded loss, all changeable at run time.
//! - [`topology`]: the standard lab (host A with two access links, host B, router R).
//! - [`capture`]: packet records with kernel timestamps, pcap files, handover gaps.
//! - [`timeline`], [`plot`]: a run's goodput bin by bin, its moves and gaps, drawn as a
//!   PNG.
//! - [`ping`], [`traffic`]: ICMP echo, TCP bulk transfers with digests and
//!   request/response, over TCP or Multipath TCP, in Rust, run inside namespaces.
//! - [`roamd`]: roamd on the lab's hosts (keys, configuration, start, status, stop).
//! - [`systems`]: the mobility systems `roam bench` compares on the topology (plain
//!   TCP, roam, Multipath TCP, a WireGuard overlay); [`barplot`]: its charts.
//!
//! Everything here needs root; tests call [`lab_available`] first.

pub mod barplot;
pub mod capture;
pub mod link;
pub mod netns;
pub mod ping;
pub mod plot;
pub mod roamd;
pub mod scenario;
mod sys;
pub mod systems;
pub mod timeline;
pub mod topology;
pub mod traffic;

pub use netns::{Lab, LabError, Ns, lab_available};
