//! What roamd reports about itself: a snapshot written as JSON (atomically: write,
//! fsync, rename) so that `roam lab`, tests and people can read it while it runs.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use roam_core::{Counters, Flow};
use roam_linux::nft::NftCounters;
use roam_linux::tun::TunCounters;
use serde::Serialize;

/// Counters of the daemon's own work (the endpoint counts the protocol's).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonCounters {
    /// Control datagrams read from the sockets.
    pub datagrams_received: u64,
    /// Control datagrams the kernel refused to send (buffer full, no route even after
    /// a route change).
    pub send_errors: u64,
    /// Control datagrams that found no route and waited for the next route change.
    pub sends_awaiting_route: u64,
    /// Nudges the endpoint asked for that the configuration turned off (the data
    /// plane counts those it made).
    pub nudges_disabled: u64,
    /// Flow listings (sock_diag) and those that failed.
    pub flow_scans: u64,
    pub flow_scan_errors: u64,
    /// Address events from the kernel, and the addresses roamd kept for old sockets.
    pub address_events: u64,
    pub addresses_retained: u64,
    pub addresses_released: u64,
}

/// A data plane's own counters, in its own shape (`data_plane` says which).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum DataPlaneCounters {
    Nft(NftCounters),
    Tun(Box<TunCounters>),
}

/// A peer as the status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub node: String,
    pub public_key: String,
    pub control: SocketAddr,
    pub addresses: Vec<IpAddr>,
    pub rtt_ms: Option<f64>,
    pub flows: usize,
    /// When the last move with this peer completed (seconds since roamd started) and
    /// how long its exchange took.
    pub last_move_at_s: Option<f64>,
    pub last_move_ms: Option<f64>,
}

/// One event, timestamped (seconds since roamd started).
#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub at_s: f64,
    pub what: String,
}

/// The whole snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub public_key: String,
    pub pid: u32,
    pub uptime_s: f64,
    pub control_port: u16,
    pub data_plane: String,
    /// The data plane's own counters: packets translated each way, dropped (kernel) or
    /// queued (TUN) while held or over a budget, kernel changes made and refused, nudges.
    pub data_plane_counters: Option<DataPlaneCounters>,
    pub addresses: Vec<IpAddr>,
    /// Addresses gone from their interface that roamd keeps on `lo` for the sockets
    /// still using them (docs/ARCHITECTURE.md).
    pub retained: Vec<IpAddr>,
    pub peers: Vec<PeerStatus>,
    pub flows: Vec<Flow>,
    pub counters: Counters,
    pub daemon: DaemonCounters,
    pub events: Vec<EventRecord>,
}

impl Status {
    /// Writes the snapshot to `path` crash-safely: a reader sees the old file or the new
    /// one, never half of one.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut f, self)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
