//! roam's protocol core: everything that decides, nothing that does I/O.
//!
//! - [`translate`]: the translation primitive (seed 000's local connection translation
//!   table) and the packet rewriter that applies it to raw IP packets.
//! - [`endpoint`]: the sans-IO protocol state machine, one per host.
//! - [`plane`]: the packet logic of the userspace data planes (the simulator's, the
//!   TUN device's): translation, hold queue, budgets, drain, nudge, resend.
//! - [`tunnel`]: tunnel mode's encapsulation (wrap, and the unwrap parser).
//! - [`security`]: identities, trust, the Noise handshake, sessions, cookies, limits.
//! - [`config`]: a host's configuration file (its key, the peers it trusts).
//! - [`time`]: time as a value; the core never reads a clock.
//! - [`fuzzing`]: the bodies of the fuzz targets, so that ordinary tests replay the
//!   committed corpus on stable.
#![forbid(unsafe_code)]

pub mod config;
pub mod counters;
pub mod endpoint;
pub mod fuzzing;
pub mod plane;
pub mod security;
pub mod time;
pub mod translate;
pub mod tunnel;

pub use counters::Counters;
pub use endpoint::{
    Config, ConflictDirection, DataPlane, DataPlaneCommand, Endpoint, Event, Flow, FlowPeer, Input,
    MoveMessage, Peer, Transmit,
};
pub use time::Instant;
