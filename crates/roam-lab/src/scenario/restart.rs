//! roamd restarting under a moved session (issue 6): its translation entries and its
//! peers outlive the process. A bulk stream A->B moves with A to subnet 2; then one
//! host's roamd goes away (SIGKILL, or SIGTERM and an upgraded binary at a new path)
//! and comes back a second later with the same configuration and state file; then A
//! moves back to subnet 1, which works only if the restarted roamd knows the flow again:
//! its original and current tuples, and the peer to tell.
//!
//! Checked beyond the stream's digest: the kernel kept translating while roamd was down
//! (new payload kept reaching B's link; the longest silence while it was down, and
//! across its restart, is reported), the restarted roamd lists the moved flow with the tuples it had before,
//! it knows its peer again, and the peer completed a new handshake with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::adversary::translation_entries;
use super::measure::sleep_until_instant;
use super::{RoamdFlow, Run, check, end_stream};
use crate::capture::{Capture, NewPayload, PacketFilter, PacketRecord, Protocol};
use crate::netns::{LabError, Ns};
use crate::traffic::{TcpSink, TcpSource};

/// The stream flows this long before A moves.
const WARM_UP: Duration = Duration::from_secs(1);
/// From the move to roamd's stop: the move's own gap is measured over the 3 s after
/// it, and the stop must not fall into that window.
const SETTLE: Duration = Duration::from_secs(3);
/// How long roamd stays down.
const DOWN: Duration = Duration::from_secs(1);
/// From the restart to A's move back: time to re-handshake, and more than the 3 s
/// before a move that its gap is measured over, so that a silence at the restart is not
/// taken for the move's.
const AFTER_RESTART: Duration = Duration::from_millis(3500);
/// From the move back to the end of the stream: the move's gap window.
const AFTER_MOVE: Duration = Duration::from_secs(3);
/// The windows the stream is judged over at the stop and at the restart begin this long
/// before them.
const LEAD: Duration = Duration::from_millis(500);
/// Bound on roamd's status reaching an expected state (it is written every second).
const STATUS_WAIT: Duration = Duration::from_secs(10);
/// Bound on roamd exiting after SIGTERM (it kills past that, as a service manager does).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// How roamd goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: a crash, or the OOM killer; roamd runs no code on its way out.
    Kill,
    /// SIGTERM: a service manager's stop; roamd exits cleanly.
    Term,
}

/// One restart scenario.
struct Plan {
    /// Whose roamd restarts.
    host: &'static str,
    stop: Stop,
    /// Start it again from a copy of the executable at another path.
    upgrade: bool,
    port: u16,
}

pub(super) fn restart_kill9(run: &mut Run) -> Result<(), LabError> {
    across_restart(
        run,
        &Plan {
            host: "a",
            stop: Stop::Kill,
            upgrade: false,
            port: 5401,
        },
    )
}

pub(super) fn upgrade(run: &mut Run) -> Result<(), LabError> {
    across_restart(
        run,
        &Plan {
            host: "a",
            stop: Stop::Term,
            upgrade: true,
            port: 5402,
        },
    )
}

pub(super) fn restart_b(run: &mut Run) -> Result<(), LabError> {
    across_restart(
        run,
        &Plan {
            host: "b",
            stop: Stop::Kill,
            upgrade: false,
            port: 5403,
        },
    )
}

impl Run {
    /// Sends roamd on `host` `signal` and waits up to `within` for it to exit, killing
    /// it past that; its exit status, `None` if it had to be killed. It is no longer
    /// this run's roamd on `host` either way.
    fn kill_roamd(
        &mut self,
        host: &str,
        signal: libc::c_int,
        within: Duration,
    ) -> Result<Option<ExitStatus>, LabError> {
        let child = self.roamds.child(host)?;
        crate::sys::signal(child.pid(), signal)
            .map_err(|e| LabError::io(format!("signalling roamd on {host}"), e))?;
        let status = child.wait_timeout(within)?;
        if status.is_none() {
            child.kill();
        }
        self.roamds.forget(host);
        Ok(status)
    }

