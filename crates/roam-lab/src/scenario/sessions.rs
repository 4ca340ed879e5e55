//! Sessions other than one bulk stream across a move (issue 5's CI list): a UDP flow, a
//! TCP connection that is idle while A moves and then carries data both ways, and a
//! connection opened after the move.
//!
//! Each session is reported as both applications saw it (the addresses their sockets
//! report, what arrived and in what order) and as roamd listed it, so a test can check
//! what the scenario claims: that translation kept the original address in front of the
//! applications, and that a connection opened after the move needs none.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{Run, StreamReport};
use crate::capture::{PacketFilter, Protocol};
use crate::netns::LabError;
use crate::traffic::{
    DATAGRAM_LEN, End, Refusals, TcpPair, TransferReport, UdpEcho, UdpPinger, datagrams_sha256,
};

/// Datagrams a second in the UDP scenario: steady enough that a gap of a few
/// milliseconds shows on the wire.
const UDP_RATE: u32 = 1000;
/// How long a flow runs before a move, and after it: past the 3 s the gap is measured
/// over, so that the end of the flow is not taken for a silence.
const BEFORE_MOVE: Duration = Duration::from_secs(1);
const AFTER_MOVE: Duration = Duration::from_secs(4);
/// How long A stays idle after its move before the idle connection is used again.
const IDLE_AFTER_MOVE: Duration = Duration::from_secs(2);
/// Bytes each way on a connection before a move: enough to show it in use.
const WARM_UP_BYTES: u64 = 100_000;
/// Bound on one transfer (a stalled connection, without roam, ends here).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(15);
/// Bound on roamd's status catching up with the kernel (it is written every second).
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// How roamd on one host listed a session's flow (from its status snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoamdFlow {
    pub host: String,
    /// The tuple as the host's sockets see it: (local, remote).
    pub original: (SocketAddr, SocketAddr),
    /// The tuple on the wire.
    pub current: (SocketAddr, SocketAddr),
    /// Completed moves of the flow (the host's and its peer's).
    pub moves: u64,
}

impl RoamdFlow {
    /// roamd rewrites this flow's packets: what is on the wire is not what the sockets
    /// see.
    pub fn translated(&self) -> bool {
        self.original != self.current
    }
}

/// Datagram counts of a UDP session: A sends numbered datagrams, B sends each back.
#[derive(Clone, Debug, Serialize)]
pub struct DatagramReport {
    pub rate_per_s: u32,
    pub size: usize,
    /// A->B: datagrams A's kernel took, those it refused (by error), those B received.
    pub a_sent: u64,
    pub a_refused: Refusals,
    pub b_received: u64,
    /// B->A, the echo: datagrams B's kernel took, those it refused, those A received.
    pub b_echoed: u64,
    pub b_refused: Refusals,
    pub a_received: u64,
    /// Taken by the sender's kernel and never received, each way.
    pub lost_a_to_b: u64,
    pub lost_b_to_a: u64,
    /// Datagrams whose round trip failed (refused or lost, either way), and when A sent
    /// the first and the last of them, in ms from the start of the move.
    pub failed_round_trips: u64,
    pub failed_sent_ms: Option<(f64, f64)>,
    /// Reordered or duplicated on arrival, each way.
    pub out_of_order_a_to_b: u64,
    pub out_of_order_b_to_a: u64,
    /// Datagrams A sent in the flow's last second, after the move was complete (the run
    /// goes on for 4 s after it), reached B, and their echoes reached A: the flow came
    /// back on the sockets of before the move and kept going.
    pub resumed_a_to_b: bool,
    pub resumed_b_to_a: bool,
}

/// One session, as the applications at both ends and roamd saw it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionReport {
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// A's end as A's own socket reports it (`getsockname`).
    pub a_local: SocketAddr,
    /// B's end as B's own socket reports it.
    pub b_local: SocketAddr,
    /// A as B's application saw it: the peer `accept` returned, or every distinct source
    /// `recvfrom` reported, in order of first appearance.
    pub b_saw: Vec<SocketAddr>,
    /// Opened after A's move rather than before it.
    pub opened_after_move: bool,
    /// The session's flow as roamd listed it on each host while the session was open
    /// (none without roamd).
    pub roamd: Vec<RoamdFlow>,
    pub datagrams: Option<DatagramReport>,
    /// What the scenario claims of this session and did not hold (empty: ok).
    pub problems: Vec<String>,
    pub ok: bool,
}

