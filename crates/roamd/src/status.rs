//! What roamd reports about itself: a snapshot written as JSON (atomically: write,
//! rename) so that `roam lab`, tests and people can read it while it runs, and
//! the answer to `roam status` on the control socket (`ctl.rs`).
//!
//! Every type here reads back what it writes (Serialize and Deserialize), so the CLI
//! gets the daemon's own types. The JSON is the one the core's types make (a flow, the
//! protocol counters): the lab and its tests read the snapshot by field name.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use roam_core::endpoint::FlowPeer;
use roam_core::translate::Tuple;
use roam_core::{Counters, Flow};
use roam_linux::nft::NftCounters;
use roam_linux::tun::TunCounters;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Counters of the daemon's own work (the endpoint counts the protocol's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
    /// The state file (crate::persist): writes, failed writes, a file refused at start
    /// (unreadable, another format or host: set aside as `*.bad`), and the entries it
    /// gave back to the data plane at start, and those the plane refused.
    pub state_saves: u64,
    pub state_save_errors: u64,
    pub state_refused: u64,
    pub entries_restored: u64,
    pub entries_restore_refused: u64,
    /// Requests on the operator's control socket (`roam status`, ...) carried out.
    pub ctl_requests: u64,
    /// Control-socket requests refused because the caller is not root (SO_PEERCRED).
    pub ctl_refused: u64,
    /// Control-socket requests refused as malformed: not JSON, an unknown request or
    /// version, larger than the limit, or not sent in time. Nothing changed for them.
    pub ctl_malformed: u64,
}

/// A data plane's own counters, in its own shape (`data_plane` says which).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum DataPlaneCounters {
    Nft(NftCounters),
    Tun(Box<TunCounters>),
}

/// The data plane's counters as the status carries them: the plane's own type in
/// roamd (written in its fields' order), JSON in whoever reads the status back.
#[derive(Clone, Debug)]
pub enum PlaneCounters {
    Live(DataPlaneCounters),
    Read(serde_json::Value),
}

impl PlaneCounters {
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            PlaneCounters::Live(c) => serde_json::to_value(c).unwrap_or_default(),
            PlaneCounters::Read(v) => v.clone(),
        }
    }
}

impl PartialEq for PlaneCounters {
    fn eq(&self, other: &PlaneCounters) -> bool {
        self.to_value() == other.to_value()
    }
}

impl Serialize for PlaneCounters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PlaneCounters::Live(c) => c.serialize(s),
            PlaneCounters::Read(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PlaneCounters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PlaneCounters, D::Error> {
        serde_json::Value::deserialize(d).map(PlaneCounters::Read)
    }
}

/// Named counters in a fixed order, written as one JSON object (`{"name": n, ...}`):
/// the protocol's [`Counters`] as the status carries them. A list rather than the
/// core's struct so the CLI can read it back, and a newer daemon's counters reach an
/// older CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedCounters(pub Vec<(String, u64)>);

impl NamedCounters {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// Adds `other` counter by counter (names missing here are appended).
    pub fn add(&mut self, other: &NamedCounters) {
        for (name, v) in other.iter() {
            match self.0.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => *mine += v,
                None => self.0.push((name.to_owned(), v)),
            }
        }
    }
}

impl From<&Counters> for NamedCounters {
    fn from(c: &Counters) -> NamedCounters {
        NamedCounters(c.iter().map(|(n, v)| (n.to_owned(), v)).collect())
    }
}

impl Serialize for NamedCounters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (n, v) in &self.0 {
            map.serialize_entry(n, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for NamedCounters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NamedCounters, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = NamedCounters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedCounters, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(256));
                while let Some((name, n)) = map.next_entry::<String, u64>()? {
                    v.push((name, n));
                }
                Ok(NamedCounters(v))
            }
        }
        d.deserialize_map(Ordered)
    }
}

/// Who is at the other end of a flow (the JSON of `roam_core`'s `FlowPeer`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "peer", rename_all = "snake_case")]
pub enum FlowPeerStatus {
    /// A registration to the remote address is in progress.
    Probing,
    /// A roam peer, by node identifier.
    Peer(String),
    /// The remote host does not run roam: the flow is left alone.
    NotRoam,
    /// Both ends are this host.
    Local,
}