    /// Starts roamd on `host` again from `binary`, with the configuration, status file
    /// and state file it had; the earlier run's log is kept beside the new one as
    /// `roamd-before-restart.log`. When it was started.
    fn restart_roamd(&mut self, host: &str, binary: &Path) -> Result<SystemTime, LabError> {
        let dir = self.dir.join(host);
        std::fs::rename(dir.join("roamd.log"), dir.join("roamd-before-restart.log"))
            .map_err(|e| LabError::io(format!("keeping roamd's log on {host}"), e))?;
        let at = SystemTime::now();
        self.spawn_roamd_from(host, binary)?;
        Ok(at)
    }

    /// A copy of the roam executable at a new path in the run's directory: what a
    /// package upgrade leaves, a new binary that the running roamd did not start from.
    fn upgraded_binary(&self) -> Result<PathBuf, LabError> {
        let dir = self.dir.join("upgrade");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let copy = dir.join("roam");
        // fs::copy keeps the permission bits: the copy is executable.
        std::fs::copy(&self.options.roam_binary, &copy).map_err(|e| {
            LabError::io(
                format!(
                    "copying {} to {}",
                    self.options.roam_binary.display(),
                    copy.display()
                ),
                e,
            )
        })?;
        Ok(copy)
    }

    fn ns(&self, host: &str) -> &Ns {
        if host == "a" { self.a() } else { self.b() }
    }
}

/// The stream, the steps around it, and the stream's report whatever the steps did.
fn across_restart(run: &mut Run, plan: &Plan) -> Result<(), LabError> {
    if !run.options.roam {
        return Err(LabError::Invalid(format!(
            "the {} scenario restarts roamd: it needs roam on",
            run.name
        )));
    }
    let listen = SocketAddr::new(run.topology.b_address(run.family()), plan.port);
    let length = WARM_UP + SETTLE + DOWN + AFTER_RESTART + AFTER_MOVE;
    let deadline = length + Duration::from_secs(30);
    let sink = TcpSink::start(run.b(), listen, deadline)?;
    // Sends until stopped: the stream's length is a time (it must outlast the steps),
    // not a size.
    let source = TcpSource::start(run.a(), listen, u64::MAX, run.options.seed, deadline)?;
    run.measured = Some(listen);
    let steps = steps(run, plan, listen);
    let ended = end_stream(run, sink, source);
    steps.and(ended)
}

