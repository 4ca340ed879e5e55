//! Real client programs, unmodified, across a move of A: curl downloading a file from
//! Python's http.server, an OpenSSH session streaming a command's output, and socat
//! exchanging two files at once, one each way.
//!
//! Each program runs as Debian ships it, on kernel sockets that know nothing of roam. A
//! moves (the DHCP-like move of every scenario) once a share of the transfer has arrived
//! ([`MOVE_AT`]), and the program must then exit 0 with every byte intact: what arrived
//! is hashed (SHA-256) against the seeded pattern ([`crate::traffic::Pattern`]) the other
//! end sent, so the digest is known at both ends. Right after the move, while the
//! transfer still runs, both ends' sockets are read with `ss`: A's socket is still at A's
//! address of before the move and B's still sees A there (translation carries the move,
//! not the applications).
//!
//! **The gap of a download.** curl's and ssh's bytes flow B->A, and the capture is on
//! B's link. The move's gap in the report is, as for every scenario, the longest time
//! without payload of the stream on that link: here B's sending. B sends on until its
//! window is used up, and again once the path is back; but a probe of B's TCP into the
//! silence (a tail-loss probe, RFC 8985 section 7, or a retransmission on timeout, RFC
//! 6298) is payload too, and cuts the silence in two, so that gap can read shorter than
//! the download's stall (seen in this lab: 80 ms of B's sending against 122 ms without
//! a new acknowledgement from A). So a note gives the stream as A's acknowledgements show
//! it ([`acknowledged`]): the longest time around the move no packet from A acknowledged
//! new data (the stall A saw), and what A acknowledged per second (goodput that no
//! retransmission of B's can inflate). socat's exchange is measured A->B, as the other
//! scenarios' streams are, and its B->A direction gets the same note.
//!
//! **sshd.** Debian's sshd runs in B's namespace with a configuration, a host key and an
//! authorized client key written for the run into its directory (throwaway keys from
//! `ssh-keygen`), on a lab port, public-key authentication only, without PAM. It runs in
//! debug mode (`-d`): it serves one connection without forking off, so the whole of it
//! stays in the process group the lab kills on every exit path. (The command it runs for
//! the client is in a session of its own, as sshd makes it; it is bounded by `timeout`
//! and ends anyway when sshd goes, its output having nowhere to go.)

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use super::measure::{Plan, check_prefix, find_program, wait_or_kill, write_pattern_file};
use super::{CheckReport, Run, StreamReport};
use crate::capture::{PacketFilter, PacketRecord, Protocol, TcpFlags, goodput, handover_gap};
use crate::netns::{Child, ChildOutput, LabError, Ns, run_checked};
use crate::topology::Family;
use crate::traffic::pattern_sha256;

const PORT_CURL: u16 = 5301;
const PORT_SSH: u16 = 5302;
const PORT_SOCAT: u16 = 5303;
/// A moves once this share of the transfer has arrived: well under way, most of it still
/// to come.
const MOVE_AT: f64 = 0.3;
/// Bound on a server starting to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(10);
/// Bound on a transfer reaching [`MOVE_AT`].
const PROGRESS_WAIT: Duration = Duration::from_secs(30);
/// sshd's privilege separation directory (Debian's build), which it will not start
/// without.
const SSHD_PRIVSEP_DIR: &str = "/run/sshd";
/// Time for the capture to hand over the last packets before they are counted.
const CAPTURE_CATCH_UP: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// The scenarios

/// `curl`: B serves a pseudo-random file of `options.bytes` with `python3 -m http.server`,
/// A downloads it with curl; A moves 30% into the download.
pub(super) fn curl(run: &mut Run) -> Result<(), LabError> {
    let python = find_program("python3")?;
    find_program("curl")?;
    let bytes = transfer_bytes(run, "curl")?;
    let www = run.dir.join("www");
    fs::create_dir_all(&www).map_err(|e| LabError::io(format!("creating {}", www.display()), e))?;
    let served = www.join("file.bin");
    let received = run.dir.join("curl-received.bin");
    write_pattern_file(&served, run.options.seed, bytes)?;
    let result = curl_download(run, &python, &www, &received, bytes);
    // The seed makes it again; what arrived stays only if it failed its check.
    let _ = fs::remove_file(&served);
    remove_if_intact(run, &[&received]);
    result
}