/// A flow as the status shows it (the JSON of `roam_core`'s `Flow`). Times are
/// nanoseconds since roamd started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    /// What the local stack sees; never changes.
    pub original: Tuple,
    /// What is on the wire now.
    pub current: Tuple,
    /// The tuple that names the flow to the peer.
    pub wire_key: Tuple,
    pub peer: FlowPeerStatus,
    /// Since when the flow has waited for its peer to confirm a move.
    pub moving_since: Option<u64>,
    /// Its local address vanished with no replacement yet.
    pub orphaned: bool,
    /// Remapped to keep two connections apart (seed 000 ¶0069).
    pub remapped: bool,
    /// The peer moved it to an address not yet proven, and the tuple to go back to.
    pub validating: Option<(IpAddr, Tuple)>,
    pub opened_at: u64,
    /// Completed moves (ours and the peer's).
    pub moves: u32,
}

impl FlowStatus {
    /// Whether the flow is on the wire under other addresses than its sockets'.
    pub fn migrated(&self) -> bool {
        self.current != self.original
    }
}

impl From<&Flow> for FlowStatus {
    fn from(f: &Flow) -> FlowStatus {
        FlowStatus {
            original: f.original,
            current: f.current,
            wire_key: f.wire_key,
            peer: match f.peer {
                FlowPeer::Probing => FlowPeerStatus::Probing,
                FlowPeer::Peer(id) => FlowPeerStatus::Peer(id.to_string()),
                FlowPeer::NotRoam => FlowPeerStatus::NotRoam,
                FlowPeer::Local => FlowPeerStatus::Local,
            },
            moving_since: f.moving_since.map(|t| t.as_nanos()),
            orphaned: f.orphaned,
            remapped: f.remapped,
            validating: f.validating,
            opened_at: f.opened_at.as_nanos(),
            moves: f.moves,
        }
    }
}

/// A peer as the status shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: String,
    /// Its name in this host's configuration (`[[peer]] name`); none for a key learned
    /// on first use.
    #[serde(default)]
    pub name: Option<String>,
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

/// How long the steps of roamd's reactions took: what decides a handover's gap on
/// this host, besides the network (docs/ARCHITECTURE.md, "Where a handover's time goes").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// From a control datagram, kernel event or timer to the last thing it made roamd
    /// do (data-plane change, state written, datagrams sent); only those that made it
    /// do something.
    pub reaction: Latency,
    /// One data-plane batch (an nft transaction; a TUN table change).
    pub plane_batch: Latency,
    /// One write of the state file.
    pub state_save: Latency,
}

/// A duration's distribution over the last [`Samples::WINDOW`] occurrences, and how
/// many there were in all.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    pub last_ms: f64,
}

/// The recent samples behind a [`Latency`] (bounded).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    count: u64,
    recent: std::collections::VecDeque<f64>,
}

impl Samples {
    pub const WINDOW: usize = 256;

    pub fn record(&mut self, d: std::time::Duration) {
        self.count += 1;
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(d.as_secs_f64() * 1e3);
    }

