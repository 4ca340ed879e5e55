//! roamd, the host daemon: the tokio shell around the sans-IO endpoint.
//!
//! It watches the host's addresses (rtnetlink) and sockets (sock_diag), runs the control
//! protocol on a UDP port, applies the endpoint's translation entries to the kernel
//! (nftables), and answers the operator (`roam status`, `roam down`, ...) on a Unix
//! socket (`ctl`). Everything it decides, the endpoint in `roam-core` decides; roamd only
//! feeds it inputs and carries out its outputs (docs/ARCHITECTURE.md).

pub mod config;
pub mod control;
pub mod ctl;
mod daemon;
pub mod metrics;
pub mod persist;
pub mod status;

pub use daemon::{Options, run};