fn curl_download(
    run: &mut Run,
    python: &Path,
    www: &Path,
    received: &Path,
    bytes: u64,
) -> Result<(), LabError> {
    let b = SocketAddr::new(run.topology.b_address(run.family()), PORT_CURL);
    let _ = fs::remove_file(received);
    let server = run.b().spawn(
        &[
            &python.display().to_string(),
            "-m",
            "http.server",
            &PORT_CURL.to_string(),
            "--bind",
            &b.ip().to_string(),
            "--directory",
            &www.display().to_string(),
        ],
        ChildOutput::File(run.dir.join("http-server.log")),
    )?;
    run.b().wait_listening(PORT_CURL, &server, LISTEN_WAIT)?;
    let within = transfer_time(run, bytes);
    let started = SystemTime::now();
    let client = run.a().spawn(
        &[
            "curl",
            // An IPv6 URL's brackets are an address, not a glob.
            "--globoff",
            "--silent",
            "--show-error",
            "--fail",
            "--stderr",
            "-",
            "--output",
            &received.display().to_string(),
            "--write-out",
            "%{json}",
            "--connect-timeout",
            "5",
            "--max-time",
            &within.as_secs().to_string(),
            &format!("http://{b}/file.bin"),
        ],
        ChildOutput::Collect,
    )?;
    run.measured_filter = Some(sent_by(b));
    move_mid_transfer(run, &client, received, bytes, PORT_CURL)?;
    let (status, out) = wait_or_kill(client, within + Duration::from_secs(5))?;
    let ended = SystemTime::now();
    drop(server);
    // curl's report (`%{json}`) is its last line; its error message, if any, before it.
    let report = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_default();
    let said = report["errormsg"]
        .as_str()
        .map_or_else(|| last_line(&out).to_owned(), str::to_owned);
    let exited = push_exit_check(run, "curl", status, &said);
    let stream = file_stream("curl download b->a", received, run.options.seed, bytes, exited)?;
    run.streams.push(stream);
    if let (Some(speed), Some(time)) = (report["speed_download"].as_f64(), report["time_total"].as_f64()) {
        run.notes.push(format!(
            "curl's own figures: {:.1} MB in {time:.2} s, {:.1} Mbit/s on average (the move included)",
            report["size_download"].as_f64().unwrap_or(0.0) / 1e6,
            speed * 8.0 / 1e6
        ));
    }
    let records = captured(run);
    acknowledged_note(run, &records, "curl download b->a", b, (started, ended));
    run.plan = Some(Plan::default());
    Ok(())
}

/// `ssh`: B runs Debian's sshd, A runs ssh with a command on B that writes a
/// pseudo-random file of `options.bytes` to the session (`cat`); A moves 30% into it.
pub(super) fn ssh(run: &mut Run) -> Result<(), LabError> {
    let sshd = find_program("sshd").map_err(openssh("sshd"))?;
    // sshd re-executes itself by its path, which must be absolute.
    let sshd = fs::canonicalize(&sshd).map_err(|e| LabError::io(format!("{}", sshd.display()), e))?;
    find_program("ssh").map_err(openssh("ssh"))?;
    find_program("ssh-keygen").map_err(openssh("ssh-keygen"))?;
    let bytes = transfer_bytes(run, "ssh")?;
    let dir = run.dir.join("ssh");
    fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    plain_path(&run.dir, "sshd's configuration or ssh's remote command")?;
    sshd_privsep_dir()?;
    let served = run.dir.join("ssh-served.bin");
    let received = run.dir.join("ssh-received.bin");
    write_pattern_file(&served, run.options.seed, bytes)?;
    let result = ssh_session(run, &sshd, &dir, &served, &received, bytes);
    let _ = fs::remove_file(&served);
    remove_if_intact(run, &[&received]);
    result
}

