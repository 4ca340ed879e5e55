//! Measurement scenarios: a real iperf3 across a move, compared with plain TCP on the same
//! path in the same run, and one bulk stream across many moves.
//!
//! The numbers a user of host mobility asks for (issue 5's "done means"): the handover gap
//! over many moves (p50, p90, max; run with and without `--no-nudge`), and what
//! translation costs in goodput against plain TCP. Both come from the capture on B's
//! link, as every lab measurement does; iperf3's own figures are reported next to them.
//!
//! **What "plain TCP on the same path" is here.** The translated stream is measured once
//! it is in steady state after the move: A on subnet 2, every packet rewritten by both
//! roamds. The reference is an iperf3 run of the same length right after it, over the
//! very same links (A's subnet-2 link, B's link, same emulated shape), with both roamds
//! stopped first (SIGTERM: they delete their nftables tables and release retained
//! addresses). So nothing of roam is on the reference's path: no daemon, no table, no
//! hook. The ratio therefore counts everything roam costs, not only the per-flow
//! rewrite. Measuring the reference before the move would use the other access link
//! (identically shaped, but another emulator thread) and would need roamd absent before
//! it ever ran; measuring it after keeps the path identical and adjacent in time.
//!
//! **How iperf3's stream is digested.** `iperf3 -c ... -F FILE` sends a file and
//! `iperf3 -s -F FILE` writes what it reads, so the stream itself can be checked: the
//! client sends a seeded pseudo-random file ([`Pattern`]) and the file the server wrote
//! must be exactly that file's first N bytes, N being what the server reports it read.
//! iperf3 stops reading when the client ends the test (the end message travels on its
//! control connection, ahead of the data still in flight), so N is a little less than
//! what the client sent: that tail is iperf3's, not lost by the network.
//!
//! One more iperf3 detail: when the socket takes only part of a block, Debian's iperf3
//! 3.12 loses track of where it is in the file and sends pieces of it out of order (seen
//! in this lab with the default 128 KiB blocks: the received file was the sent one cut
//! and shuffled, from byte 78,192 on). So the client writes blocks of exactly one MSS
//! (`-l`): each write then fills whole segments, so Linux takes it whole or not at all
//! (`EAGAIN`), the two cases iperf3 gets right; every digest matched since, IPv4 and
//! IPv6. At 100 Mbit/s that is ~8,600 writes a second, no limit for the client. Should a
//! write ever be split again, the digest says so (and the report names the first byte
//! that differs in the log).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{MoveReport, Run, StreamReport, end_stream};
use crate::capture::{CaptureSummary, PacketFilter, Protocol, goodput};
use crate::netns::{Child, ChildOutput, LabError};
use crate::topology::Family;
use crate::traffic::{Pattern, TcpSink, TcpSource};

/// Time between moves in `moves`. Each move's gap is measured from its move to the next
/// (see `Run::measure_moves`), so a gap must end within this: without the nudge the
/// sender waits for a retransmission timeout (at least 200 ms on Linux, doubled by each
/// backoff), which ends well within it.
const MOVE_INTERVAL: Duration = Duration::from_secs(2);
/// Stream time before the first move: slow start over (at 20 ms RTT and 100 Mbit/s the
/// window reaches the path's capacity in well under a second).
const WARM_UP: Duration = Duration::from_secs(1);
/// From a move (or a stream's start) to steady state: recovery, then the congestion
/// window back at the path's capacity.
const SETTLE: Duration = Duration::from_secs(2);
/// Left out at the end of a goodput window: the end of an iperf3 test.
const TAIL: Duration = Duration::from_millis(500);
/// The shortest iperf3 run that leaves a steady-state window after the move.
const MIN_DURATION: Duration = Duration::from_secs(5);
const PORT_ACROSS: u16 = 5201;
const PORT_PLAIN: u16 = 5202;
const PORT_MOVES: u16 = 5010;
const CHUNK: usize = 64 << 10;

/// What the measurement scenarios hand to `Run::finish`, which measures it once the
/// capture has stopped.
#[derive(Debug, Default)]
pub(super) struct Plan {
    goodput: Option<GoodputWindows>,
    iperf3: Vec<Iperf3Run>,
}

