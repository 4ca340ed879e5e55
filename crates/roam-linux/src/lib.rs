//! roam on Linux: everything that touches the kernel, behind small synchronous or async
//! APIs that the daemon (`roamd`) drives. Nothing here decides anything: the sans-IO
//! endpoint in `roam-core` decides, this crate observes and obeys.
//!
//! - [`netlink`]: local addresses and their changes (rtnetlink), and keeping a moved
//!   flow's original address usable by the stack for existing sockets only.
//! - [`sockdiag`]: the TCP and UDP sockets of this host (sock_diag), as flows.
//! - [`nft`]: the kernel data plane (nftables, inet family): translation entries,
//!   hold, return-routability budgets; its transactions go through [`libnft`]
//!   (libnftables in process) when the library loads.
//! - [`icmp`]: ICMP errors about flows [`nft`] translates, relayed through userspace
//!   (nfnetlink_log in, roam-core's rewriter, a raw socket out).
//! - [`nudge`]: make the local TCP stack send its current ACK for a flow at once.
//! - [`tun`]: the userspace data plane (TUN devices, policy routing, tc diversion)
//!   around roam-core's packet logic (shared with the simulator): the fallback, and
//!   the base of tunnel mode.
//! - [`tcbpf`]: the same flow translation as a tc-BPF program (measured against
//!   [`nft`] by `roam bench dataplane`; not the plane roamd uses).

pub mod icmp;
pub mod libnft;
pub mod netlink;
pub mod nft;
pub mod nudge;
pub mod sockdiag;
pub mod tcbpf;
pub mod tun;