fn ssh_session(
    run: &mut Run,
    sshd: &Path,
    dir: &Path,
    served: &Path,
    received: &Path,
    bytes: u64,
) -> Result<(), LabError> {
    let b = SocketAddr::new(run.topology.b_address(run.family()), PORT_SSH);
    let host_key = keygen(&dir.join("host_key"))?;
    let client_key = keygen(&dir.join("client_key"))?;
    let authorized = dir.join("authorized_keys");
    let public = fs::read(client_key.with_extension("pub"))
        .map_err(|e| LabError::io("reading the client's public key", e))?;
    fs::write(&authorized, public)
        .map_err(|e| LabError::io(format!("writing {}", authorized.display()), e))?;
    let config = dir.join("sshd_config");
    // Key authentication of root only (the lab runs as root), no PAM, nothing but the one
    // command: no terminal, no forwarding. StrictModes off: the run's directory is not
    // a home directory.
    let text = format!(
        "# written by roam lab for one run\n\
         ListenAddress {b}\n\
         HostKey {}\n\
         AuthorizedKeysFile {}\n\
         PidFile none\n\
         StrictModes no\n\
         UsePAM no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         AllowUsers root\n\
         UseDNS no\n\
         PermitTTY no\n\
         X11Forwarding no\n\
         AllowTcpForwarding no\n\
         AllowAgentForwarding no\n\
         PrintMotd no\n",
        host_key.display(),
        authorized.display()
    );
    fs::write(&config, text).map_err(|e| LabError::io(format!("writing {}", config.display()), e))?;
    let _ = fs::remove_file(received);
    let server = run.b().spawn(
        &[
            &sshd.display().to_string(),
            "-d",
            "-f",
            &config.display().to_string(),
        ],
        ChildOutput::File(dir.join("sshd.log")),
    )?;
    run.b()
        .wait_listening(PORT_SSH, &server, LISTEN_WAIT)
        .map_err(|e| LabError::Invalid(format!("{e} (see {})", dir.join("sshd.log").display())))?;
    let within = transfer_time(run, bytes);
    let remote = format!("exec timeout {} cat {}", within.as_secs(), served.display());
    let started = SystemTime::now();
    // ssh's standard output (the command's) into the file, its standard error (its own
    // messages and the command's) into the log.
    let client = run.a().spawn(
        &[
            "sh",
            "-c",
            "out=$1; shift; exec \"$@\" >\"$out\"",
            "sh",
            &received.display().to_string(),
            "ssh",
            "-F",
            "/dev/null",
            "-n",
            "-T",
            "-i",
            &client_key.display().to_string(),
            "-p",
            &PORT_SSH.to_string(),
            "-l",
            "root",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            &b.ip().to_string(),
            &remote,
        ],
        ChildOutput::File(dir.join("ssh.log")),
    )?;
    run.measured_filter = Some(sent_by(b));
    move_mid_transfer(run, &client, received, bytes, PORT_SSH)?;
    let (status, _) = wait_or_kill(client, within + Duration::from_secs(5))?;
    let ended = SystemTime::now();
    // sshd -d ends with its one connection; the lab kills it otherwise.
    let _ = server.wait_timeout(Duration::from_secs(2));
    drop(server);
    let said = log_tail(&dir.join("ssh.log"));
    let exited = push_exit_check(run, "ssh", status, &said);
    let stream = file_stream(
        "ssh session output b->a",
        received,
        run.options.seed,
        bytes,
        exited,
    )?;
    run.streams.push(stream);
    let records = captured(run);
    acknowledged_note(run, &records, "ssh session output b->a", b, (started, ended));
    run.plan = Some(Plan::default());
    Ok(())
}