    pub fn summary(&self) -> Latency {
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |q: f64| {
            v.get(((q * v.len() as f64).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        Latency {
            count: self.count,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            max_ms: v.last().copied().unwrap_or(0.0),
            last_ms: self.recent.back().copied().unwrap_or(0.0),
        }
    }
}

/// One event, timestamped (seconds since roamd started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub at_s: f64,
    pub what: String,
}

/// The whole snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub public_key: String,
    pub pid: u32,
    pub uptime_s: f64,
    /// Whether roam is on: translating and handling moves. `roam down` turns it off
    /// (no translation, no moves) until `roam up`.
    #[serde(default = "on")]
    pub up: bool,
    /// The operator's control socket, if roamd serves one.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    pub control_port: u16,
    pub data_plane: String,
    /// The data plane's own counters, in its own shape ([`DataPlaneCounters`]): packets
    /// translated each way, dropped (kernel) or queued (TUN) while held or over a
    /// budget, kernel changes made and refused, nudges.
    pub data_plane_counters: Option<PlaneCounters>,
    pub addresses: Vec<IpAddr>,
    /// Addresses gone from their interface that roamd keeps on `lo` for the sockets
    /// still using them (docs/ARCHITECTURE.md).
    pub retained: Vec<IpAddr>,
    pub peers: Vec<PeerStatus>,
    pub flows: Vec<FlowStatus>,
    /// The protocol's counters (`roam_core::Counters`), by name.
    pub counters: NamedCounters,
    pub daemon: DaemonCounters,
    #[serde(default)]
    pub timings: Timings,
    pub events: Vec<EventRecord>,
}

fn on() -> bool {
    true
}

impl Status {
    /// Writes the snapshot to `path` crash-safely: a reader sees the old file or the new
    /// one, never half of one.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        // Buffered: serde_json writes token by token, and unbuffered that was a write(2)
        // per token, some 6 MB of them a second with 10,000 flows (`roam bench scale`
        // found roamd's loop spending most of its time there).
        let mut f = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(&tmp)?);
        serde_json::to_writer_pretty(&mut f, self)?;
        f.write_all(b"\n")?;
        // Not flushed to the disk: it is a view of the running daemon, and an `fsync`
        // each second stalled the daemon's loop (a move included) for a disk round trip.
        f.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, path)
    }

    /// Names of the peers the configuration names, by node identifier.
    pub fn peer_names(&self) -> BTreeMap<String, String> {
        self.peers
            .iter()
            .filter_map(|p| Some((p.node.clone(), p.name.clone()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use roam_core::security::{StaticKey, Trust};
    use roam_core::translate::Protocol;
    use roam_core::{Config, Endpoint, Input, Instant};

    /// The status's own types write exactly the JSON of the core's: the lab reads
    /// flows and counters by field name.
    #[test]
    fn flows_and_counters_are_written_as_the_core_writes_them() {
        let key = StaticKey::from_bytes([7; 32]);
        let mut ep = Endpoint::new(
            Config::new(key, Trust::keys([])),
            Box::new(ChaCha20Rng::from_seed([1; 32])),
        );
        let local: IpAddr = "10.0.0.2".parse().unwrap();
        ep.handle(Instant::ZERO, Input::AddressAdded(local));
        for (proto, remote) in [(Protocol::Tcp, "10.0.0.9:80"), (Protocol::Udp, "127.0.0.1:53")] {
            let t = Tuple::new(proto, "10.0.0.2:40000".parse().unwrap(), remote.parse().unwrap());
            ep.handle(Instant::from_millis(5), Input::FlowOpened(t));
        }
        let flows: Vec<&Flow> = ep.flows().collect();
        assert_eq!(flows.len(), 2);
        for f in flows {
            let core = serde_json::to_value(f).unwrap();
            let ours = FlowStatus::from(f);
            assert_eq!(serde_json::to_value(&ours).unwrap(), core);
            let back: FlowStatus = serde_json::from_value(core).unwrap();
            assert_eq!(back, ours);
        }
        let counters = ep.counters().clone();
        let named = NamedCounters::from(&counters);
        assert_eq!(
            serde_json::to_string(&named).unwrap(),
            serde_json::to_string(&counters).unwrap()
        );
        let back: NamedCounters = serde_json::from_str(&serde_json::to_string(&named).unwrap()).unwrap();
        assert_eq!(back, named, "read back in the same order");
    }

    #[test]
    fn named_counters_add_by_name() {
        let mut a = NamedCounters(vec![("x".into(), 1), ("y".into(), 2)]);
        a.add(&NamedCounters(vec![("y".into(), 3), ("z".into(), 4)]));
        assert_eq!(a.0, vec![("x".into(), 1), ("y".into(), 5), ("z".into(), 4)]);
        assert_eq!(a.get("y"), Some(5));
        assert_eq!(a.get("w"), None);
    }

    #[test]
    fn the_daemon_counters_read_back_and_tolerate_missing_fields() {
        let c = DaemonCounters {
            ctl_refused: 3,
            ..DaemonCounters::default()
        };
        let back: DaemonCounters = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let old: DaemonCounters = serde_json::from_str(r#"{"send_errors": 2}"#).unwrap();
        assert_eq!(old.send_errors, 2);
        assert_eq!(old.ctl_requests, 0);
    }
}

#[cfg(test)]
mod timing_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn samples_summarise_the_recent_window_and_count_all() {
        let mut s = Samples::default();
        assert_eq!(s.summary(), Latency::default());
        for ms in (1..=10).rev() {
            s.record(Duration::from_millis(ms));
        }
        let l = s.summary();
        assert_eq!(
            (l.count, l.p50_ms, l.p90_ms, l.max_ms, l.last_ms),
            (10, 5.0, 9.0, 10.0, 1.0)
        );
        for _ in 0..Samples::WINDOW {
            s.record(Duration::from_millis(2));
        }
        let l = s.summary();
        assert_eq!(l.count, 10 + Samples::WINDOW as u64);
        assert_eq!(l.max_ms, 2.0, "older samples left the window");
    }
}