fn steps(run: &mut Run, plan: &Plan, listen: SocketAddr) -> Result<(), LabError> {
    let host = plan.host;
    let other = if host == "a" { "b" } else { "a" };
    let upper = host.to_uppercase();
    let nftables = run.options.data_plane == "nftables";
    run.wait_sessions()?;
    std::thread::sleep(WARM_UP);
    run.move_a()?;
    let moved = Instant::now();
    let move_started = run.moves.last().map_or_else(SystemTime::now, |m| m.started);

    // Both ends translate the stream before its roamd goes.
    let mut before = Vec::new();
    for h in [host, other] {
        before.push(run.roamds.wait_status_since(h, move_started, STATUS_WAIT, |s| {
            stream_flow(s, h, listen).is_some_and(|f| f.translated())
        })?);
    }
    let flow_before = stream_flow(&before[0], host, listen)
        .ok_or_else(|| LabError::Invalid(format!("roamd on {host} lost the stream's flow")))?;
    let handshakes_before = counter(&before[1], "handshakes_completed");

    sleep_until_instant(moved + SETTLE);
    // The copy is made before the stop: the time roamd is down is the restart's alone.
    let binary = if plan.upgrade {
        run.upgraded_binary()?
    } else {
        run.options.roam_binary.clone()
    };
    let down = Instant::now();
    let down_at = SystemTime::now();
    match plan.stop {
        Stop::Kill => {
            let status = run.kill_roamd(host, libc::SIGKILL, STOP_WAIT)?;
            run.notes.push(format!(
                "roamd on {upper} was killed (SIGKILL) {:.3} s into the run, {:.1} s after the move",
                since_start(run, down_at),
                (down - moved).as_secs_f64()
            ));
            if status.is_none() {
                return Err(LabError::Invalid(format!(
                    "roamd on {host} did not die on SIGKILL"
                )));
            }
        }
        Stop::Term => {
            let status = run.kill_roamd(host, libc::SIGTERM, STOP_WAIT)?;
            let observed = match status {
                Some(s) => format!("{s} after {:.0} ms", down.elapsed().as_secs_f64() * 1e3),
                None => format!("still running after {STOP_WAIT:?}, killed"),
            };
            check(
                run,
                format!("roamd on {upper} stops on SIGTERM"),
                format!("exit status 0 within {STOP_WAIT:?}"),
                observed,
                status.is_some_and(|s| s.success()),
            );
        }
    }
    if nftables {
        // The entries a clean stop must leave (a kill leaves everything): what keeps the
        // stream going while no roamd runs.
        let entries = translation_entries(run.ns(host), &run.options.data_plane)?;
        check(
            run,
            format!("translation entries in {upper}'s kernel while its roamd is down"),
            "at least 1 (the stream's)",
            entries,
            entries >= 1,
        );
    }

    sleep_until_instant(down + DOWN);
    let restarted = Instant::now();
    let restarted_at = run.restart_roamd(host, &binary)?;
    if plan.upgrade {
        run.notes.push(format!(
            "roamd on {upper} was started again from {}",
            binary.display()
        ));
    }
    let restored = run
        .roamds
        .wait_status(host, STATUS_WAIT, |s| {
            stream_flow(s, host, listen).is_some_and(|f| f.translated()) && peer_flows(s) >= 1
        })
        .or_else(|e| {
            run.notes.push(format!("after the restart: {e}"));
            run.roamds.status(host).ok_or(e)
        });
    check_restored(run, plan, &flow_before, restored.as_ref().ok(), listen);

    // The peer's roamd saw the restarted one handshake again (it holds no session
    // the new process could use).
    let rehandshake = run
        .roamds
        .wait_status_since(other, restarted_at, STATUS_WAIT, |s| {
            counter(s, "handshakes_completed") > handshakes_before
        });
    let observed = match &rehandshake {
        Ok(s) => format!("{} completed", counter(s, "handshakes_completed")),
        Err(e) => format!(
            "{} completed ({e})",
            run.roamds
                .status(other)
                .map_or(0, |s| counter(&s, "handshakes_completed"))
        ),
    };
    check(
        run,
        format!(
            "{}'s roamd completes a new handshake with {upper}'s restarted roamd",
            other.to_uppercase()
        ),
        format!("more than the {handshakes_before} before the restart"),
        observed,
        rehandshake.is_ok(),
    );

    sleep_until_instant(restarted + AFTER_RESTART);
    let records = run.capture.as_ref().map(Capture::records).unwrap_or_default();
    let filter = PacketFilter::to(Protocol::Tcp, listen);
    let while_down = stall(&records, &filter, down_at - LEAD, restarted_at);
    // Ends LEAD before the records do: the silence across its end is seen to its end.
    let across_restart = stall(
        &records,
        &filter,
        restarted_at - LEAD,
        restarted_at + AFTER_RESTART - LEAD,
    );
    if nftables {
        let what = match plan.stop {
            Stop::Kill => format!("the stream while {upper}'s roamd is down (killed)"),
            Stop::Term => format!("the stream while {upper}'s roamd is down (stopped)"),
        };
        let observed = while_down.describe(run);
        check(
            run,
            what,
            "it keeps flowing: the kernel keeps translating",
            observed,
            while_down.flowing(),
        );
    } else {
        // The TUN plane's translation is roamd's own work: the stream waits for it.
        run.notes.push(format!(
            "the stream while {upper}'s roamd was down ({} data plane, which translates in roamd): {}",
            run.options.data_plane,
            while_down.describe(run)
        ));
    }
    let observed = across_restart.describe(run);
    check(
        run,
        format!("the stream across the restart of {upper}'s roamd"),
        if nftables {
            "it keeps flowing: the entries are reinstalled with the table"
        } else {
            "it flows again: the restarted roamd translates the restored entries"
        },
        observed,
        across_restart.flowing(),
    );

    // The move back needs the restarted roamd's knowledge of the flow: A's roamd must
    // tell B where the flow went; B's must apply it to the entry it restored.
    run.move_a()?;
    let back = Instant::now();
    let back_started = run.moves.last().map_or_else(SystemTime::now, |m| m.started);
    let a_now = run.topology.a_address(run.family());
    for h in ["a", "b"] {
        let on_a = |f: &RoamdFlow| {
            if h == "a" {
                f.current.0.ip() == a_now
            } else {
                f.current.1.ip() == a_now
            }
        };
        let settled = run.roamds.wait_status_since(h, back_started, STATUS_WAIT, |s| {
            stream_flow(s, h, listen).is_some_and(|f| on_a(&f))
        });
        let observed = match &settled {
            Ok(s) => stream_flow(s, h, listen).map_or_else(|| "no flow".into(), |f| describe_flow(&f)),
            Err(e) => {
                let last = run.roamds.status(h).and_then(|s| stream_flow(&s, h, listen));
                format!(
                    "{} ({e})",
                    last.map_or_else(|| "no flow".into(), |f| describe_flow(&f))
                )
            }
        };
        check(
            run,
            format!("{}'s roamd after A's move back", h.to_uppercase()),
            format!("the stream on the wire with A at {a_now}"),
            observed,
            settled.is_ok(),
        );
    }
    sleep_until_instant(back + AFTER_MOVE);
    Ok(())
}

