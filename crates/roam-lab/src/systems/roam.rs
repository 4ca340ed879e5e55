//! roam itself: roamd on A and B, in translate mode (the nftables or the TUN data
//! plane) or tunnel mode, exactly as the lab's scenarios run it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Carrier, lab_move};
use crate::capture::{PacketFilter, Protocol};
use crate::netns::LabError;
use crate::roamd::{RoamdConfig, Roamds};
use crate::topology::{Family, MoveTimes, Topology};

const HOSTS: [&str; 2] = ["a", "b"];
/// How long roamd may take to learn of a connection (it scans sockets every second).
const READY_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Roam {
    roamds: Roamds,
    data_plane: String,
}

impl Roam {
    /// Starts roamd on A and B with `data_plane` ("nftables", "tun", "tunnel"), keys and
    /// logs under `dir`, from the `roam` executable `binary`; returns once both are up.
    pub fn start(topology: &Topology, dir: &Path, binary: &Path, data_plane: &str) -> Result<Roam, LabError> {
        let mut roamds = Roamds::new(dir, binary);
        roamds.configure(
            &HOSTS,
            &RoamdConfig {
                nudge: true,
                data_plane: data_plane.to_owned(),
                move_message: None,
            },
        )?;
        roamds.spawn(topology.a(), "a")?;
        roamds.spawn(topology.b(), "b")?;
        let roam = Roam {
            roamds,
            data_plane: data_plane.to_owned(),
        };
        if let Err(e) = roam.roamds.wait_up(&HOSTS) {
            roam.roamds.kill_all();
            return Err(e);
        }
        Ok(roam)
    }

    /// The daemons, for their status.
    pub fn roamds(&self) -> &Roamds {
        &self.roamds
    }
}

impl Drop for Roam {
    fn drop(&mut self) {
        self.roamds.kill_all();
    }
}

impl Carrier for Roam {
    fn label(&self) -> String {
        match self.data_plane.as_str() {
            "tunnel" => "roam tunnel".into(),
            plane => format!("roam translate ({plane})"),
        }
    }

    fn b_endpoint(&self, topology: &Topology, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(topology.b_address(family), port)
    }

    /// TCP to B's `port`: in tunnel mode too, as the capture reads roam's tunnel
    /// datagrams as the packets they carry (keeping the outer frame's length).
    fn wire_filter(&self, topology: &Topology, family: Family, port: u16) -> PacketFilter {
        PacketFilter::to(Protocol::Tcp, self.b_endpoint(topology, family, port))
    }

    /// Every TCP connection A has established to B's `port` is known to both roamds
    /// as a flow shared with the other: each has a session to move with.
    fn wait_ready(&mut self, topology: &Topology, port: u16) -> Result<(), LabError> {
        let filter = format!("( dport = :{port} )");
        let out = topology
            .a()
            .exec(&["ss", "-Htn", "state", "established", &filter])?;
        let connections = out.stdout.lines().filter(|l| !l.trim().is_empty()).count();
        for (host, side) in [("a", "remote"), ("b", "local")] {
            self.roamds.wait_status(host, READY_WITHIN, |s| {
                let shared = s["flows"].as_array().map_or(0, |flows| {
                    flows
                        .iter()
                        .filter(|f| f["peer"]["state"] == "peer")
                        .filter(|f| {
                            f["original"][side]
                                .as_str()
                                .and_then(|a| a.parse::<SocketAddr>().ok())
                                .is_some_and(|a| a.port() == port)
                        })
                        .count()
                });
                shared >= connections.max(1)
            })?;
        }
        Ok(())
    }

    fn move_a(&mut self, topology: &Topology) -> Result<MoveTimes, LabError> {
        lab_move(topology)
    }

    fn stop(&mut self, _topology: &Topology) -> Result<(), LabError> {
        for host in HOSTS {
            if self.roamds.child(host).is_ok() {
                self.roamds.stop(host)?;
            }
        }
        Ok(())
    }

    fn processes(&self) -> Vec<u32> {
        HOSTS
            .iter()
            .filter_map(|h| self.roamds.child(h).ok().map(|c| c.pid()))
            .collect()
    }

    fn notes(&self) -> Vec<String> {
        HOSTS
            .iter()
            .filter_map(|h| self.roamds.status(h).map(|s| (h, s)))
            .map(|(h, s)| {
                let c = &s["counters"];
                format!(
                    "roamd {h}: {} flow(s) moved, {} message(s) sent, {} retransmitted",
                    c["flows_moved"], c["messages_sent"], c["retransmits"]
                )
            })
            .collect()
    }
}
