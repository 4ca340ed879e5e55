//! The retransmission kick (roam_linux::icmp, "Retransmission kicks"): Y streams to X,
//! X moves, and Y's whole window is lost at X's old address. Once Y's plane has the move
//! (`Resend`, with the nudge of the same batch), Y's own stack retransmits at once,
//! before any retransmission timeout; without the kick the stream waits for the timeout.
//!
//! Y's route to X's old address has `rto_min 3s`, so that "before the timeout" and
//! "after it" are told apart by what the kernel counted (`TcpExt: TCPTimeouts`,
//! `tcpi_backoff`), not by how long anything took. The times are printed, not asserted.

mod common_nft;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common_nft::*;
use roam_core::DataPlaneCommand;
use roam_core::translate::Protocol;
use roam_linux::sockdiag::TcpInfoQuery;
use sha2::{Digest, Sha256};
use socket2::{Domain, Socket, Type};
use support::wait_for;

/// `getsockopt(TCP_INFO)` of a socket of this process.
fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    // SAFETY: tcp_info is plain data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

/// Y sends to X until told to stop, 64 KiB every 2 ms, from a send buffer of 64 KiB: X
/// reads faster than that, so Y is not held back by X's receive window (it has data in
/// flight when the path goes), and after the loss its buffer is full of unacknowledged
/// data, so it sends nothing new (new data arriving at X beyond the hole would start
/// its recovery by SACK) — as a bulk sender whose whole window is outstanding. X reads
/// and counts. Both digest what they moved.
struct YToX {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Y's socket and X's (clones), to read their TCP_INFO.
    y: TcpStream,
    x: TcpStream,
    sender: std::thread::JoinHandle<(u64, String)>,
    receiver: std::thread::JoinHandle<(u64, String)>,
}

impl YToX {
    fn start(lab: &Lab, x: SocketAddr, y: SocketAddr) -> YToX {
        let listener = lab.y.run(|| TcpListener::bind(y).expect("listen"));
        let xs = lab.x.run(|| {
            let s = Socket::new(Domain::for_address(x), Type::STREAM, None).unwrap();
            s.bind(&x.into()).expect("bind X's end");
            s.connect_timeout(&y.into(), IO_TIMEOUT).expect("connect");
            TcpStream::from(s)
        });
        let (ys, peer) = listener.accept().expect("accept");
        assert_eq!(peer, x);
        socket2::SockRef::from(&ys)
            .set_send_buffer_size(64 << 10)
            .unwrap();
        for s in [&xs, &ys] {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        }
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let y_clone = ys.try_clone().unwrap();
        let x_clone = xs.try_clone().unwrap();
        let halt = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut s = ys;
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            let mut i = 0u8;
            while !halt.load(Ordering::Relaxed) {
                buf.iter_mut().for_each(|b| {
                    *b = i;
                    i = i.wrapping_mul(31).wrapping_add(7);
                });
                if s.write_all(&buf).is_err() {
                    break;
                }
                h.update(&buf);
                n += buf.len() as u64;
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            (n, format!("{:x}", h.finalize()))
        });
        let got = received.clone();
        let receiver = std::thread::spawn(move || {
            let mut s = xs;
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
                got.store(n, Ordering::Relaxed);
            }
            (n, format!("{:x}", h.finalize()))
        });
        YToX {
            received,
            stop,
            y: y_clone,
            x: x_clone,
            sender,
            receiver,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// What X's stack has received of the stream (its application may not have read
    /// it yet).
    fn arrived(&self) -> u64 {
        tcp_info(&self.x).tcpi_bytes_received
    }

    /// Stops the sender and checks that X got every byte Y wrote, intact.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, sent_sha) = self.sender.join().unwrap();
        let (got, got_sha) = self.receiver.join().unwrap();
        assert_eq!((got, got_sha), (sent, sent_sha), "X received what Y sent");
    }
}

