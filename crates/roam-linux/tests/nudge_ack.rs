//! A nudge makes the local TCP stack send its current ACK for a flow at once, and the
//! ACK leaves through the egress translation (IPv4 and IPv6, from the mover's side and
//! from the peer's, whose local port is also a listening one).

mod common_nft;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common_nft::*;
use roam_core::translate::{Protocol, Tuple};
use roam_core::{DataPlane, DataPlaneCommand};
use roam_linux::nft::NftDataPlane;

/// Nudges `original` through `plane` and returns the ACK seen leaving on `capture` from
/// `wire_src` to `wire_dst` (a bare ACK: no data, no SYN).
fn nudge_and_see_ack(
    plane: &mut NftDataPlane,
    capture: &Capture,
    original: Tuple,
    wire_src: SocketAddr,
    wire_dst: SocketAddr,
    fast_retransmit: bool,
) -> Option<String> {
    capture.clear();
    plane
        .apply(&DataPlaneCommand::Nudge {
            original,
            fast_retransmit,
        })
        .unwrap();
    capture
        .find(Duration::from_millis(400), |f| {
            tcp_segment(f).is_some_and(|(s, d, _, _)| s == wire_src && d == wire_dst)
        })
        .map(|f| {
            let (_, _, flags, len) = tcp_segment(&f).unwrap();
            assert_eq!(len, 0, "a bare ACK");
            flags
        })
}

/// The original direction (source, destination) of every TCP conntrack entry.
fn conntrack(ns: &Netns) -> Vec<(SocketAddr, SocketAddr)> {
    let table = ns.exec("cat", &["/proc/net/nf_conntrack"]).unwrap();
    table
        .lines()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .map(str::to_owned)
            };
            let ip = |k| field(k)?.parse::<std::net::IpAddr>().ok();
            let port = |k| field(k)?.parse::<u16>().ok();
            Some((
                SocketAddr::new(ip("src=")?, port("sport=")?),
                SocketAddr::new(ip("dst=")?, port("dport=")?),
            ))
        })
        .collect()
}

fn nudges_elicit_acks(a: Addrs) {
    if !netns_available() {
        return;
    }
    let TwoPlanes { lab, mut px, mut py } = TwoPlanes::open(a, |ns, _| ns.plane());
    let (from, to) = (sa(a.x1, 40000), sa(a.y, 5001));
    let (_xs, _ys) = idle_connection(&lab, from, to);
    lab.move_x();
    lab.cut_old_path();
    let original = tuple(Protocol::Tcp, from, to);
    let current = tuple(Protocol::Tcp, sa(a.x2, 40000), to);
    install_move(&mut px, &mut py, original, current, false);
    // Connection tracking in use on X from now on (a firewall would), to see that
    // nudges leave no conntrack entry behind (the flow's entry from before the move
    // would absorb them as replies, so it starts after the move).
    let ct = std::env::temp_dir().join(format!("{}-ct.nft", lab.x.name));
    std::fs::write(
        &ct,
        "table inet fw {\n chain o { type filter hook output priority 0; ct state new counter; }\n}\n",
    )
    .unwrap();
    lab.x.exec("nft", &["-f", ct.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&ct);
    let cap_x = Capture::open(&lab.x, &lab.x_if);
    let cap_y = Capture::open(&lab.y, &lab.y_if);
    // Idle: nothing on the wire for the flow unless elicited.
    assert!(
        cap_x
            .find(Duration::from_millis(200), |f| tcp_segment(f).is_some())
            .is_none(),
        "the connection is not idle"
    );

    let challenge_x = lab.x.mib("TcpExt", "TCPChallengeACK");
    let flags = nudge_and_see_ack(&mut px, &cap_x, original, current.local, current.remote, false)
        .expect("X's stack answered the nudge with an ACK, translated to x2");
    assert_eq!(flags, "A");
    assert_eq!(lab.x.mib("TcpExt", "TCPChallengeACK"), challenge_x + 1);

    // A second one within 500 ms is rate-limited by the kernel (tcp_invalid_ratelimit):
    // one segment is sent, one ACK at most comes back (see roam_linux::nudge).
    let skipped = lab.x.mib("TcpExt", "TCPACKSkippedChallenge");
    assert!(nudge_and_see_ack(&mut px, &cap_x, original, current.local, current.remote, true).is_none());
    assert_eq!(lab.x.mib("TcpExt", "TCPACKSkippedChallenge"), skipped + 1);
    let c = px.counters().unwrap();
    assert_eq!((c.nudges, c.fast_retransmit_as_single, c.nudge_errors), (2, 1, 0));
    // The injected segments (y:5001 -> x1:40000) were not tracked.
    let tracked = conntrack(&lab.x);
    assert!(tracked.contains(&(sa(a.x2, 40000), sa(a.y, 5001))), "{tracked:?}");
    assert!(
        !tracked.contains(&(sa(a.y, 5001), sa(a.x1, 40000))),
        "a nudge left a conntrack entry: {tracked:?}"
    );

    // The peer's side: its local port is a listening one too, the SYN still reaches the
    // established socket, and the ACK goes to X's new address.
    let y_original = original.reversed();
    let flags = nudge_and_see_ack(&mut py, &cap_y, y_original, current.remote, current.local, false)
        .expect("Y's stack answered the nudge, translated to x2");
    assert_eq!(flags, "A");
    // No new connection was started on Y's listener by the SYN.
    assert_eq!(lab.y.mib("TcpExt", "TCPChallengeACK"), 1);

    // A UDP flow cannot be nudged: counted, nothing else.
    let u = tuple(Protocol::Udp, from, to);
    px.apply(&DataPlaneCommand::Nudge {
        original: u,
        fast_retransmit: false,
    })
    .unwrap();
    assert_eq!(px.counters().unwrap().nudge_errors, 1);
    // A resend of a translated TCP flow arms a retransmission kick (tests/nft_kick.rs);
    // one of a flow without an entry is counted and ignored.
    px.apply(&DataPlaneCommand::Resend { original }).unwrap();
    px.apply(&DataPlaneCommand::Resend { original: u }).unwrap();
    let c = px.counters().unwrap();
    assert_eq!((c.kicks_armed, c.resends_ignored), (1, 1));
}

#[test]
fn a_nudge_elicits_an_ack_over_ipv4() {
    nudges_elicit_acks(V4);
}

#[test]
fn a_nudge_elicits_an_ack_over_ipv6() {
    nudges_elicit_acks(V6);
}