/// What the restarted roamd knows: the moved flow with the tuples it had before, how
/// many flows it lists as moved, and its peer.
fn check_restored(
    run: &mut Run,
    plan: &Plan,
    before: &RoamdFlow,
    status: Option<&Value>,
    listen: SocketAddr,
) {
    let upper = plan.host.to_uppercase();
    let flow = status.and_then(|s| stream_flow(s, plan.host, listen));
    check(
        run,
        format!("the stream's flow as {upper}'s restarted roamd lists it"),
        describe_flow(before),
        flow.as_ref().map_or_else(|| "not listed".into(), describe_flow),
        flow.is_some_and(|f| f.original == before.original && f.current == before.current),
    );
    let moved = status.map_or(0, |s| {
        s["flows"]
            .as_array()
            .map_or(0, |f| f.iter().filter(|f| f["original"] != f["current"]).count())
    });
    check(
        run,
        format!("flows {upper}'s restarted roamd restored as moved"),
        "at least 1 (the stream's)",
        moved,
        moved >= 1,
    );
    let peers: Vec<String> = status
        .and_then(|s| s["peers"].as_array())
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} ({} flow(s))",
                p["name"].as_str().or(p["node"].as_str()).unwrap_or("?"),
                p["flows"]
            )
        })
        .collect();
    check(
        run,
        format!("{upper}'s restarted roamd knows its peer again"),
        "the peer, with the stream's flow",
        if peers.is_empty() {
            "no peer".into()
        } else {
            peers.join(", ")
        },
        status.is_some_and(|s| peer_flows(s) >= 1),
    );
}

/// The stream's flow as roamd on `host` lists it in `status`: TCP, with B's end at
/// `listen` (A's remote, B's local).
fn stream_flow(status: &Value, host: &str, listen: SocketAddr) -> Option<RoamdFlow> {
    let tuple = |t: &Value| -> Option<(SocketAddr, SocketAddr)> {
        Some((
            t["local"].as_str()?.parse().ok()?,
            t["remote"].as_str()?.parse().ok()?,
        ))
    };
    status["flows"].as_array()?.iter().find_map(|f| {
        let original = tuple(&f["original"])?;
        let b_end = if host == "a" { original.1 } else { original.0 };
        (f["original"]["protocol"] == "tcp" && b_end == listen).then(|| RoamdFlow {
            host: host.to_owned(),
            original,
            current: tuple(&f["current"]).unwrap_or(original),
            moves: f["moves"].as_u64().unwrap_or(0),
        })
    })
}

/// The most flows roamd shares with any one peer.
fn peer_flows(status: &Value) -> u64 {
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["flows"].as_u64())
        .max()
        .unwrap_or(0)
}

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