/// `socat`: one TCP connection, socat at both ends, each sending a pseudo-random file of
/// `options.bytes` and writing what it receives; A moves 30% into the exchange.
pub(super) fn socat(run: &mut Run) -> Result<(), LabError> {
    find_program("socat")?;
    let bytes = transfer_bytes(run, "socat")?;
    plain_path(&run.dir, "socat's addresses")?;
    let files = SocatFiles {
        a_sends: run.dir.join("socat-a-sends.bin"),
        b_sends: run.dir.join("socat-b-sends.bin"),
        a_received: run.dir.join("socat-a-received.bin"),
        b_received: run.dir.join("socat-b-received.bin"),
    };
    let (seed_a, seed_b) = (run.options.seed, run.options.seed.wrapping_add(1));
    write_pattern_file(&files.a_sends, seed_a, bytes)?;
    write_pattern_file(&files.b_sends, seed_b, bytes)?;
    let result = socat_exchange(run, &files, (seed_a, seed_b), bytes);
    let _ = fs::remove_file(&files.a_sends);
    let _ = fs::remove_file(&files.b_sends);
    remove_if_intact(run, &[&files.a_received, &files.b_received]);
    result
}

struct SocatFiles {
    a_sends: PathBuf,
    b_sends: PathBuf,
    a_received: PathBuf,
    b_received: PathBuf,
}

