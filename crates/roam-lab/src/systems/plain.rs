//! Plain TCP: no mobility system at all. The ceiling for steady state, and the
//! reference that dies at a move (its packets leave from an address A no longer has,
//! and R drops them).

use std::net::SocketAddr;

use super::{Carrier, lab_move};
use crate::capture::{PacketFilter, Protocol};
use crate::netns::LabError;
use crate::topology::{Family, MoveTimes, Topology};

#[derive(Debug, Default)]
pub struct Plain;

impl Carrier for Plain {
    fn label(&self) -> String {
        "plain TCP".into()
    }

    fn b_endpoint(&self, topology: &Topology, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(topology.b_address(family), port)
    }

    fn wire_filter(&self, topology: &Topology, family: Family, port: u16) -> PacketFilter {
        PacketFilter::to(Protocol::Tcp, self.b_endpoint(topology, family, port))
    }

    fn move_a(&mut self, topology: &Topology) -> Result<MoveTimes, LabError> {
        lab_move(topology)
    }

    fn stop(&mut self, _topology: &Topology) -> Result<(), LabError> {
        Ok(())
    }
}
