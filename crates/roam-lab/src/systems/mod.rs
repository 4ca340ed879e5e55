//! The mobility systems `roam bench` compares, each set up on the standard topology.
//!
//! A [`Carrier`] is what carries A's and B's TCP traffic: plain TCP (the ceiling, and
//! the reference that dies at a move), roam (translate mode on the nftables or TUN
//! plane, or tunnel mode), the kernel's Multipath TCP, or a WireGuard overlay
//! (`wireguard-go`). The bench drives every one of them the same way: servers listen on
//! [`Carrier::b_endpoint`], clients connect from A with [`Carrier::tcp_protocol`] (or
//! through [`Carrier::wrap_command`] for external programs), A moves with
//! [`Carrier::move_a`], and the wire on B's link is read through
//! [`Carrier::wire_filter`].

use std::net::SocketAddr;

use crate::capture::PacketFilter;
use crate::netns::LabError;
use crate::topology::{Family, MoveTimes, Topology};

pub mod mptcp;
pub mod plain;
pub mod roam;
pub mod wireguard;

/// The socket protocol of the kernel's Multipath TCP (`IPPROTO_MPTCP`, linux/in.h).
pub const IPPROTO_MPTCP: i32 = 262;

/// One mobility system, running on a [`Topology`] (which it does not own: the bench
/// builds the topology, sets the carrier up on it, and stops the carrier before the
/// topology goes).
pub trait Carrier {
    /// Short name for tables and JSON ("plain TCP", "roam translate (nftables)", ...).
    fn label(&self) -> String;

    /// The address and port A's clients connect to for a server of B's listening on
    /// `port` (B's own address, or its overlay address for WireGuard).
    fn b_endpoint(&self, topology: &Topology, family: Family, port: u16) -> SocketAddr;

    /// The protocol number for `socket(2)` of both the client and the server: 0 for
    /// plain TCP, [`IPPROTO_MPTCP`] for Multipath TCP.
    fn tcp_protocol(&self) -> i32 {
        0
    }

    /// A prefix that runs an external program (iperf3) over this carrier, e.g.
    /// `["mptcpize", "run"]`; empty for most.
    fn wrap_command(&self) -> Vec<String> {
        Vec::new()
    }

    /// Packets on B's link (captured on B's interface) that carry the application's
    /// data towards B on `port`: TCP to B's address and `port`, or the overlay's UDP
    /// datagrams. Handover gaps and per-packet overhead are measured on these.
    fn wire_filter(&self, topology: &Topology, family: Family, port: u16) -> PacketFilter;

    /// Waits (bounded) until a connection carried on `port` is ready to survive a move:
    /// roam's daemons share its flow, Multipath TCP has its subflows, WireGuard has a
    /// session. Plain TCP has nothing to wait for.
    fn wait_ready(&mut self, _topology: &Topology, _port: u16) -> Result<(), LabError> {
        Ok(())
    }

    /// Moves A to its other subnet the way this system moves (most: the lab's
    /// break-before-make address change; Multipath TCP make-before-break: the new
    /// path first). `MoveTimes::started` is when the old path went away, the instant
    /// the handover gap is measured from.
    fn move_a(&mut self, topology: &Topology) -> Result<MoveTimes, LabError>;

    /// Tears the system down (daemons stopped, endpoints and devices removed). The
    /// topology stays usable for the next carrier.
    fn stop(&mut self, topology: &Topology) -> Result<(), LabError>;

    /// The processes this system runs (daemons), whose CPU time is part of its cost.
    fn processes(&self) -> Vec<u32> {
        Vec::new()
    }

    /// Facts worth reporting about this carrier's run (its daemons' counters, the
    /// subflows it opened); empty by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A's move as most systems make it: the lab's address change (old addresses removed,
/// new ones added, default routes replaced), to whichever subnet A is not on.
pub fn lab_move(topology: &Topology) -> Result<MoveTimes, LabError> {
    match topology.a_subnet() {
        crate::topology::Subnet::One => topology.move_a(),
        crate::topology::Subnet::Two => topology.move_a_back(),
    }
}