fn socat_exchange(
    run: &mut Run,
    files: &SocatFiles,
    (seed_a, seed_b): (u64, u64),
    bytes: u64,
) -> Result<(), LabError> {
    let b = SocketAddr::new(run.topology.b_address(run.family()), PORT_SOCAT);
    let (listen, connect) = match run.family() {
        Family::V4 => (
            format!("TCP4-LISTEN:{PORT_SOCAT},bind={},reuseaddr", b.ip()),
            format!("TCP4:{b}"),
        ),
        Family::V6 => (
            format!("TCP6-LISTEN:{PORT_SOCAT},bind=[{}],reuseaddr", b.ip()),
            format!("TCP6:{b}"),
        ),
    };
    // A dual address: the left one is read, the right one written.
    let ends = |sends: &Path, received: &Path| {
        format!("OPEN:{},rdonly!!CREATE:{}", sends.display(), received.display())
    };
    let within = transfer_time(run, bytes);
    // After one direction's end of file socat waits this long for the other's (0.5 s by
    // default, less than the other direction may still need).
    let linger = within.as_secs().to_string();
    for f in [&files.a_received, &files.b_received] {
        let _ = fs::remove_file(f);
    }
    let (a_log, b_log) = (run.dir.join("socat-a.log"), run.dir.join("socat-b.log"));
    let server = run.b().spawn(
        &[
            "socat",
            "-t",
            &linger,
            &listen,
            &ends(&files.b_sends, &files.b_received),
        ],
        ChildOutput::File(b_log.clone()),
    )?;
    run.b().wait_listening(PORT_SOCAT, &server, LISTEN_WAIT)?;
    let started = SystemTime::now();
    let client = run.a().spawn(
        &[
            "socat",
            "-t",
            &linger,
            &ends(&files.a_sends, &files.a_received),
            &connect,
        ],
        ChildOutput::File(a_log.clone()),
    )?;
    run.measured = Some(b);
    move_mid_transfer(run, &client, &files.b_received, bytes, PORT_SOCAT)?;
    let (a_status, _) = wait_or_kill(client, within + Duration::from_secs(5))?;
    let (b_status, _) = wait_or_kill(server, Duration::from_secs(5))?;
    let ended = SystemTime::now();
    let a_exited = push_exit_check(run, "socat on A", a_status, &log_tail(&a_log));
    let b_exited = push_exit_check(run, "socat on B", b_status, &log_tail(&b_log));
    let both = a_exited && b_exited;
    let a_to_b = file_stream("socat a->b", &files.b_received, seed_a, bytes, both)?;
    let b_to_a = file_stream("socat b->a", &files.a_received, seed_b, bytes, both)?;
    run.streams.extend([a_to_b, b_to_a]);
    let records = captured(run);
    goodput_note(run, &records, "socat a->b", b, (started, ended));
    acknowledged_note(run, &records, "socat b->a", b, (started, ended));
    run.plan = Some(Plan::default());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shared steps

/// The bytes each program sends (`options.bytes`), which must be some.
fn transfer_bytes(run: &Run, scenario: &str) -> Result<u64, LabError> {
    match run.options.bytes {
        0 => Err(LabError::Invalid(format!(
            "the {scenario} scenario needs a transfer of at least one byte (--bytes)"
        ))),
        n => Ok(n),
    }
}

/// How long a program may take for `bytes` (each way): three times what the emulated
/// link needs for them, and 30 s for the handshakes and the move.
fn transfer_time(run: &Run, bytes: u64) -> Duration {
    let link = match run.options.rate_bps {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(bytes as f64 * 8.0 / rate as f64),
    };
    (link * 3 + Duration::from_secs(30)).max(Duration::from_secs(1))
}

/// Waits until both roamds share the program's connection and `file` holds [`MOVE_AT`]
/// of `bytes`, moves A, and checks both ends' sockets (to or from `port`). An error if
/// `program` exits first: its transfer must span the move.
fn move_mid_transfer(
    run: &mut Run,
    program: &Child,
    file: &Path,
    bytes: u64,
    port: u16,
) -> Result<(), LabError> {
    let have = || fs::metadata(file).map_or(0, |m| m.len());
    let ended_early = |status: ExitStatus, have: u64| {
        // What it said, if it failed (curl's report, say, when it did not).
        let said = if status.success() {
            String::new()
        } else {
            last_line(&program.stdout()).to_owned()
        };
        LabError::Invalid(format!(
            "`{}` ended ({status}) with {have} of {bytes} bytes, before A could move{}{said}: \
             the transfer must span the move (more --bytes)",
            program.command(),
            if said.is_empty() { "" } else { ": " },
        ))
    };
    // A transfer over before roamd listed its connection is no failure of roamd's.
    if let Err(e) = run.wait_sessions() {
        return Err(match program.try_wait()? {
            Some(status) => ended_early(status, have()),
            None => e,
        });
    }
    let target = (bytes as f64 * MOVE_AT) as u64;
    let deadline = Instant::now() + PROGRESS_WAIT;
    loop {
        let have = have();
        if let Some(status) = program.try_wait()? {
            return Err(ended_early(status, have));
        }
        if have >= target {
            break;
        }
        if Instant::now() >= deadline {
            return Err(LabError::Invalid(format!(
                "{} did not reach {target} bytes within {PROGRESS_WAIT:?} (it has {have})",
                file.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let a_before = run.topology.a_address(run.family());
    run.move_a()?;
    socket_checks(run, port, a_before)
}

/// Right after the move, the connection as each end's socket reports it (`ss`): A's
/// socket is still at A's address of before the move, and B's sees A there.
fn socket_checks(run: &mut Run, port: u16, a_before: IpAddr) -> Result<(), LabError> {
    let a = established(run.a(), &format!("dport = :{port}"))?;
    let b = established(run.b(), &format!("sport = :{port}"))?;
    let at = |end: Option<SocketAddr>| end.map_or_else(|| "no connection".to_owned(), |s| s.to_string());
    run.checks.push(CheckReport {
        what: "A's socket after the move (ss on A)".into(),
        expected: format!("local address {a_before}"),
        observed: format!("local {}", at(a.map(|(local, _)| local))),
        ok: a.is_some_and(|(local, _)| local.ip() == a_before),
    });
    run.checks.push(CheckReport {
        what: "B's socket after the move (ss on B)".into(),
        expected: format!("peer address {a_before}"),
        observed: format!("peer {}", at(b.map(|(_, peer)| peer))),
        ok: b.is_some_and(|(_, peer)| peer.ip() == a_before),
    });
    Ok(())
}

/// The first established TCP connection `ss` lists in `ns` matching `filter`, as
/// (local, peer).
fn established(ns: &Ns, filter: &str) -> Result<Option<(SocketAddr, SocketAddr)>, LabError> {
    let out = ns.exec(&["ss", "-Htn", "state", "established", filter])?;
    Ok(out.stdout.lines().find_map(|line| {
        // Recv-Q, Send-Q, local, peer: no state column when one state is asked for.
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [_, _, local, peer, ..] => Some((local.parse().ok()?, peer.parse().ok()?)),
            _ => None,
        }
    }))
}

/// Records whether `program` exited 0 (`None`: still running at its deadline, killed),
/// with the last thing it said when it exited otherwise; true if it did.
fn push_exit_check(run: &mut Run, program: &str, status: Option<ExitStatus>, said: &str) -> bool {
    let ok = status.is_some_and(|s| s.success());
    let observed = match status {
        Some(s) if !ok && !said.trim().is_empty() => format!("{s}: {}", said.trim()),
        Some(s) => s.code().map_or_else(|| s.to_string(), |c| c.to_string()),
        None => "still running at its deadline (killed)".to_owned(),
    };
    run.checks.push(CheckReport {
        what: format!("{program} exit status"),
        expected: "0".into(),
        observed,
        ok,
    });
    ok
}

/// What arrived in `received` against the first `bytes` bytes of the seed's pattern:
/// intact when all of them arrived and nothing else; ok when intact and the program
/// `exited` 0.
fn file_stream(
    name: &str,
    received: &Path,
    seed: u64,
    bytes: u64,
    exited: bool,
) -> Result<StreamReport, LabError> {
    let check = check_prefix(received, seed)?;
    if let Some(at) = check.first_difference {
        tracing::warn!("{name}: what arrived differs from what was sent from byte {at}");
    }
    let intact = check.bytes == bytes && check.first_difference.is_none();
    Ok(StreamReport {
        name: name.to_owned(),
        bytes_sent: bytes,
        bytes_received: check.bytes,
        sent_sha256: if check.bytes == bytes {
            check.sent_sha256
        } else {
            pattern_sha256(seed, bytes)
        },
        received_sha256: check.received_sha256,
        ok: exited && intact,
    })
}

/// Packets B sends from `src` (its address and port), to wherever A is: the stream
/// B->A as B's link sees it.
fn sent_by(src: SocketAddr) -> PacketFilter {
    PacketFilter {
        protocol: Some(Protocol::Tcp),
        src_ip: Some(src.ip()),
        src_port: Some(src.port()),
        ..PacketFilter::default()
    }
}

/// The capture's records so far, once it has caught up with the packets of the last
/// moments (it hands them over in batches, every 20 ms when idle); none without a
/// capture.
fn captured(run: &Run) -> Vec<PacketRecord> {
    std::thread::sleep(CAPTURE_CATCH_UP);
    run.capture.as_ref().map(|c| c.records()).unwrap_or_default()
}

/// A note with the goodput of a stream A->B (to `b`) on B's link, new payload per second,
/// over `(from, to)`, the program's run, the move included. (A stream B->A gets
/// [`acknowledged_note`].)
fn goodput_note(
    run: &mut Run,
    records: &[PacketRecord],
    name: &str,
    b: SocketAddr,
    (from, to): (SystemTime, SystemTime),
) {
    let g = goodput(records, &PacketFilter::to(Protocol::Tcp, b), from, to);
    run.notes.push(format!(
        "{name}: {:.1} MB of payload on B's link in {:.2} s, {:.1} Mbit/s (from the program's start to its end, the move included)",
        g.bytes as f64 / 1e6,
        g.duration.as_secs_f64(),
        g.bits_per_second() / 1e6
    ));
}

/// A note on a stream B->A (from `b`) as A's acknowledgements on B's link show it (see
/// the module docs): the payload A acknowledged from `started`, the program's start, to
/// its last acknowledgement (which reaches B's link a one-way delay after A sent it, so
/// possibly after `ended`, the program's end), and the longest time around the last move
/// that it acknowledged nothing new, over the window the run's own gaps use (3 s either
/// side) cut at the program's end.
fn acknowledged_note(
    run: &mut Run,
    records: &[PacketRecord],
    name: &str,
    b: SocketAddr,
    (started, ended): (SystemTime, SystemTime),
) {
    const WINDOW: Duration = Duration::from_secs(3);
    let acks = acknowledged(records, b);
    let covering = || acks.iter().filter(|r| r.time >= started && r.payload_len > 0);
    let bytes: u64 = covering().map(|r| u64::from(r.payload_len)).sum();
    let seconds = covering()
        .map(|r| r.time)
        .max()
        .and_then(|last| last.duration_since(started).ok())
        .unwrap_or_default()
        .as_secs_f64();
    let mut note = format!(
        "{name}, as A's acknowledgements on B's link show it: {:.1} MB in {seconds:.2} s, {:.1} Mbit/s (the move included)",
        bytes as f64 / 1e6,
        if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds / 1e6
        } else {
            0.0
        }
    );
    if let Some(moved) = run.moves.last().map(|m| m.started) {
        let after = ended.duration_since(moved).unwrap_or_default().min(WINDOW);
        let filter = PacketFilter::to(Protocol::Tcp, b);
        note += &match handover_gap(&acks, &filter, moved, WINDOW, after) {
            Some(g) => format!(
                "; nothing new acknowledged for {:.1} ms around the move{} (the stream's stall as A saw it; the move's gap above is B's sending, which a probe of B's TCP into the silence can cut short)",
                g.length.as_secs_f64() * 1e3,
                if g.recovered { "" } else { ", nor after it" }
            ),
            None => "; nothing acknowledged before the move".to_owned(),
        };
    }
    run.notes.push(note);
}

/// A's packets to `b` (TCP), each with as payload length the bytes its acknowledgement
/// newly covers (none if it covers nothing new): records of what reached A, as B's link
/// sees them, for [`handover_gap`]. A's flow is its port: its address changes at the
/// move, its port and sequence space do not.
fn acknowledged(records: &[PacketRecord], b: SocketAddr) -> Vec<PacketRecord> {
    let mut highest: HashMap<u16, u32> = HashMap::new();
    records
        .iter()
        .filter(|r| r.protocol == Protocol::Tcp && r.dst == b)
        .map(|r| {
            let newly = match r.tcp {
                Some(tcp) if tcp.flags.has(TcpFlags::ACK) => {
                    let seen = highest.entry(r.src.port()).or_insert(tcp.ack);
                    // Serial arithmetic (RFC 1982): ahead by less than 2^31 is newer.
                    let ahead = tcp.ack.wrapping_sub(*seen) as i32;
                    if ahead > 0 {
                        *seen = tcp.ack;
                    }
                    ahead.max(0) as u32
                }
                _ => 0,
            };
            PacketRecord {
                payload_len: newly,
                ..*r
            }
        })
        .collect()
}

/// Removes the received files once every stream checked out (they are the seed's
/// pattern); a file that failed its check stays for a look.
fn remove_if_intact(run: &Run, files: &[&Path]) {
    if !run.streams.is_empty() && run.streams.iter().all(|s| s.ok) {
        for f in files {
            let _ = fs::remove_file(f);
        }
    }
}

/// Writes a new ed25519 key pair without a passphrase at `path` (and `path.pub`), for
/// this run only.
fn keygen(path: &Path) -> Result<PathBuf, LabError> {
    // A kept directory from an earlier run: ssh-keygen asks before overwriting.
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    run_checked(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "roam-lab",
            "-f",
            &path.display().to_string(),
        ],
        None,
        Duration::from_secs(10),
    )?;
    Ok(path.to_owned())
}

/// The error for a missing OpenSSH program (`find_program` names the package after the
/// program).
fn openssh(program: &'static str) -> impl FnOnce(LabError) -> LabError {
    move |_| {
        LabError::Invalid(format!(
            "{program} is not installed (Debian: apt-get install openssh-server)"
        ))
    }
}

/// Makes sshd's privilege separation directory where it is missing, as Debian's service
/// does at its start (`RuntimeDirectory=sshd`, root's, mode 0755).
fn sshd_privsep_dir() -> Result<(), LabError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = Path::new(SSHD_PRIVSEP_DIR);
    if dir.is_dir() {
        return Ok(());
    }
    let io = |e| {
        LabError::io(
            format!("creating {SSHD_PRIVSEP_DIR} (sshd's privilege separation)"),
            e,
        )
    };
    fs::DirBuilder::new().mode(0o755).create(dir).map_err(io)?;
    // Whatever the umask.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io)
}

/// Refuses a path that would need quoting where it goes (`what`): the run's directory,
/// named with `--keep`, goes into arguments that socat, sshd's configuration or a shell
/// would parse.
fn plain_path(path: &Path, what: &str) -> Result<(), LabError> {
    let text = path.display().to_string();
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@%=~".contains(*c)))
    {
        None => Ok(()),
        Some(c) => Err(LabError::Invalid(format!(
            "the lab's directory {text:?} has {c:?} in it, which {what} would take for syntax: keep the run in a directory named with letters, digits and /._-+@%=~ only"
        ))),
    }
}

/// The last non-empty line of `text`.
fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// The last non-empty line of a log file (empty if there is none).
fn log_tail(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|t| last_line(&t).to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_would_need_quoting_are_refused() {
        assert!(plain_path(Path::new("/tmp/roam-lab-42-ssh"), "x").is_ok());
        assert!(plain_path(Path::new("/root/lab_keep.1/run+2"), "x").is_ok());
        for bad in [
            "/tmp/a b",
            "/tmp/a,b",
            "/tmp/a:b",
            "/tmp/a!b",
            "/tmp/a'b",
            "/tmp/a\"b",
            "/tmp/$x",
        ] {
            let e = plain_path(Path::new(bad), "socat").unwrap_err().to_string();
            assert!(e.contains("socat"), "{bad}: {e}");
        }
    }

    fn ack(time_ms: u64, src: &str, ack: u32, flags: u8) -> PacketRecord {
        PacketRecord {
            time: std::time::UNIX_EPOCH + Duration::from_millis(time_ms),
            outgoing: false,
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            dst: "10.201.3.2:5301".parse().unwrap(),
            payload_len: 0,
            tcp: Some(crate::capture::TcpFields {
                seq: 7,
                ack,
                flags: TcpFlags(flags),
            }),
            frame_len: 66,
        }
    }

    #[test]
    fn acknowledgements_count_what_they_newly_cover_across_a_move_and_a_wrap() {
        let b: SocketAddr = "10.201.3.2:5301".parse().unwrap();
        let (old, new) = ("10.201.1.2:40000", "10.201.2.2:40000");
        let records = [
            ack(0, old, u32::MAX - 999, TcpFlags::ACK),
            ack(1, old, u32::MAX - 99, TcpFlags::ACK),
            // A duplicate, an older one (reordered), a segment without ACK.
            ack(2, old, u32::MAX - 99, TcpFlags::ACK),
            ack(3, old, u32::MAX - 500, TcpFlags::ACK),
            ack(4, old, 5, TcpFlags::SYN),
            // After the move, from A's new address: the same flow (its port), past the
            // wrap of the sequence space.
            ack(200, new, 400, TcpFlags::ACK),
            // Another flow of A's to B, and a packet to another port, apart.
            ack(201, "10.201.2.2:40001", 9, TcpFlags::ACK),
        ];
        let mut other = records[0];
        other.dst = "10.201.3.2:22".parse().unwrap();
        let mut all = records.to_vec();
        all.push(other);
        let covered: Vec<u32> = acknowledged(&all, b).iter().map(|r| r.payload_len).collect();
        assert_eq!(covered, [0, 900, 0, 0, 0, 500, 0]);

        // The silence between the last new acknowledgement before the move and the first
        // after it, as the gap of these records.
        let acks = acknowledged(&all, b);
        let moved = std::time::UNIX_EPOCH + Duration::from_millis(50);
        let filter = PacketFilter::to(Protocol::Tcp, b);
        let g = handover_gap(
            &acks,
            &filter,
            moved,
            Duration::from_secs(1),
            Duration::from_millis(300),
        )
        .unwrap();
        assert_eq!(g.length, Duration::from_millis(199));
        assert!(g.recovered, "{g:?}");
    }

    #[test]
    fn the_last_line_skips_blank_ones() {
        assert_eq!(last_line("a\nb\n\n  \n"), "b");
        assert_eq!(last_line(""), "");
    }
}
