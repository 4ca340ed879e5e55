//! roamd, the host daemon: the tokio shell around the sans-IO endpoint.
//!
//! It watches the host's addresses (rtnetlink) and sockets (sock_diag), runs the control
//! protocol on a UDP port, and applies the endpoint's translation entries to the kernel
//! (nftables). Everything it decides, the endpoint in `roam-core` decides; roamd only
//! feeds it inputs and carries out its outputs (docs/ARCHITECTURE.md).

pub mod config;
pub mod control;
mod daemon;
pub mod status;

pub use daemon::{Options, run};