#[derive(Debug)]
struct GoodputWindows {
    /// The stream across the move, in steady state after it.
    roam: Window,
    /// Plain TCP on the same path.
    plain: Window,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    filter: PacketFilter,
    from: SystemTime,
    to: SystemTime,
}

/// What a measurement scenario found, over all its moves and streams.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub moves: usize,
    /// Moves after which payload flowed again before the next move (or within 3 s).
    pub recovered: usize,
    /// The handover gaps of the moves at which the stream was flowing.
    pub gap_ms: Option<GapStats>,
    /// Goodput of the stream across the move against plain TCP (the iperf3 scenario).
    pub goodput: Option<GoodputComparison>,
    /// iperf3's own report of each of its runs.
    pub iperf3: Vec<Iperf3Run>,
}

/// A distribution of gaps; percentiles by nearest rank (the value at rank ⌈p·n⌉ of the
/// sorted gaps: always one of the measured gaps).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct GapStats {
    pub count: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
}

impl GapStats {
    /// `None` for no gaps.
    pub fn of(gaps: &[f64]) -> Option<GapStats> {
        let mut sorted = gaps.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = |p: f64| sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        (n > 0).then(|| GapStats {
            count: n,
            min: sorted[0],
            p50: rank(0.5),
            p90: rank(0.9),
            max: sorted[n - 1],
            mean: sorted.iter().sum::<f64>() / n as f64,
        })
    }
}

/// Capture goodput (new payload on B's link per second) of the stream across the move,
/// once in steady state after it, and of plain TCP on the same path, over windows of the
/// same length.
#[derive(Clone, Debug, Serialize)]
pub struct GoodputComparison {
    pub roam_mbps: f64,
    pub plain_mbps: f64,
    /// `roam_mbps / plain_mbps`.
    pub ratio: Option<f64>,
    pub window_s: f64,
    /// Window starts, in seconds from the start of the run.
    pub roam_from_s: f64,
    pub plain_from_s: f64,
}