/// The old network is gone, as a router would see to it: what Y sends to `x1` is lost
/// on the wire (dropped as it arrives at X, before roam's rewrite there), and so is what
/// X sends from it (dropped as it arrives at Y). Unlike `Lab::cut_old_path`, which drops
/// Y's packets in Y's own output path: a local drop is a failed send to Y's TCP (the
/// segment stays unsent and nothing is lost), not a loss.
fn lose_the_old_path(lab: &Lab) {
    let l3 = if lab.a.x1.is_ipv6() { "ip6" } else { "ip" };
    let x1 = lab.a.x1;
    for (ns, dev, field) in [(&lab.x, &lab.x_if, "daddr"), (&lab.y, &lab.y_if, "saddr")] {
        let script = format!(
            "table inet lab {{
  chain pre {{ type filter hook prerouting priority -400; iifname {dev} {l3} {field} {x1} drop; }}
}}
"
        );
        let path = std::env::temp_dir().join(format!("{}-lose.nft", ns.name));
        std::fs::write(&path, script).unwrap();
        let r = ns.exec("nft", &["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        r.unwrap();
    }
}

/// The `TcpExt` counters of /proc/net/netstat in `ns`, in the file's order.
fn tcp_ext(ns: &Netns) -> Vec<(String, u64)> {
    let text = ns.exec("cat", &["/proc/net/netstat"]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter_map(|pair| {
            let [head, vals] = pair else { return None };
            let names = head.strip_prefix("TcpExt:")?;
            let vals = vals.strip_prefix("TcpExt:")?;
            Some(
                names
                    .split_whitespace()
                    .zip(vals.split_whitespace())
                    .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0)))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}

/// What one run saw.
struct Outcome {
    /// `TcpExt: TCPTimeouts` in Y's namespace grew by this much between the loss and the
    /// moment the stream moved again at X.
    timeouts: u64,
    /// Y's socket at that moment.
    backoff: u8,
    retransmitted: u32,
    pmtu: u32,
    kicks: u64,
    kick_errors: u64,
}

fn y_to_x_after_a_move(a: Addrs, kick: bool) -> Option<Outcome> {
    if !netns_available() {
        return None;
    }
    let lab = Lab::new(a);
    // A retransmission timeout of 3 s at least on Y's side of the flow (the route to X's
    // old address, which Y's socket uses whatever the translation does).
    let host = if a.x1.is_ipv6() { 128 } else { 32 };
    lab.y
        .ip(&format!("route add {}/{host} dev {} rto_min 3s", a.x1, lab.y_if));
    let (mut px, mut py) = (lab.x.plane_with_relay(kick), lab.y.plane_with_relay(kick));
    let (x, y) = (sa(a.x1, 40000), sa(a.y, 5001));
    let flow = YToX::start(&lab, x, y);
    wait_for(Duration::from_secs(10), "4 MiB at X", || {
        (flow.received() >= 4 << 20).then_some(())
    });

    // The old path goes, then X moves: everything Y has in flight is lost, and so is
    // its tail-loss probe (sent within milliseconds). In that order, X holds no data
    // beyond a hole (which its ACKs would report in SACK blocks, and which would start
    // Y's recovery by itself), as when a host leaves a network.
    lose_the_old_path(&lab);
    lab.move_x();
    std::thread::sleep(Duration::from_millis(100));
    let before = tcp_info(&flow.y);
    let timeouts_before = lab.y.mib("TcpExt", "TCPTimeouts");
    let ext_before = tcp_ext(&lab.y);
    let stalled_at = flow.arrived();
    assert!(before.tcpi_unacked > 0, "Y has a window outstanding");
    assert_eq!(before.tcpi_backoff, 0, "no timeout yet (rto_min 3s)");
    // sock_diag sees what getsockopt sees (the relay reads the socket that way).
    let diag = lab
        .y
        .run(|| TcpInfoQuery::open().unwrap().get(&tuple(Protocol::Tcp, y, x)))
        .expect("sock_diag")
        .expect("Y's socket, found by its tuple");
    assert_eq!(
        (diag.snd_mss, diag.pmtu, diag.backoff),
        (before.tcpi_snd_mss, before.tcpi_pmtu, 0)
    );
    assert!(diag.unacked > 0);

    // The move's entries (Y's first), then what Y's plane gets once X's new address is
    // proven (`Resend` and the nudge of the same batch), and X's own nudge.
    let capture = Capture::open(&lab.x, &lab.x_if);
    let x_orig = tuple(Protocol::Tcp, x, y);
    let x_cur = tuple(Protocol::Tcp, sa(a.x2, 40000), y);
    install_move(&mut px, &mut py, x_orig, x_cur, false);
    let y_orig = x_orig.reversed();
    let started = Instant::now();
    let wall = SystemTime::now();
    py.apply_batch(&[
        DataPlaneCommand::Resend { original: y_orig },
        DataPlaneCommand::Nudge {
            original: y_orig,
            fast_retransmit: false,
        },
    ])
    .unwrap();
    px.apply_batch(&[DataPlaneCommand::Nudge {
        original: x_orig,
        fast_retransmit: false,
    }])
    .unwrap();

    // Data arrives at X again: what had happened by then?
    wait_for(Duration::from_secs(15), "the stream to move again", || {
        (flow.arrived() > stalled_at).then_some(())
    });
    let resumed = started.elapsed();
    let timeouts = lab.y.mib("TcpExt", "TCPTimeouts") - timeouts_before;
    let after = tcp_info(&flow.y);
    let c = py.local_counters();
    // What Y's stack counted meanwhile (how it recovered), for the log.
    let changed: Vec<String> = tcp_ext(&lab.y)
        .into_iter()
        .zip(ext_before)
        .filter(|((_, now), (_, then))| now != then)
        .map(|((k, now), (_, then))| format!("{k} +{}", now.saturating_sub(then)))
        .collect();

    // Reported, not asserted: from Y's trigger (its first segment at X after the
    // commands) to its first data segment there.
    let from_y = |r: &roam_lab::capture::PacketRecord| r.src.ip() == a.y && r.time >= wall;
    let trigger = capture.find(Duration::from_secs(1), from_y);
    let data = capture.find(Duration::from_secs(1), |r| from_y(r) && r.payload_len > 0);
    let gap = match (trigger, data) {
        (Some(t), Some(d)) => format!("{:?}", d.time.duration_since(t.time).unwrap_or_default()),
        _ => "not captured".into(),
    };
    eprintln!(
        "{} kick={kick}: stream moved again {resumed:?} after the commands; Y's first \
         segment at X to its first data there: {gap}; timeouts {timeouts}, backoff {}, \
         retransmitted {} segments, pmtu {} -> {}, unacked before {}; Y's counters: \
         armed {} icmp {:?}; Y's TcpExt: {}",
        if a.x1.is_ipv6() { "IPv6" } else { "IPv4" },
        after.tcpi_backoff,
        after.tcpi_total_retrans - before.tcpi_total_retrans,
        before.tcpi_pmtu,
        after.tcpi_pmtu,
        before.tcpi_unacked,
        c.kicks_armed,
        c.icmp,
        changed.join(", "),
    );
    flow.finish();
    Some(Outcome {
        timeouts,
        backoff: after.tcpi_backoff,
        retransmitted: after.tcpi_total_retrans - before.tcpi_total_retrans,
        pmtu: after.tcpi_pmtu,
        kicks: c.icmp.retransmit_kicks,
        kick_errors: c.icmp.kick_errors,
    })
}

fn the_kick_retransmits_before_any_timeout(a: Addrs) {
    let Some(o) = y_to_x_after_a_move(a, true) else {
        return;
    };
    assert_eq!((o.kicks, o.kick_errors), (1, 0), "one kick, injected");
    assert_eq!(o.timeouts, 0, "Y retransmitted before any timeout");
    assert_eq!(o.backoff, 0);
    assert!(o.retransmitted > 0, "Y retransmitted");
    // The cost: the socket's path MTU is one byte lower.
    assert_eq!(o.pmtu, 1499);
}

#[test]
fn a_kicked_peer_retransmits_its_lost_window_before_any_timeout_over_ipv4() {
    the_kick_retransmits_before_any_timeout(V4);
}

#[test]
fn a_kicked_peer_retransmits_its_lost_window_before_any_timeout_over_ipv6() {
    the_kick_retransmits_before_any_timeout(V6);
}

/// The reference: the same move and nudges without the kick (no relay on Y). X's nudge
/// ACK reaches Y, but a duplicate ACK without SACK blocks starts no recovery: the stream
/// waits for Y's retransmission timeout.
#[test]
fn without_the_kick_the_peer_waits_for_its_timeout() {
    let Some(o) = y_to_x_after_a_move(V4, false) else {
        return;
    };
    assert_eq!(o.kicks, 0);
    assert!(o.timeouts >= 1, "the stream moved again only after a timeout");
    assert_eq!(o.pmtu, 1500, "no path MTU change without the kick");
}
