//! The nftables data plane on the two-host lab of `support::two_hosts` (re-exported
//! here, so the nft tests read `use common_nft::*;`). Test binaries declare
//! `mod support;` next to `mod common_nft;`.

#![allow(dead_code)] // each test binary uses a different part

use roam_linux::nft::{NftConfig, NftDataPlane};

pub use crate::support::two_hosts::*;
pub use crate::support::{Netns, netns_available};

impl Netns {
    /// A kernel data plane in this namespace.
    pub fn plane(&self) -> NftDataPlane {
        NftDataPlane::open_with(NftConfig {
            netns: Some(self.path()),
            ..NftConfig::default()
        })
        .expect("open the nftables data plane")
    }

    /// A kernel data plane in this namespace whose transactions run in process
    /// (libnftables) or as `nft` processes.
    pub fn plane_in_process(&self, in_process: bool) -> NftDataPlane {
        NftDataPlane::open_with(NftConfig {
            netns: Some(self.path()),
            in_process,
            ..NftConfig::default()
        })
        .expect("open the nftables data plane")
    }

    /// A kernel data plane in this namespace, with its ICMP relay (which also carries
    /// the retransmission kick) on or off.
    pub fn plane_with_relay(&self, relay: bool) -> NftDataPlane {
        NftDataPlane::open_with(NftConfig {
            netns: Some(self.path()),
            icmp_group: if relay {
                NftConfig::default().icmp_group
            } else {
                None
            },
            ..NftConfig::default()
        })
        .expect("open the nftables data plane")
    }
}