/// One iperf3 run as iperf3 reports it (`--json` on both ends).
#[derive(Clone, Debug, Serialize)]
pub struct Iperf3Run {
    pub name: String,
    pub port: u16,
    /// The client's `-t`.
    pub seconds: u64,
    /// The data connection's local address and port on A, as the client saw them.
    pub local: Option<String>,
    pub local_port: Option<u16>,
    /// Exit codes; `None`: killed (it did not finish in time) or never ran.
    pub client_exit: Option<i32>,
    pub server_exit: Option<i32>,
    /// iperf3's error message, from either end.
    pub error: Option<String>,
    /// What the client wrote to its socket.
    pub bytes_sent: u64,
    pub sender_mbps: f64,
    /// TCP retransmissions by the client (its `TCP_INFO`).
    pub retransmits: u64,
    /// What the server read.
    pub bytes_received: u64,
    pub receiver_mbps: f64,
    /// The client's per-interval report (one a second).
    pub sender_intervals: Vec<Iperf3Interval>,
    /// The server's.
    pub receiver_intervals: Vec<Iperf3Interval>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Iperf3Interval {
    pub start_s: f64,
    pub end_s: f64,
    pub bytes: u64,
    pub mbps: f64,
    /// The sender's only.
    pub retransmits: Option<u64>,
}

impl Plan {
    /// The summary of a finished run: gap statistics of `moves` (as `Run::finish` measured
    /// them), goodput in the planned windows from the capture.
    pub(super) fn summarize(
        self,
        started: SystemTime,
        moves: &[MoveReport],
        capture: Option<&CaptureSummary>,
    ) -> Summary {
        let gaps: Vec<f64> = moves.iter().filter_map(|m| m.gap_ms).collect();
        let since = |t: SystemTime| t.duration_since(started).unwrap_or_default().as_secs_f64();
        let goodput = match (self.goodput, capture) {
            (Some(w), Some(capture)) => {
                let mbps =
                    |w: Window| goodput(&capture.records, &w.filter, w.from, w.to).bits_per_second() / 1e6;
                let (roam, plain) = (mbps(w.roam), mbps(w.plain));
                Some(GoodputComparison {
                    roam_mbps: roam,
                    plain_mbps: plain,
                    ratio: (plain > 0.0).then(|| roam / plain),
                    window_s: w
                        .roam
                        .to
                        .duration_since(w.roam.from)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    roam_from_s: since(w.roam.from),
                    plain_from_s: since(w.plain.from),
                })
            }
            _ => None,
        };
        Summary {
            moves: moves.len(),
            recovered: moves.iter().filter(|m| m.recovered).count(),
            gap_ms: GapStats::of(&gaps),
            goodput,
            iperf3: self.iperf3,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recovered = if self.recovered == self.moves {
            "all recovered".to_owned()
        } else {
            format!("{} did NOT recover", self.moves - self.recovered)
        };
        match &self.gap_ms {
            Some(g) => writeln!(
                f,
                "  handover gap over {} move(s), {recovered}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (min {:.1}, mean {:.1}; {} measured)",
                self.moves, g.p50, g.p90, g.max, g.min, g.mean, g.count
            )?,
            None => writeln!(f, "  handover gap: no move found the stream flowing")?,
        }
        if let Some(g) = &self.goodput {
            write!(
                f,
                "  goodput over {:.1} s windows: {:.1} Mbit/s translated (from {:.1} s, {} s after the move) vs {:.1} Mbit/s plain TCP (from {:.1} s, same links, roamd stopped)",
                g.window_s,
                g.roam_mbps,
                g.roam_from_s,
                SETTLE.as_secs(),
                g.plain_mbps,
                g.plain_from_s
            )?;
            match g.ratio {
                Some(r) => writeln!(f, ": ratio {r:.3}")?,
                None => writeln!(f, ": no ratio (plain TCP carried nothing)")?,
            }
        }
        for r in &self.iperf3 {
            let exit = |e: Option<i32>| e.map_or("killed".to_owned(), |c| c.to_string());
            writeln!(
                f,
                "  iperf3 {} (port {}, -t {}, from {}): exit {} (client) / {} (server); sent {:.1} MB at {:.1} Mbit/s, {} retransmits; the server read {:.1} MB ({:.1} Mbit/s)",
                r.name,
                r.port,
                r.seconds,
                r.local.as_deref().unwrap_or("?"),
                exit(r.client_exit),
                exit(r.server_exit),
                r.bytes_sent as f64 / 1e6,
                r.sender_mbps,
                r.retransmits,
                r.bytes_received as f64 / 1e6,
                r.receiver_mbps
            )?;
            if let Some(e) = &r.error {
                writeln!(f, "      iperf3 error: {e}")?;
            }
            let list = |v: Vec<String>| v.join(" ");
            writeln!(
                f,
                "      received Mbit/s each second: {}",
                list(
                    r.receiver_intervals
                        .iter()
                        .map(|i| format!("{:.0}", i.mbps))
                        .collect()
                )
            )?;
            writeln!(
                f,
                "      retransmits each second:     {}",
                list(
                    r.sender_intervals
                        .iter()
                        .map(|i| i.retransmits.unwrap_or(0).to_string())
                        .collect()
                )
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The scenarios

/// `iperf3`: Debian's unmodified iperf3, client on A and server on B, a file through it;
/// A moves 30% into the run. Then plain TCP on the same path with roamd stopped. See the
/// module docs.
pub(super) fn iperf3(run: &mut Run) -> Result<(), LabError> {
    find_program("iperf3")?;
    let duration = Duration::from_secs(run.options.duration.as_secs_f64().round() as u64);
    if duration < MIN_DURATION {
        return Err(LabError::Invalid(format!(
            "the iperf3 scenario needs a duration of at least {} s",
            MIN_DURATION.as_secs()
        )));
    }
    // The file is larger than the run can send at the configured rate (the emulated link
    // is the bottleneck), so the test ends by time, never by running out of file.
    let rate = if run.options.rate_bps == 0 {
        10_000_000_000
    } else {
        run.options.rate_bps
    };
    let size = (rate as f64 / 8.0 * duration.as_secs_f64() * 1.25) as u64 + (8 << 20);
    let send = run.dir.join("iperf3-send.bin");
    write_pattern_file(&send, run.options.seed, size)?;
    run.notes.push(
        "iperf3 stops reading when the client ends the test, so what is still in flight then is \
         never written: each iperf3 digest compares the file the server wrote with as many bytes \
         of the file the client sent (iperf3 -F at both ends)"
            .into(),
    );
    let result = iperf3_runs(run, &send, duration);
    // The seed makes it again; a received file that failed its check stays for a look.
    let _ = std::fs::remove_file(&send);
    result
}

fn iperf3_runs(run: &mut Run, send: &Path, duration: Duration) -> Result<(), LabError> {
    let mut plan = Plan::default();
    // Across the move.
    let across = Iperf3Spec {
        name: "across the move",
        port: PORT_ACROSS,
        seconds: duration.as_secs(),
        send: send.to_owned(),
        receive: run.dir.join("iperf3-received-across.bin"),
        block: mss(run.family()),
    };
    let running = across.start(run)?;
    run.measured = Some(running.dst);
    // Both of iperf3's connections (control and data) known to both roamds.
    run.wait_flows(2)?;
    sleep_until(running.started + duration.mul_f64(0.3));
    run.move_a()?;
    let moved = run.moves.last().expect("just moved").started;
    let end = running.started + duration;
    let dst = running.dst;
    let (report, stream) = running.finish(end + Duration::from_secs(15), run.options.seed)?;
    // The gap of iperf3's data connection alone: its control connection is quiet for
    // the whole test but at the start, where its exchange and the data connection's
    // opening leave silences that are no handover's.
    let across_filter = data_connection(dst, &report);
    run.measured_filter = Some(across_filter);
    plan.iperf3.push(report);
    run.streams.push(stream);

    // The steady-state window after the move, as long as the run leaves.
    let window = end
        .duration_since(moved + SETTLE + TAIL)
        .unwrap_or_default()
        .max(Duration::from_millis(500));

    // Plain TCP on the same path: nothing of roam left on it.
    stop_roamd(run)?;
    let plain = Iperf3Spec {
        name: "plain TCP",
        port: PORT_PLAIN,
        seconds: (SETTLE + window + TAIL).as_secs_f64().ceil() as u64,
        send: send.to_owned(),
        receive: run.dir.join("iperf3-received-plain.bin"),
        block: mss(run.family()),
    };
    let running = plain.start(run)?;
    let (plain_started, plain_dst) = (running.started, running.dst);
    let deadline = plain_started + Duration::from_secs(running.spec.seconds + 15);
    let (report, stream) = running.finish(deadline, run.options.seed)?;
    let plain_filter = data_connection(plain_dst, &report);
    plan.iperf3.push(report);
    run.streams.push(stream);

    plan.goodput = Some(GoodputWindows {
        roam: Window {
            filter: across_filter,
            from: moved + SETTLE,
            to: moved + SETTLE + window,
        },
        plain: Window {
            filter: plain_filter,
            from: plain_started + SETTLE,
            to: plain_started + SETTLE + window,
        },
    });
    run.plan = Some(plan);
    Ok(())
}

/// `moves`: one bulk stream A->B, bounded in time, across `options.moves` moves
/// `MOVE_INTERVAL` apart (subnet 1 -> 2 -> 1 ...), each gap measured on its own; the
/// digest is checked at the end.
pub(super) fn moves(run: &mut Run) -> Result<(), LabError> {
    let n = run.options.moves;
    if n == 0 {
        return Err(LabError::Invalid(
            "the moves scenario needs at least one move".into(),
        ));
    }
    let listen = SocketAddr::new(run.topology.b_address(run.family()), PORT_MOVES);
    let length = WARM_UP + MOVE_INTERVAL * n as u32 + MOVE_INTERVAL;
    let deadline = length + Duration::from_secs(30);
    let sink = TcpSink::start(run.b(), listen, deadline)?;
    // Sends until stopped: the stream's length is a time, not a size.
    let source = TcpSource::start(run.a(), listen, u64::MAX, run.options.seed, deadline)?;
    run.measured = Some(listen);
    let moved = (|| -> Result<(), LabError> {
        run.wait_sessions()?;
        let first = Instant::now() + WARM_UP;
        for i in 0..n {
            sleep_until_instant(first + MOVE_INTERVAL * i as u32);
            run.move_a()?;
        }
        // The last gap gets its full window before the stream ends.
        sleep_until_instant(first + MOVE_INTERVAL * n as u32);
        Ok(())
    })();
    end_stream(run, sink, source)?;
    run.plan = Some(Plan::default());
    moved
}

// ---------------------------------------------------------------------------------------
// iperf3

struct Iperf3Spec {
    name: &'static str,
    port: u16,
    seconds: u64,
    /// The file the client sends.
    send: PathBuf,
    /// Where the server writes what it reads.
    receive: PathBuf,
    /// The client's block size (`-l`): one MSS (see the module docs).
    block: usize,
}

struct RunningIperf3 {
    spec: Iperf3Spec,
    server: Child,
    client: Child,
    started: SystemTime,
    dst: SocketAddr,
}

impl Iperf3Spec {
    /// Starts the server on B (one test, then it exits), waits until it listens, and
    /// starts the client on A.
    fn start(self, run: &Run) -> Result<RunningIperf3, LabError> {
        let b = run.topology.b_address(run.family());
        let dst = SocketAddr::new(b, self.port);
        let (port, seconds, block) = (
            self.port.to_string(),
            self.seconds.to_string(),
            self.block.to_string(),
        );
        let (b_text, receive, send) = (
            b.to_string(),
            self.receive.display().to_string(),
            self.send.display().to_string(),
        );
        let _ = std::fs::remove_file(&self.receive);
        let server = run.b().spawn(
            &[
                "iperf3", "-s", "-1", "-p", &port, "-B", &b_text, "--json", "-F", &receive,
            ],
            ChildOutput::Collect,
        )?;
        run.b()
            .wait_listening(self.port, &server, Duration::from_secs(10))?;
        let started = SystemTime::now();
        let client = run.a().spawn(
            &[
                "iperf3",
                "-c",
                &b_text,
                "-p",
                &port,
                "-t",
                &seconds,
                "--json",
                "-F",
                &send,
                "-l",
                &block,
                "--connect-timeout",
                "5000",
            ],
            ChildOutput::Collect,
        )?;
        Ok(RunningIperf3 {
            spec: self,
            server,
            client,
            started,
            dst,
        })
    }
}

impl RunningIperf3 {
    /// Waits for the client (until `deadline`) and then the server, parses both reports
    /// and checks the file the server wrote against the one the client sent.
    fn finish(self, deadline: SystemTime, seed: u64) -> Result<(Iperf3Run, StreamReport), LabError> {
        let within = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        let (client_status, client_out) = wait_or_kill(self.client, within)?;
        // The server writes its report once the client's results exchange is over.
        let (server_status, server_out) = wait_or_kill(self.server, Duration::from_secs(5))?;
        let client = serde_json::from_str::<serde_json::Value>(&client_out).unwrap_or_default();
        let server = serde_json::from_str::<serde_json::Value>(&server_out).unwrap_or_default();
        let end = |j: &serde_json::Value, sum: &str, key: &str| j["end"][sum][key].clone();
        let u64_of = |v: serde_json::Value| v.as_f64().map_or(0, |x| x as u64);
        let mbps = |v: serde_json::Value| v.as_f64().unwrap_or(0.0) / 1e6;
        let connected = &client["start"]["connected"][0];
        let error = [&client, &server]
            .iter()
            .filter_map(|j| j["error"].as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let report = Iperf3Run {
            name: self.spec.name.to_owned(),
            port: self.spec.port,
            seconds: self.spec.seconds,
            local: connected["local_host"]
                .as_str()
                .map(|h| format!("{h} port {}", connected["local_port"])),
            local_port: connected["local_port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok()),
            client_exit: client_status.and_then(|s| s.code()),
            server_exit: server_status.and_then(|s| s.code()),
            error: (!error.is_empty()).then_some(error),
            bytes_sent: u64_of(end(&client, "sum_sent", "bytes")),
            sender_mbps: mbps(end(&client, "sum_sent", "bits_per_second")),
            retransmits: u64_of(end(&client, "sum_sent", "retransmits")),
            bytes_received: u64_of(end(&server, "sum_received", "bytes")),
            receiver_mbps: mbps(end(&server, "sum_received", "bits_per_second")),
            sender_intervals: intervals(&client),
            receiver_intervals: intervals(&server),
        };
        let check = check_prefix(&self.spec.receive, seed)?;
        let ok = report.client_exit == Some(0)
            && report.server_exit == Some(0)
            && check.bytes > 0
            && check.bytes == report.bytes_received
            && check.first_difference.is_none();
        if ok {
            let _ = std::fs::remove_file(&self.spec.receive);
        } else if let Some(at) = check.first_difference {
            tracing::warn!(
                "iperf3 {}: the file received differs from the one sent from byte {at}",
                self.spec.name
            );
        }
        let stream = StreamReport {
            name: format!("iperf3 {}", self.spec.name),
            bytes_sent: report.bytes_sent,
            bytes_received: check.bytes,
            sent_sha256: check.sent_sha256,
            received_sha256: check.received_sha256,
            ok,
        };
        Ok((report, stream))
    }
}

/// Packets of iperf3's data connection to `dst` (its source port from the client's
/// report; roam moves addresses and keeps ports), or all to `dst` if the client did not
/// report it.
fn data_connection(dst: SocketAddr, report: &Iperf3Run) -> PacketFilter {
    PacketFilter {
        src_port: report.local_port,
        ..PacketFilter::to(Protocol::Tcp, dst)
    }
}

fn intervals(report: &serde_json::Value) -> Vec<Iperf3Interval> {
    let Some(list) = report["intervals"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|i| {
            let sum = &i["sum"];
            Iperf3Interval {
                start_s: sum["start"].as_f64().unwrap_or(0.0),
                end_s: sum["end"].as_f64().unwrap_or(0.0),
                bytes: sum["bytes"].as_f64().map_or(0, |b| b as u64),
                mbps: sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6,
                retransmits: sum["retransmits"].as_u64(),
            }
        })
        .collect()
}

/// Waits up to `within` for `child` to exit, kills it if it has not, and returns its
/// exit status (`None` if it had to be killed) and stdout.
pub(super) fn wait_or_kill(child: Child, within: Duration) -> Result<(Option<ExitStatus>, String), LabError> {
    let exited = child.wait_timeout(within)?;
    if exited.is_none() {
        tracing::warn!("{} still running after {within:?}: killed", child.command());
        child.kill();
    }
    let out = child.wait_output(Duration::from_secs(2))?;
    Ok((exited, out.stdout))
}

/// Takes roam out of both hosts (`roam down`, then SIGTERM: see `Run::stop_roamd`):
/// each deletes its data plane's kernel state and releases the addresses it kept, then
/// writes its last status (which the report shows).
fn stop_roamd(run: &mut Run) -> Result<(), LabError> {
    if run.roamds.is_empty() {
        return Ok(());
    }
    run.notes
        .push("roam down and roamd stopped (SIGTERM) on A and B before the plain-TCP run".into());
    for host in ["a", "b"] {
        if !run.roamds.stop(host)? {
            run.notes.push(format!(
                "roamd on {host} did not stop within 10 s of SIGTERM and was killed"
            ));
        }
    }
    Ok(())
}

/// `name`, if it is an executable file on `PATH` (as `ip netns exec` will look for it).
pub(super) fn find_program(name: &str) -> Result<PathBuf, LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "{name} is not installed (Debian: apt-get install {name})"
            ))
        })
}

/// TCP payload per segment on the lab's links: a 1500-byte MTU less the IP and TCP
/// headers and the timestamp option (on by default in Linux, `net.ipv4.tcp_timestamps`).
fn mss(family: Family) -> usize {
    let ip = match family {
        Family::V4 => 20,
        Family::V6 => 40,
    };
    1500 - ip - 20 - 12
}

fn sleep_until(t: SystemTime) {
    if let Ok(left) = t.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

pub(super) fn sleep_until_instant(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

// ---------------------------------------------------------------------------------------
// Files

/// Writes `len` bytes of the seed's [`Pattern`] to `path`.
pub(super) fn write_pattern_file(path: &Path, seed: u64, len: u64) -> Result<(), LabError> {
    let io = |e| LabError::io(format!("writing {}", path.display()), e);
    let mut file = BufWriter::new(File::create(path).map_err(io)?);
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).map_err(io)?;
        left -= n as u64;
    }
    file.flush().map_err(io)
}

/// A received file against the sent pattern.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PrefixCheck {
    pub(super) bytes: u64,
    /// SHA-256 of the file.
    pub(super) received_sha256: String,
    /// SHA-256 of as many bytes of the pattern.
    pub(super) sent_sha256: String,
    /// The first byte at which they differ.
    pub(super) first_difference: Option<u64>,
}

/// Compares the file at `path` (missing: empty) with the first bytes of the seed's
/// pattern, hashing both.
pub(super) fn check_prefix(path: &Path, seed: u64) -> Result<PrefixCheck, LabError> {
    let io = |e| LabError::io(format!("reading {}", path.display()), e);
    let mut file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let mut pattern = Pattern::new(seed);
    let (mut got, mut expected) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut received, mut sent) = (Sha256::new(), Sha256::new());
    let mut check = PrefixCheck {
        bytes: 0,
        received_sha256: String::new(),
        sent_sha256: String::new(),
        first_difference: None,
    };
    while let Some(f) = file.as_mut() {
        // Whole chunks but the last, as the pattern must be cut (see `Pattern`).
        let n = read_full(f, &mut got).map_err(io)?;
        if n == 0 {
            break;
        }
        pattern.fill(&mut expected[..n]);
        if check.first_difference.is_none()
            && let Some(i) = got[..n].iter().zip(&expected[..n]).position(|(a, b)| a != b)
        {
            check.first_difference = Some(check.bytes + i as u64);
        }
        received.update(&got[..n]);
        sent.update(&expected[..n]);
        check.bytes += n as u64;
    }
    check.received_sha256 = hex::encode(received.finalize());
    check.sent_sha256 = hex::encode(sent.finalize());
    Ok(check)
}

/// Reads until `buf` is full or the end of the file.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::pattern_sha256;