fn describe_flow(f: &RoamdFlow) -> String {
    if f.translated() {
        format!(
            "{} <-> {} on the wire as {} <-> {}",
            f.original.0, f.original.1, f.current.0, f.current.1
        )
    } else {
        format!("{} <-> {}, not translated", f.original.0, f.original.1)
    }
}

/// How a stream went over a window, from what reached B's link: new payload only (TCP
/// sequence space not seen before), so that retransmissions of a stream that no longer
/// moves do not pass for it flowing.
struct Stall {
    from: SystemTime,
    to: SystemTime,
    /// The longest time without new payload that overlaps the window (from its start
    /// on), and where it lay: the silence across the window's end lasts until the next
    /// new payload, however late.
    longest: Duration,
    silent_from: SystemTime,
    silent_to: SystemTime,
    /// New payload came after the longest silence. When none came after the window
    /// (until the end of `records`), the silence since the last is the longest, and the
    /// stream is not flowing.
    recovered: bool,
    /// New payload within the window.
    new_bytes: u64,
}

/// The stream to `filter` over `[from, to]` in `records` (capture order, which should
/// go on past `to`: the silence across `to` is measured to its end, not cut there, as
/// a window's end falls between two packets of a stream that flows).
fn stall(records: &[PacketRecord], filter: &PacketFilter, from: SystemTime, to: SystemTime) -> Stall {
    let mut seen = NewPayload::default();
    let mut s = Stall {
        from,
        to,
        longest: Duration::ZERO,
        silent_from: from,
        silent_to: from,
        recovered: false,
        new_bytes: 0,
    };
    let mut last: Option<SystemTime> = None;
    for r in records.iter().filter(|r| r.payload_len > 0 && filter.matches(r)) {
        // Counted from the start of the capture: what is new is new to the whole run.
        let new = seen.count(r);
        if new == 0 {
            continue;
        }
        let t = r.time;
        if t >= from {
            if t <= to {
                s.new_bytes += new;
            }
            let begin = last.map_or(from, |l| l.max(from));
            let silence = t.duration_since(begin).unwrap_or_default();
            if silence >= s.longest {
                (s.longest, s.silent_from, s.silent_to) = (silence, begin, t);
            }
            s.recovered = true;
            if t > to {
                return s;
            }
        }
        last = Some(t);
    }
    // Nothing new after the window: the stream stopped at its last new payload.
    let begin = last.map_or(from, |l| l.max(from));
    (s.longest, s.silent_from, s.silent_to, s.recovered) =
        (to.duration_since(begin).unwrap_or_default(), begin, to, false);
    s
}

impl Stall {
    /// New payload flowed, and flowed again after its longest silence.
    fn flowing(&self) -> bool {
        self.new_bytes > 0 && self.recovered
    }

    fn describe(&self, run: &Run) -> String {
        let window = self.to.duration_since(self.from).unwrap_or_default();
        let mbps = self.new_bytes as f64 * 8.0 / window.as_secs_f64().max(1e-3) / 1e6;
        format!(
            "{:.1} Mbit/s of new payload from {:.3} s to {:.3} s of the run; longest silence {:.1} ms ({:.3} s to {:.3} s){}",
            mbps,
            since_start(run, self.from),
            since_start(run, self.to),
            self.longest.as_secs_f64() * 1e3,
            since_start(run, self.silent_from),
            since_start(run, self.silent_to),
            if self.recovered {
                ""
            } else {
                ", and no new payload after it"
            }
        )
    }
}

