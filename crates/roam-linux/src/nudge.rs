//! The nudge: make this host's own TCP stack send its current cumulative ACK for a flow
//! at once (what [`DataPlaneCommand::Nudge`](roam_core::DataPlaneCommand::Nudge) asks).
//!
//! # Why
//!
//! After a move, the peer's sender has usually lost its in-flight window at the old
//! address and, without news, waits for a tail-loss probe or its retransmission timeout
//! (200 ms minimum on Linux, more after back-off). One ACK from this side, sent right
//! after the translation entry is in, restarts its recovery (SACK/RACK) at once: the
//! probe recorded in MISSION.md ("Hard parts") measured the gap at the receiver going
//! from ~100 ms to ~30 ms with a single elicited ACK.
//!
//! # How
//!
//! A TCP segment is injected *into this host's own stack*, through a raw socket, as if it
//! came from the flow's original remote end to its original local end (the addresses
//! and ports the socket sees). It is addressed to a local address, so the kernel routes
//! it through loopback straight back in; the socket it reaches answers with an ACK
//! carrying its current `SND.NXT`/`RCV.NXT`, and that ACK leaves like any other segment
//! of the flow: through the egress translation of [`crate::nft`], to the flow's current
//! tuple.
//!
//! The injected segment is a bare **SYN** (no ACK, no options, no data). RFC 5961 §4.2
//! (Linux since 3.6, `tcp_validate_incoming`): a SYN reaching a synchronized connection
//! is answered with a "challenge ACK", whatever its sequence number, and never processed
//! further. That is the property a kernel data plane needs, because it does not see the
//! connection's receive window:
//!
//! - the out-of-window ACK of the simulator (and of the MISSION probe, which forged it
//!   from a capture) elicits a duplicate ACK only if its sequence number really is
//!   outside the window (RFC 9293 §3.10.7.4). Without `RCV.NXT` (sock_diag's `tcp_info`
//!   does not carry it) a guessed number falls inside a large window now and then, and
//!   an in-window segment is *processed*: a zero-length one with an old acknowledgment
//!   number is absorbed silently (no ACK), one with a current acknowledgment number
//!   counts as a duplicate ACK at the *local* sender and can update its send window;
//! - a SYN is never taken for data or for an acknowledgment, in or out of the window.
//!
//! Both kinds share one per-socket rate limit (`net.ipv4.tcp_invalid_ratelimit`, 500 ms by
//! default, `last_oow_ack_time`): at most one elicited ACK per socket per 500 ms. What is
//! dropped by it shows as `TcpExtTCPACKSkippedChallenge`; what is sent as
//! `TcpExtTCPChallengeACK` (and `TcpExtTCPSYNChallenge`). The global challenge-ACK limit
//! (`net.ipv4.tcp_challenge_ack_limit`) is unlimited by default since Linux 6.0.
//!
//! The segment carries the firewall mark [`NUDGE_MARK`] (`SO_MARK` on the raw socket):
//! the egress chain of [`crate::nft`] lets marked packets through first, untranslated and
//! untracked (`notrack`). Without that, connection tracking would take the SYN either as
//! a reply of the flow's entry from before the move, if that is still there (a SYN inside
//! an established connection, which a firewall dropping INVALID packets may drop), or as
//! a new connection from the peer's original address (a SYN_SENT entry left behind for
//! two minutes; seen in `tests/nudge_ack.rs` when `notrack` is taken out). A host
//! firewall that filters input must accept untracked packets with that mark.
//!
//! # `fast_retransmit`
//!
//! The endpoint asks for enough duplicate ACKs to start the peer's fast retransmit (three,
//! RFC 5681 §3.2) when the outage was long. The kernel does not let anyone elicit more
//! than one ACK per socket per 500 ms (above), and changing the sysctl would weaken a
//! defence of every socket on the host (RFC 5961 §7), so the kernel data plane sends one
//! segment either way and says so in its counters. That is enough for a Linux peer: with
//! SACK and RACK-TLP one ACK restarts its recovery (the MISSION probe's 30 ms), while the
//! three-duplicate rule only matters to stacks without them (smoltcp in the simulator,
//! which is why the simulator's data plane forges four). A burst spread over 1.5 s would
//! arrive long after recovery started and only cost the peer spurious retransmissions.
//!
//! # Limits
//!
//! - TCP only: a nudge for a UDP tuple is refused ([`NudgeError::NotTcp`]).
//! - Sockets protected by TCP-MD5 or TCP-AO drop the unsigned segment: no ACK.
//! - If no socket has the original tuple any more (the flow just closed), the SYN may
//!   reach a listener on the local port; it answers with a SYN-ACK that the peer's stack
//!   refuses, and the request times out. Harmless, and only in that race.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use etherparse::PacketBuilder;
use roam_core::translate::{Protocol, Tuple};
use socket2::{Domain, SockAddr, Socket, Type};
use thiserror::Error;