impl SessionReport {
    fn new(name: &str, protocol: &str, a_local: SocketAddr, b_local: SocketAddr) -> SessionReport {
        SessionReport {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            a_local,
            b_local,
            b_saw: Vec::new(),
            opened_after_move: false,
            roamd: Vec::new(),
            datagrams: None,
            problems: Vec::new(),
            ok: false,
        }
    }

    /// Records `claim` as a problem unless it holds.
    fn check(&mut self, holds: bool, claim: impl Into<String>) {
        if !holds {
            self.problems.push(claim.into());
        }
    }

    fn done(mut self) -> SessionReport {
        self.ok = self.problems.is_empty();
        self
    }
}

impl fmt::Display for SessionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let saw: Vec<String> = self.b_saw.iter().map(ToString::to_string).collect();
        writeln!(
            f,
            "  session {} ({}, opened {} the move): A's socket {} -> B's socket {}; B saw A as {}  {}",
            self.name,
            self.protocol,
            if self.opened_after_move { "after" } else { "before" },
            self.a_local,
            self.b_local,
            if saw.is_empty() {
                "nothing".into()
            } else {
                saw.join(", ")
            },
            if self.ok { "OK" } else { "BROKEN" }
        )?;
        for r in &self.roamd {
            write!(f, "      roamd {}: {} <-> {}", r.host, r.original.0, r.original.1)?;
            if r.translated() {
                write!(f, " on the wire as {} <-> {}", r.current.0, r.current.1)?;
            } else {
                write!(f, ", not translated")?;
            }
            writeln!(f, " ({} move(s))", r.moves)?;
        }
        if let Some(d) = &self.datagrams {
            let refused = |r: &Refusals| {
                if r.is_empty() {
                    String::new()
                } else {
                    let v: Vec<String> = r.iter().map(|(k, n)| format!("{n} {k}")).collect();
                    format!(" (refused: {})", v.join(", "))
                }
            };
            writeln!(
                f,
                "      datagrams ({} B at {}/s) a->b: sent {}{}, received {}, lost {}, out of order {}",
                d.size,
                d.rate_per_s,
                d.a_sent,
                refused(&d.a_refused),
                d.b_received,
                d.lost_a_to_b,
                d.out_of_order_a_to_b
            )?;
            writeln!(
                f,
                "      datagrams b->a (echo): sent {}{}, received {}, lost {}, out of order {}",
                d.b_echoed,
                refused(&d.b_refused),
                d.a_received,
                d.lost_b_to_a,
                d.out_of_order_b_to_a
            )?;
            let window = match d.failed_sent_ms {
                Some((first, last)) => format!(", sent from {first:+.1} to {last:+.1} ms of the move"),
                None => String::new(),
            };
            let yes = |b: bool| if b { "yes" } else { "NO" };
            writeln!(
                f,
                "      round trips that failed: {}{window}; resumed after the move: a->b {}, b->a {}",
                d.failed_round_trips,
                yes(d.resumed_a_to_b),
                yes(d.resumed_b_to_a)
            )?;
        }
        for p in &self.problems {
            writeln!(f, "      PROBLEM: {p}")?;
        }
        Ok(())
    }
}

fn parse_tuple(v: &serde_json::Value) -> Option<(SocketAddr, SocketAddr)> {
    Some((
        v["local"].as_str()?.parse().ok()?,
        v["remote"].as_str()?.parse().ok()?,
    ))
}

/// The flow roamd on `host` lists with this original tuple, from its last snapshot.
fn roamd_flow(
    run: &Run,
    host: &str,
    protocol: &str,
    original: (SocketAddr, SocketAddr),
) -> Option<RoamdFlow> {
    let status = run.roamds.status(host)?;
    status["flows"].as_array()?.iter().find_map(|f| {
        let o = parse_tuple(&f["original"])?;
        (f["original"]["protocol"] == protocol && o == original).then(|| RoamdFlow {
            host: host.to_owned(),
            original: o,
            current: parse_tuple(&f["current"]).unwrap_or(o),
            moves: f["moves"].as_u64().unwrap_or(0),
        })
    })
}