fn since_start(run: &Run, t: SystemTime) -> f64 {
    t.duration_since(run.started).unwrap_or_default().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{TcpFields, TcpFlags};
    use std::time::UNIX_EPOCH;

    const MSS: u32 = 1000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// A segment of the stream to 10.201.3.2:5401 at `ms`, the `n`th of the stream.
    fn segment(ms: u64, n: u32) -> PacketRecord {
        PacketRecord {
            time: at(ms),
            outgoing: false,
            protocol: Protocol::Tcp,
            src: "10.201.2.2:40000".parse().unwrap(),
            dst: "10.201.3.2:5401".parse().unwrap(),
            payload_len: MSS,
            tcp: Some(TcpFields {
                seq: n * MSS,
                ack: 0,
                flags: TcpFlags(TcpFlags::ACK),
            }),
            frame_len: 54 + MSS,
        }
    }

    fn filter() -> PacketFilter {
        PacketFilter::to(Protocol::Tcp, "10.201.3.2:5401".parse().unwrap())
    }

    #[test]
    fn a_stream_that_pauses_and_goes_on_is_flowing() {
        // Every 10 ms, but nothing from 300 to 420 ms.
        let records: Vec<PacketRecord> = (0..100u32)
            .map(|n| u64::from(n) * 10)
            .filter(|ms| !(310..420).contains(ms))
            .enumerate()
            .map(|(n, ms)| segment(ms, n as u32))
            .collect();
        let s = stall(&records, &filter(), at(100), at(900));
        assert!(s.flowing());
        assert_eq!(s.longest, Duration::from_millis(120));
        assert_eq!((s.silent_from, s.silent_to), (at(300), at(420)));
        // Only what lay in the window: 100..=900 ms less the pause.
        assert_eq!(s.new_bytes, u64::from(MSS) * (81 - 11));
    }

    #[test]
    fn retransmissions_of_a_stream_that_stopped_are_not_flowing() {
        // New data to 500 ms, then the last segments again and again (a sender whose
        // ACKs no longer come back).
        let mut records: Vec<PacketRecord> = (0..=50u32).map(|n| segment(u64::from(n) * 10, n)).collect();
        records.extend((51..100u32).map(|i| segment(u64::from(i) * 10, 45 + i % 5)));
        let s = stall(&records, &filter(), at(200), at(1000));
        assert!(!s.flowing());
        assert!(!s.recovered);
        assert_eq!(s.longest, Duration::from_millis(500));
        assert_eq!((s.silent_from, s.silent_to), (at(500), at(1000)));
        assert_eq!(s.new_bytes, u64::from(MSS) * 31);
    }

    #[test]
    fn a_window_that_ends_between_two_packets_of_a_flowing_stream_is_flowing() {
        // Every 10 ms throughout, the window ending half-way between two packets: the
        // silence across its end is the packets' spacing, not a stall.
        let records: Vec<PacketRecord> = (0..100u32).map(|n| segment(u64::from(n) * 10, n)).collect();
        let s = stall(&records, &filter(), at(100), at(505));
        assert!(s.flowing());
        assert_eq!(s.longest, Duration::from_millis(10));
        assert_eq!((s.silent_from, s.silent_to), (at(500), at(510)));
        assert_eq!(s.new_bytes, u64::from(MSS) * 41);
    }

    #[test]
    fn nothing_in_the_window_is_not_flowing() {
        let records = vec![segment(0, 0)];
        let s = stall(&records, &filter(), at(100), at(200));
        assert!(!s.flowing());
        assert_eq!(s.new_bytes, 0);
        assert_eq!(s.longest, Duration::from_millis(100));
    }

    #[test]
    fn the_stream_is_found_in_roamds_status_from_either_end() {
        let status = serde_json::json!({"flows": [
            {"original": {"protocol": "tcp", "local": "10.201.1.2:40000", "remote": "10.201.3.2:80"},
             "current": {"protocol": "tcp", "local": "10.201.1.2:40000", "remote": "10.201.3.2:80"}, "moves": 0},
            {"original": {"protocol": "tcp", "local": "10.201.1.2:40001", "remote": "10.201.3.2:5401"},
             "current": {"protocol": "tcp", "local": "10.201.2.2:40001", "remote": "10.201.3.2:5401"}, "moves": 1},
        ]});
        let listen: SocketAddr = "10.201.3.2:5401".parse().unwrap();
        let f = stream_flow(&status, "a", listen).unwrap();
        assert_eq!(f.original.0, "10.201.1.2:40001".parse().unwrap());
        assert_eq!(f.current.0, "10.201.2.2:40001".parse().unwrap());
        assert!(f.translated());
        assert_eq!(f.moves, 1);
        // From B's side the listening end is the local one: none here.
        assert!(stream_flow(&status, "b", listen).is_none());
    }
}