/// The firewall mark (`SO_MARK`) of injected segments: ASCII "roam". The nftables table
/// of [`crate::nft`] lets marked packets through untranslated and untracked.
pub const NUDGE_MARK: u32 = 0x726f_616d;

/// Hop limit of injected segments: they cross loopback only.
const TTL: u8 = 64;

/// Why a nudge could not be sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NudgeError {
    #[error("opening a raw {family} socket (needs CAP_NET_RAW): {source}")]
    Open {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}: {source}", path = .path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("nudges are for TCP flows; {0} is not one")]
    NotTcp(Tuple),
    #[error("{0} mixes IPv4 and IPv6")]
    MixedFamilies(Tuple),
    #[error("no raw IPv6 socket (IPv6 unavailable when the nudger was opened) for {0}")]
    NoIpv6(Tuple),
    #[error("building the segment for {flow}: {reason}")]
    Build { flow: Tuple, reason: String },
    #[error("sending the nudge for {flow}: {source}")]
    Send {
        flow: Tuple,
        #[source]
        source: io::Error,
    },
}

/// Raw sockets that inject nudge segments into this host's (or a namespace's) stack.
#[derive(Debug)]
pub struct Nudger {
    raw: RawSockets,
    /// Sequence numbers of successive segments (any value works, see the module docs;
    /// varying it keeps two nudges from looking like one retransmitted segment in a
    /// capture).
    seq: AtomicU32,
}

impl Nudger {
    /// Opens the raw sockets in the caller's network namespace.
    pub fn open() -> Result<Nudger, NudgeError> {
        // The kernel does not check the source address of such packets, which is what
        // lets the segment claim to come from the peer.
        let raw = RawSockets::open(Some(NUDGE_MARK), "nudged").map_err(|source| NudgeError::Open {
            family: "IPv4",
            source,
        })?;
        Ok(Nudger {
            raw,
            seq: AtomicU32::new(0x5eed_0001),
        })
    }

    /// Opens the raw sockets in the network namespace at `netns` (e.g.
    /// `/var/run/netns/NAME`), or in the caller's with `None`. A socket belongs to the
    /// namespace it was created in, whichever thread uses it later.
    pub fn open_in(netns: Option<&Path>) -> Result<Nudger, NudgeError> {
        match netns {
            None => Nudger::open(),
            Some(path) => in_netns(path, Nudger::open).map_err(|source| NudgeError::Netns {
                path: path.to_owned(),
                source,
            })?,
        }
    }

    /// Injects one segment that makes the socket of `original` (a TCP flow's original
    /// tuple, from this host's point of view) send its current ACK. Rate-limited by the
    /// kernel to one answer per socket per 500 ms (see the module docs).
    pub fn nudge(&self, original: &Tuple) -> Result<(), NudgeError> {
        let seq = self.seq.fetch_add(0x0101_0101, Ordering::Relaxed);
        let pkt = segment(original, seq)?;
        let dst = canonical(original.local.ip());
        let sock = self.raw.to(dst).ok_or(NudgeError::NoIpv6(*original))?;
        // Raw sockets ignore the port, except that IPv6 wants 0 or the socket's protocol
        // (raw(7), ipv6(7)).
        let dst = SockAddr::from(SocketAddr::new(dst, 0));
        sock.send_to(&pkt, &dst).map_err(|source| NudgeError::Send {
            flow: *original,
            source,
        })?;
        tracing::debug!(flow = %original, "nudge injected");
        Ok(())
    }
}