    #[test]
    fn gap_percentiles_are_nearest_rank() {
        let gaps: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = GapStats::of(&gaps).unwrap();
        assert_eq!((s.count, s.min, s.p50, s.p90, s.max), (10, 1.0, 5.0, 9.0, 10.0));
        assert!((s.mean - 5.5).abs() < 1e-9);
        let one = GapStats::of(&[42.0]).unwrap();
        assert_eq!((one.p50, one.p90, one.max), (42.0, 42.0, 42.0));
        let three = GapStats::of(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!((three.p50, three.p90), (20.0, 30.0));
        assert!(GapStats::of(&[]).is_none());
    }

    #[test]
    fn a_received_prefix_matches_and_a_corrupt_byte_is_found() {
        let dir = std::env::temp_dir().join(format!("roam-lab-prefix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (sent, received) = (dir.join("sent"), dir.join("received"));
        write_pattern_file(&sent, 7, 300_000).unwrap();
        // What iperf3's server writes: the first bytes, the tail cut off.
        let mut bytes = std::fs::read(&sent).unwrap();
        bytes.truncate(200_001);
        std::fs::write(&received, &bytes).unwrap();
        let check = check_prefix(&received, 7).unwrap();
        assert_eq!(check.bytes, 200_001);
        assert_eq!(check.first_difference, None);
        assert_eq!(check.received_sha256, check.sent_sha256);
        assert_eq!(check.sent_sha256, pattern_sha256(7, 200_001));

        bytes[150_000] ^= 1;
        std::fs::write(&received, &bytes).unwrap();
        let check = check_prefix(&received, 7).unwrap();
        assert_eq!(check.first_difference, Some(150_000));
        assert_ne!(check.received_sha256, check.sent_sha256);

        // Another seed's stream is not this one.
        assert!(check_prefix(&sent, 8).unwrap().first_difference.is_some());
        // Nothing written at all.
        let none = check_prefix(&dir.join("missing"), 7).unwrap();
        assert_eq!((none.bytes, none.first_difference), (0, None));
        assert_eq!(none.sent_sha256, pattern_sha256(7, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
