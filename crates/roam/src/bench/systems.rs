//! The systems `roam bench` compares, by name, and how each is started on a topology
//! (the carriers themselves are in `roam_lab::systems`).

use std::path::Path;

use anyhow::{Context, Result};
use roam_lab::systems::Carrier;
use roam_lab::systems::mptcp::{Mptcp, MptcpMove};
use roam_lab::systems::plain::Plain;
use roam_lab::systems::roam::Roam;
use roam_lab::systems::wireguard::WireGuard;
use roam_lab::topology::{Family, Topology};
use serde::Serialize;

/// One system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Plain TCP: the ceiling in steady state, the reference that dies at a move.
    Plain,
    /// roam translate mode on the nftables plane (the shipped one).
    RoamNft,
    /// roam translate mode on the userspace TUN plane.
    RoamTun,
    /// roam tunnel mode (over the TUN plane).
    RoamTunnel,
    /// The kernel's Multipath TCP, the new path added before the old one goes.
    MptcpMbb,
    /// The kernel's Multipath TCP, the old path gone before the new one comes.
    MptcpBbm,
    /// A WireGuard overlay (wireguard-go), roaming by its endpoint update.
    Wireguard,
}

impl System {
    /// Every system in steady state (Multipath TCP once: how it moves does not matter
    /// there).
    pub const STEADY: [System; 6] = [
        System::Plain,
        System::RoamNft,
        System::RoamTun,
        System::RoamTunnel,
        System::MptcpMbb,
        System::Wireguard,
    ];

    /// Every system across moves.
    pub const HANDOVER: [System; 7] = [
        System::Plain,
        System::RoamNft,
        System::RoamTun,
        System::RoamTunnel,
        System::MptcpMbb,
        System::MptcpBbm,
        System::Wireguard,
    ];

    /// The name in tables and JSON.
    pub fn label(self, steady: bool) -> &'static str {
        match self {
            System::Plain => "plain TCP",
            System::RoamNft => "roam translate (nft)",
            System::RoamTun => "roam translate (TUN)",
            System::RoamTunnel => "roam tunnel",
            System::MptcpMbb if steady => "MPTCP",
            System::MptcpMbb => "MPTCP make-before-break",
            System::MptcpBbm => "MPTCP break-before-make",
            System::Wireguard => "WireGuard (wireguard-go)",
        }
    }

    pub fn is_roam(self) -> bool {
        matches!(self, System::RoamNft | System::RoamTun | System::RoamTunnel)
    }

    /// Starts the system on `topology`; roamd's keys and logs go under `dir`, roamd is
    /// `binary` (`roam daemon`).
    pub fn start(
        self,
        topology: &Topology,
        family: Family,
        dir: &Path,
        binary: &Path,
    ) -> Result<Box<dyn Carrier>> {
        let what = || format!("starting {}", self.label(false));
        Ok(match self {
            System::Plain => Box::new(Plain),
            System::RoamNft => Box::new(Roam::start(topology, dir, binary, "nftables").with_context(what)?),
            System::RoamTun => Box::new(Roam::start(topology, dir, binary, "tun").with_context(what)?),
            System::RoamTunnel => Box::new(Roam::start(topology, dir, binary, "tunnel").with_context(what)?),
            System::MptcpMbb => {
                Box::new(Mptcp::start(topology, family, MptcpMove::MakeBeforeBreak).with_context(what)?)
            }
            System::MptcpBbm => {
                Box::new(Mptcp::start(topology, family, MptcpMove::BreakBeforeMake).with_context(what)?)
            }
            System::Wireguard => Box::new(WireGuard::start(topology, family).with_context(what)?),
        })
    }
}
