//! The simulator's data plane: the packet logic every userspace data plane shares
//! ([`roam_core::plane`]: the translation table and packet rewriter, hold queue,
//! return-routability budgets, drain, nudge, resend), between a simulated host's TCP/IP
//! stack and its link (the position of seed 000 FIG. 5: between the fused TCP/IP layer
//! and the driver). roam-linux's TUN data plane is the same logic between the kernel's
//! stack and a TUN device.

pub use roam_core::plane::{
    HOLD_LIMIT, PacketPlane as SimDataPlane, PlaneCounters as DataPlaneCounters, Verdicts,
};