/// The segment a nudge injects for `original`: a bare SYN from the original remote end to
/// the original local end, checksums filled in (etherparse). `seq` is arbitrary.
pub fn segment(original: &Tuple, seq: u32) -> Result<Vec<u8>, NudgeError> {
    if original.protocol != Protocol::Tcp {
        return Err(NudgeError::NotTcp(*original));
    }
    let builder = match (canonical(original.remote.ip()), canonical(original.local.ip())) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => PacketBuilder::ipv4(src.octets(), dst.octets(), TTL),
        (IpAddr::V6(src), IpAddr::V6(dst)) => PacketBuilder::ipv6(src.octets(), dst.octets(), TTL),
        _ => return Err(NudgeError::MixedFamilies(*original)),
    };
    // Window 0 and no options: the segment is never processed beyond the SYN check, and
    // nothing in it should look like an offer if it ever were.
    let b = builder
        .tcp(original.remote.port(), original.local.port(), seq, 0)
        .syn();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).map_err(|e| NudgeError::Build {
        flow: *original,
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) is IPv4 on
/// the wire.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Raw sockets that send whole IP packets, one per family (`IPPROTO_RAW` implies
/// `IP_HDRINCL` for IPv4, raw(7), and header inclusion for IPv6 too, raw(7)/ipv6(7)).
/// Send-only: an `IPPROTO_RAW` socket receives nothing (raw(7)). Used by the nudger
/// and by the TUN plane's egress.
#[derive(Debug)]
pub(crate) struct RawSockets {
    v4: Socket,
    /// `None` when IPv6 is disabled in the namespace.
    v6: Option<Socket>,
}

impl RawSockets {
    /// Opens both in the calling thread's network namespace, each packet marked with
    /// `mark` (`SO_MARK`) if given. Only the IPv4 socket is required; without the IPv6
    /// one, IPv6 flows will not be `what` (said once, in the log).
    pub(crate) fn open(mark: Option<u32>, what: &str) -> io::Result<RawSockets> {
        let open = |domain| -> io::Result<Socket> {
            let s = Socket::new(
                domain,
                Type::RAW,
                Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
            )?;
            if let Some(m) = mark {
                s.set_mark(m)?;
            }
            Ok(s)
        };
        let v4 = open(Domain::IPV4)?;
        let v6 = match open(Domain::IPV6) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no raw IPv6 socket: IPv6 flows will not be {what}");
                None
            }
        };
        Ok(RawSockets { v4, v6 })
    }

    /// The socket for packets to `dst`, if there is one for its family.
    pub(crate) fn to(&self, dst: IpAddr) -> Option<&Socket> {
        match dst {
            IpAddr::V4(_) => Some(&self.v4),
            IpAddr::V6(_) => self.v6.as_ref(),
        }
    }
}

/// Runs `f` on a short-lived thread that has entered the network namespace at `path`
/// (`setns(2)` changes the calling thread only). Sockets created by `f` stay in that
/// namespace; processes spawned by it start there.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns only reads the descriptor, which `ns` keeps open.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread in network namespace panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn tcp(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }

    #[test]
    fn the_segment_goes_from_the_original_remote_to_the_original_local_end() {
        for t in [
            tcp("10.0.1.10:40000", "10.0.3.11:5001"),
            tcp("[fd00::1]:40000", "[fd00::2]:5001"),
        ] {
            let pkt = segment(&t, 7).unwrap();
            let s = SlicedPacket::from_ip(&pkt).unwrap();
            let (src, dst): (IpAddr, IpAddr) = match s.net.unwrap() {
                NetSlice::Ipv4(v4) => (
                    v4.header().source_addr().into(),
                    v4.header().destination_addr().into(),
                ),
                NetSlice::Ipv6(v6) => (
                    v6.header().source_addr().into(),
                    v6.header().destination_addr().into(),
                ),
                _ => panic!(),
            };
            assert_eq!((src, dst), (t.remote.ip(), t.local.ip()));
            let Some(TransportSlice::Tcp(th)) = s.transport else {
                panic!()
            };
            assert_eq!((th.source_port(), th.destination_port()), (5001, 40000));
            assert!(th.syn() && !th.ack() && !th.rst() && !th.fin());
            assert!(th.payload().is_empty());
            assert_eq!(th.sequence_number(), 7);
            // The checksum etherparse wrote verifies.
            let hdr = th.to_header();
            let sum = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => hdr.calc_checksum_ipv4_raw(s.octets(), d.octets(), &[]),
                (IpAddr::V6(s), IpAddr::V6(d)) => hdr.calc_checksum_ipv6_raw(s.octets(), d.octets(), &[]),
                _ => panic!(),
            }
            .unwrap();
            assert_eq!(sum, th.checksum());
        }
    }

    #[test]
    fn udp_and_mixed_tuples_are_refused() {
        let u = Tuple::new(
            Protocol::Udp,
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
        );
        assert!(matches!(segment(&u, 0), Err(NudgeError::NotTcp(_))));
        let m = tcp("10.0.0.1:1", "[fd00::2]:2");
        assert!(matches!(segment(&m, 0), Err(NudgeError::MixedFamilies(_))));
    }

    #[test]
    fn v4_mapped_addresses_are_ipv4_on_the_wire() {
        let t = tcp("[::ffff:10.0.0.1]:1", "[::ffff:10.0.0.2]:2");
        let pkt = segment(&t, 0).unwrap();
        assert_eq!(pkt[0] >> 4, 4);
    }
}