/// The flow as roamd on `host` lists it once `settled` holds of it (roamd lists sockets
/// every 200 ms and writes its status every second), or as it last listed it after
/// [`STATUS_WAIT`]; `None` if it never listed it, or roamd does not run.
fn roamd_view(
    run: &Run,
    host: &str,
    protocol: &str,
    original: (SocketAddr, SocketAddr),
    settled: impl Fn(&RoamdFlow) -> bool,
) -> Option<RoamdFlow> {
    if !run.options.roam {
        return None;
    }
    let deadline = Instant::now() + STATUS_WAIT;
    loop {
        let flow = roamd_flow(run, host, protocol, original);
        if flow.as_ref().is_some_and(&settled) || Instant::now() >= deadline {
            return flow;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both hosts' views of a session: A's socket `a` talking to B's socket `b`, which sees
/// A as `b_peer`.
fn roamd_views(
    run: &Run,
    protocol: &str,
    a: SocketAddr,
    b: SocketAddr,
    b_peer: SocketAddr,
    settled: impl Fn(&RoamdFlow) -> bool,
) -> Vec<RoamdFlow> {
    [("a", (a, b)), ("b", (b, b_peer))]
        .into_iter()
        .filter_map(|(host, original)| roamd_view(run, host, protocol, original, &settled))
        .collect()
}

/// A TCP connection as a session: both ends' sockets, how B saw A, roamd's view of it
/// once `settled` holds, and the claims every connection of these scenarios makes: A's
/// socket is at `a_address` (A's address when it connected), and B saw A there.
fn tcp_session(
    run: &Run,
    name: &str,
    pair: &TcpPair,
    a_address: IpAddr,
    settled: impl Fn(&RoamdFlow) -> bool,
) -> SessionReport {
    let mut s = SessionReport::new(name, "tcp", pair.client_local, pair.server_local);
    s.b_saw = vec![pair.server_peer];
    s.roamd = roamd_views(
        run,
        "tcp",
        pair.client_local,
        pair.server_local,
        pair.server_peer,
        settled,
    );
    s.check(
        pair.client_local.ip() == a_address,
        format!(
            "A's socket is at {}, not A's address {a_address}",
            pair.client_local
        ),
    );
    s.check(
        pair.server_peer == pair.client_local,
        format!("B saw A as {}, not as {}", pair.server_peer, pair.client_local),
    );
    s
}

/// One transfer on a pair, reported as a stream.
fn transfer(
    run: &mut Run,
    pair: &TcpPair,
    from: End,
    name: &str,
    bytes: u64,
    seed: u64,
) -> Result<(), LabError> {
    let t: TransferReport = pair.send(from, bytes, seed, TRANSFER_DEADLINE)?;
    run.streams.push(StreamReport {
        name: name.to_owned(),
        ok: t.intact(),
        bytes_sent: t.bytes_sent,
        bytes_received: t.bytes_received,
        sent_sha256: t.sent_sha256,
        received_sha256: t.received_sha256,
    });
    Ok(())
}

/// The move just made, as wall-clock times.
fn last_move(run: &Run) -> Result<(SystemTime, SystemTime), LabError> {
    run.moves
        .last()
        .map(|m| (m.started, m.routes_replaced))
        .ok_or_else(|| LabError::Invalid("no move was made".into()))
}

fn ms_since(t: SystemTime, since: SystemTime) -> f64 {
    match t.duration_since(since) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

/// A UDP flow across a move: A sends numbered datagrams at a steady rate on a connected
/// socket, B echoes each on a socket connected to A (the only kind of UDP socket that is
/// a flow: sock_diag lists connected sockets as ESTABLISHED, and roamd moves those).
/// Neither socket is touched across the move. B must keep seeing A's original address
/// (translation, not the application, carries the move), and the flow must resume both
/// ways; datagrams may be lost while the path changes, but every one that arrives must
/// be whole and arrive once. Reordering is counted and reported, not a failure: UDP
/// promises no order, and a datagram still crossing the old path can land after one
/// sent on the new path (seen once in the lab under load, IPv6).
pub(super) fn udp_move(run: &mut Run) -> Result<(), LabError> {
    let listen = SocketAddr::new(run.topology.b_address(run.family()), 5101);
    let a_before = run.topology.a_address(run.family());
    let seed = run.options.seed;
    let deadline = BEFORE_MOVE + AFTER_MOVE + Duration::from_secs(30);
    let echo = UdpEcho::start(run.b(), listen, deadline)?;
    let pinger = UdpPinger::start(run.a(), listen, UDP_RATE, seed, deadline)?;
    run.measured_filter = Some(PacketFilter::to(Protocol::Udp, listen));
    let flowing = run.wait_sessions().and_then(|()| {
        std::thread::sleep(BEFORE_MOVE);
        run.move_a()?;
        std::thread::sleep(AFTER_MOVE);
        Ok(())
    });
    // roamd's view while both sockets are still open (settled: the move applied).
    let a_local = pinger.local_addr();
    let roamd = roamd_views(run, "udp", a_local, listen, a_local, |f| f.moves > 0);
    let sent = pinger.stop()?;
    let got = echo.stop()?;
    flowing?;
    let (move_started, move_done) = last_move(run)?;

    // Which datagrams made it where. A datagram is numbered by A; B echoes what it got.
    let b_got: BTreeSet<u64> = got.arrivals.seqs.iter().copied().collect();
    let a_got: BTreeSet<u64> = sent.echoes.seqs.iter().copied().collect();
    let a_refused: BTreeSet<u64> = sent.refused_seqs.iter().copied().collect();
    let b_refused: BTreeSet<u64> = got.refused_seqs.iter().copied().collect();
    let lost_a_to_b = (0..sent.numbered())
        .filter(|s| !a_refused.contains(s) && !b_got.contains(s))
        .count() as u64;
    let lost_b_to_a = b_got
        .iter()
        .filter(|s| !b_refused.contains(s) && !a_got.contains(s))
        .count() as u64;
    let failed: Vec<SystemTime> = (0..sent.numbered())
        .filter(|s| !a_got.contains(s))
        .filter_map(|s| sent.sent_at.get(s as usize).copied())
        .collect();
    // Resumed: datagrams sent in the flow's last second (3 s after the move or later)
    // arrived, so the flow came back on the old sockets and kept going.
    let late = sent
        .sent_at
        .last()
        .and_then(|t| t.checked_sub(Duration::from_secs(1)))
        .map_or(move_done, |t| t.max(move_done));
    let after_move = |s: &u64| sent.sent_at.get(*s as usize).is_some_and(|t| *t > late);
    let datagrams = DatagramReport {
        rate_per_s: UDP_RATE,
        size: DATAGRAM_LEN,
        a_sent: sent.sent,
        a_refused: sent.refused.clone(),
        b_received: got.arrivals.datagrams,
        b_echoed: got.echoed,
        b_refused: got.refused.clone(),
        a_received: sent.echoes.datagrams,
        lost_a_to_b,
        lost_b_to_a,
        failed_round_trips: failed.len() as u64,
        failed_sent_ms: failed
            .first()
            .zip(failed.last())
            .map(|(a, b)| (ms_since(*a, move_started), ms_since(*b, move_started))),
        out_of_order_a_to_b: got.arrivals.out_of_order,
        out_of_order_b_to_a: sent.echoes.out_of_order,
        resumed_a_to_b: b_got.iter().any(after_move),
        resumed_b_to_a: a_got.iter().any(after_move),
    };

    let a_to_b_intact = got.arrivals.whole_once(seed);
    let b_to_a_intact = sent.echoes.whole_once(seed);
    run.streams.push(StreamReport {
        name: "udp a->b (the datagrams that arrived)".into(),
        bytes_sent: sent.sent * DATAGRAM_LEN as u64,
        bytes_received: got.arrivals.bytes,
        // What was sent under the numbers that arrived, in arrival order: equal to
        // what arrived exactly when each arrived whole.
        sent_sha256: datagrams_sha256(seed, got.arrivals.seqs.iter().copied()),
        received_sha256: got.arrivals.sha256.clone(),
        ok: a_to_b_intact && datagrams.resumed_a_to_b,
    });
    run.streams.push(StreamReport {
        name: "udp b->a, the echo (the datagrams that arrived)".into(),
        bytes_sent: got.echoed * DATAGRAM_LEN as u64,
        bytes_received: sent.echoes.bytes,
        sent_sha256: datagrams_sha256(seed, sent.echoes.seqs.iter().copied()),
        received_sha256: sent.echoes.sha256.clone(),
        ok: b_to_a_intact && datagrams.resumed_b_to_a,
    });

    let mut s = SessionReport::new("udp a<->b", "udp", a_local, got.local);
    s.b_saw = got.peers.clone();
    s.roamd = roamd;
    s.check(
        a_local.ip() == a_before,
        format!(
            "A's socket took {} at connect, not A's address {a_before}",
            a_local.ip()
        ),
    );
    s.check(
        sent.local_at_end == a_local,
        format!("A's socket ended at {}, not {a_local}", sent.local_at_end),
    );
    s.check(
        got.peers == [a_local],
        format!("B saw A as {:?}, not only as {a_local}", got.peers),
    );
    s.check(
        datagrams.resumed_a_to_b,
        "no datagram sent in the flow's last second, after the move, reached B",
    );
    s.check(
        datagrams.resumed_b_to_a,
        "no echo of a datagram sent in the flow's last second, after the move, reached A",
    );
    s.check(a_to_b_intact, "what B received is not whole, or came twice");
    s.check(b_to_a_intact, "what A received back is not whole, or came twice");
    s.datagrams = Some(datagrams);
    run.sessions.push(s.done());
    Ok(())
}

/// A TCP connection idle while A moves: some bytes both ways, quiet, the move, two more
/// seconds of quiet, then data B->A (B's translation toward A's new address, with no
/// packet from A since the move) and A->B, each with SHA-256 at both ends, and an
/// orderly close.
pub(super) fn idle_move(run: &mut Run) -> Result<(), LabError> {
    let listen = SocketAddr::new(run.topology.b_address(run.family()), 5102);
    let seed = run.options.seed;
    let pair = TcpPair::open(run.a(), run.b(), listen, Duration::from_secs(10))?;
    transfer(
        run,
        &pair,
        End::Client,
        "a->b before the move",
        WARM_UP_BYTES,
        seed + 1,
    )?;
    transfer(
        run,
        &pair,
        End::Server,
        "b->a before the move",
        WARM_UP_BYTES,
        seed + 2,
    )?;
    run.wait_sessions()?;
    // Quiet: every ACK is back, nothing in flight at the move.
    std::thread::sleep(Duration::from_millis(500));
    let a_before = run.topology.a_address(run.family());
    run.move_a()?;
    std::thread::sleep(IDLE_AFTER_MOVE);
    let bytes = (run.options.bytes / 10).max(1);
    transfer(
        run,
        &pair,
        End::Server,
        "b->a after the idle move",
        bytes,
        seed + 3,
    )?;
    transfer(
        run,
        &pair,
        End::Client,
        "a->b after the idle move",
        bytes,
        seed + 4,
    )?;

    let mut s = tcp_session(run, "idle tcp", &pair, a_before, |f| f.moves > 0);
    s.check(
        pair.close(Duration::from_secs(5))?,
        "the connection did not close in order (FIN both ways)",
    );
    run.sessions.push(s.done());
    Ok(())
}

/// After a move, with roamd translating a moved connection, a new connection from A to
/// B: the kernel picks A's new address for it (the old one is kept on `lo` deprecated,
/// for the sockets that already use it), so B sees A's new address, and roamd lists the
/// flow untranslated, on both hosts. The moved connection keeps working beside it.
pub(super) fn new_connection(run: &mut Run) -> Result<(), LabError> {
    let (old_listen, new_listen) = {
        let b = run.topology.b_address(run.family());
        (SocketAddr::new(b, 5103), SocketAddr::new(b, 5104))
    };
    let seed = run.options.seed;
    let moved = TcpPair::open(run.a(), run.b(), old_listen, Duration::from_secs(10))?;
    transfer(
        run,
        &moved,
        End::Client,
        "moved: a->b before the move",
        WARM_UP_BYTES,
        seed + 1,
    )?;
    run.wait_sessions()?;
    let a_before = run.topology.a_address(run.family());
    run.move_a()?;
    let a_after: IpAddr = run.topology.a_address(run.family());
    // Waits (bounded) until roamd translates the moved connection at both ends: the new
    // connection opens while translation is active.
    let mut m = tcp_session(run, "moved tcp", &moved, a_before, RoamdFlow::translated);
    let bytes = (run.options.bytes / 10).max(1);
    transfer(
        run,
        &moved,
        End::Server,
        "moved: b->a after the move",
        WARM_UP_BYTES,
        seed + 2,
    )?;

    let fresh = TcpPair::open(run.a(), run.b(), new_listen, Duration::from_secs(10))?;
    transfer(run, &fresh, End::Client, "new: a->b", bytes, seed + 3)?;
    transfer(run, &fresh, End::Server, "new: b->a", bytes, seed + 4)?;
    // The moved connection still carries data with the new one beside it.
    transfer(
        run,
        &moved,
        End::Client,
        "moved: a->b after the move",
        bytes,
        seed + 5,
    )?;

    // Settled: listed at all (a flow is listed untranslated from the start). The kernel
    // gave the new socket A's new address.
    let mut n = tcp_session(run, "new tcp", &fresh, a_after, |_| true);
    n.opened_after_move = true;
    if run.options.roam {
        for host in ["a", "b"] {
            match n.roamd.iter().find(|f| f.host == host) {
                None => n
                    .problems
                    .push(format!("roamd on {host} never listed the new connection")),
                Some(f) => n.check(
                    !f.translated() && f.moves == 0,
                    format!(
                        "roamd on {host} translates the new connection ({} <-> {} on the wire, {} move(s))",
                        f.current.0, f.current.1, f.moves
                    ),
                ),
            }
        }
    }
    m.check(
        moved.close(Duration::from_secs(5))?,
        "the moved connection did not close in order (FIN both ways)",
    );
    n.check(
        fresh.close(Duration::from_secs(5))?,
        "the new connection did not close in order (FIN both ways)",
    );
    run.sessions.push(m.done());
    run.sessions.push(n.done());
    Ok(())
}
