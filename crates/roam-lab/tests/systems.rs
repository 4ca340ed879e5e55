//! The baselines `roam bench` compares roam with, each on the standard topology: the
//! kernel's Multipath TCP carries a stream across make-before-break and
//! break-before-make moves without falling back to TCP, a WireGuard overlay
//! (`wireguard-go`) carries one across the lab's moves by its endpoint roaming (and
//! does not without a socket rebind), the request/response workload checks every
//! answer, and `mptcpize` puts an unmodified program on Multipath TCP.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use roam_lab::capture::{Capture, CaptureOptions, Gap, PacketFilter, handover_gap};
use roam_lab::netns::ChildOutput;
use roam_lab::systems::mptcp::{Mptcp, MptcpCounters, MptcpMove};
use roam_lab::systems::wireguard::WireGuard;
use roam_lab::systems::{Carrier, IPPROTO_MPTCP};
use roam_lab::topology::{B_IF, Family, MoveTimes, Subnet, Topology, TopologyOptions};
use roam_lab::traffic::{RrClient, RrServer, SinkReport, SourceReport, TcpSink, TcpSource, pattern_sha256};

/// Namespaces of this file's labs (their own prefix: WireGuard's interface names carry
/// it too).
const PREFIX: &str = "rsys";
/// More than a stream sends before it is stopped: the sources are still writing at
/// every move. (A Multipath TCP connection whose application has shut its sending side
/// gets no new subflow: see `a_closing_multipath_tcp_connection_gets_no_new_subflow`.)
const ENDLESS: u64 = 1 << 40;
const DEADLINE: Duration = Duration::from_secs(60);
/// Between two moves, and from the last move to stopping the streams.
const INTERVAL: Duration = Duration::from_millis(1500);

fn topology(seed: u64) -> Topology {
    topology_with(seed, TopologyOptions::default())
}

fn topology_with(seed: u64, options: TopologyOptions) -> Topology {
    println!("seed {seed:#x}");
    Topology::build(TopologyOptions {
        seed,
        prefix: PREFIX.into(),
        ..options
    })
    .expect("topology")
}

/// One bulk stream A->B across the moves.
struct Stream {
    family: Family,
    seed: u64,
    sink: SinkReport,
    source: SourceReport,
    /// The handover gap around each move, from B's capture.
    gaps: Vec<Option<Gap>>,
    /// Bytes at B when the moves began and an interval after the last one.
    at_first_move: u64,
    after_last_move: u64,
}

/// Streams A->B per family over `carrier` (its endpoint and socket protocol), moves A
/// `moves` times [`INTERVAL`] apart once every stream flows and the carrier is ready,
/// then stops the sources and lets the sinks read to the end of their streams.
fn bulk_across_moves(
    topo: &Topology,
    carrier: &mut dyn Carrier,
    families: &[Family],
    moves: usize,
) -> (Vec<Stream>, Vec<MoveTimes>) {
    let capture = Capture::start(
        topo.b(),
        B_IF,
        CaptureOptions {
            max_records: 2_000_000,
            ..CaptureOptions::default()
        },
    )
    .expect("capture");
    let protocol = carrier.tcp_protocol();
    let mut running = Vec::new();
    for (i, &family) in families.iter().enumerate() {
        let port = 5001 + i as u16;
        let seed = 0xb0 + i as u64;
        let to = carrier.b_endpoint(topo, family, port);
        let sink = TcpSink::start_with(topo.b(), to, DEADLINE, protocol).expect("sink");
        let source = TcpSource::start_with(topo.a(), to, ENDLESS, seed, DEADLINE, protocol).expect("source");
        running.push((family, port, seed, sink, source));
    }
    let flowing = Instant::now() + Duration::from_secs(10);
    while running.iter().any(|s| s.3.received() < 1_000_000) {
        assert!(Instant::now() < flowing, "the streams did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in &running {
        carrier.wait_ready(topo, s.1).expect("carrier ready");
    }
    let at_first_move: Vec<u64> = running.iter().map(|s| s.3.received()).collect();
    let mut times = Vec::new();
    for _ in 0..moves {
        times.push(carrier.move_a(topo).expect("move"));
        std::thread::sleep(INTERVAL);
    }
    let after_last_move: Vec<u64> = running.iter().map(|s| s.3.received()).collect();
    let mut streams = Vec::new();
    let mut ports = Vec::new();
    for (i, (family, port, seed, sink, source)) in running.into_iter().enumerate() {
        // The source closes its socket: what the kernel took still goes out, then the
        // end of the stream.
        let source = source.stop().expect("source report");
        let all_in = Instant::now() + Duration::from_secs(20);
        while sink.received() < source.bytes && Instant::now() < all_in {
            std::thread::sleep(Duration::from_millis(20));
        }
        let sink = if sink.received() >= source.bytes {
            sink.join()
        } else {
            sink.stop()
        }
        .expect("sink report");
        ports.push(port);
        streams.push(Stream {
            family,
            seed,
            sink,
            source,
            gaps: Vec::new(),
            at_first_move: at_first_move[i],
            after_last_move: after_last_move[i],
        });
    }
    let records = capture.stop().expect("capture").records;
    for (s, port) in streams.iter_mut().zip(ports) {
        let filter: PacketFilter = carrier.wire_filter(topo, s.family, port);
        s.gaps = times
            .iter()
            .map(|t| handover_gap(&records, &filter, t.started, Duration::from_millis(200), INTERVAL))
            .collect();
        println!(
            "{} {:?}: {} of {} bytes sent, end of stream {}; gaps {}",
            carrier.label(),
            s.family,
            s.sink.bytes,
            s.source.bytes,
            s.sink.completed,
            s.gaps
                .iter()
                .map(|g| match g {
                    Some(g) => format!(
                        "{:.1} ms{}",
                        ms(g.length),
                        if g.recovered { "" } else { " (not recovered)" }
                    ),
                    None => "none".into(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    (streams, times)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every byte the source's kernel took arrived, in order, and the stream ended
/// normally; it made progress across the moves, and every gap closed.
fn assert_intact(s: &Stream) {
    assert!(s.sink.completed, "{:?}: no end of stream: {:?}", s.family, s.sink);
    assert_eq!(s.sink.bytes, s.source.bytes, "{:?}: bytes lost", s.family);
    assert_eq!(
        s.sink.sha256, s.source.sha256,
        "{:?}: B received other bytes",
        s.family
    );
    assert_eq!(s.source.sha256, pattern_sha256(s.seed, s.source.bytes));
    assert!(s.after_last_move > s.at_first_move);
    for gap in &s.gaps {
        let gap = gap.expect("the stream was flowing at every move");
        assert!(gap.recovered, "{:?}: {gap:?}", s.family);
    }
}

fn print_notes(carrier: &dyn Carrier) {
    for note in carrier.notes() {
        println!("  {note}");
    }
}

/// Both families' streams are Multipath TCP from the start to the end (MP_CAPABLE on
/// every connection, no fallback), joined by a subflow from every new address.
fn assert_multipath_throughout(mptcp: &Mptcp, connections: u64, moves: u64) {
    let [a, b] = mptcp.counters().expect("counters");
    println!("  A: {}\n  B: {}", a.nonzero(), b.nonzero());
    assert_eq!(mptcp.fallbacks().expect("counters"), 0, "A: {a:?} B: {b:?}");
    assert!(a.get("MPCapableSYNACKRX") >= connections, "{a:?}");
    assert!(b.get("MPCapableACKRX") >= connections, "{b:?}");
    // One join per connection and move (both families have endpoints on every subnet).
    assert!(a.get("MPJoinSynAckRx") >= connections * moves, "{a:?}");
}

fn mptcp_bulk_across_moves(how: MptcpMove, seed: u64) {
    let topo = topology(seed);
    let limits = |ns: &roam_lab::Ns| ns.ip(&["mptcp", "limits", "show"]).expect("limits").stdout;
    let limits_before = [limits(topo.a()), limits(topo.b())];
    let mut mptcp = Mptcp::start(&topo, Family::V4, how).expect("multipath tcp");
    assert_eq!(mptcp.tcp_protocol(), IPPROTO_MPTCP);
    // A second one on the same hosts is refused (its stop would remove the first's
    // endpoints).
    assert!(Mptcp::start(&topo, Family::V4, how).is_err());
    let (streams, times) = bulk_across_moves(&topo, &mut mptcp, &Family::BOTH, 2);
    print_notes(&mptcp);
    for t in &times {
        println!(
            "  move {:?} -> {:?}: old path gone {:.1} ms after the start, routes {:.1} ms",
            t.from,
            t.to,
            ms(t.old_removed.duration_since(t.started).unwrap_or_default()),
            ms(t.duration())
        );
    }
    for s in &streams {
        assert_intact(s);
    }
    assert_multipath_throughout(&mptcp, 2, 2);
    assert_eq!(topo.a_subnet(), Subnet::One, "two moves bring A back");
    mptcp.stop(&topo).expect("stop");
    // The stop leaves A as the lab's move would: no endpoint, no rule of ours.
    assert_eq!(
        topo.a().ip(&["mptcp", "endpoint", "show"]).unwrap().stdout.trim(),
        ""
    );
    for flag in ["-4", "-6"] {
        let rules = topo.a().ip(&[flag, "rule", "show"]).unwrap().stdout;
        assert!(
            !rules.contains("lookup 201") && !rules.contains("lookup 202"),
            "{rules}"
        );
        let table = topo
            .a()
            .ip(&[flag, "route", "show", "table", "201"])
            .unwrap()
            .stdout;
        assert_eq!(table.trim(), "", "{table}");
    }
    assert_eq!([limits(topo.a()), limits(topo.b())], limits_before);
}

#[test]
fn multipath_tcp_streams_stay_multipath_and_intact_across_make_before_break_moves() {
    if !support::lab_enabled() {
        return;
    }
    mptcp_bulk_across_moves(MptcpMove::MakeBeforeBreak, 0x5157_0001);
}

/// On this kernel (6.18) a Multipath TCP connection outlives having no subflow at all:
/// the new endpoint's subflow joins it and the data lost with the old one is sent
/// again at the connection level.
#[test]
fn multipath_tcp_streams_stay_multipath_and_intact_across_break_before_make_moves() {
    if !support::lab_enabled() {
        return;
    }
    mptcp_bulk_across_moves(MptcpMove::BreakBeforeMake, 0x5157_0002);
}

fn wireguard_bulk_across_moves(underlay: Family, seed: u64) {
    let topo = topology(seed);
    let mut wg = WireGuard::start(&topo, underlay).expect("wireguard");
    let (streams, _) = bulk_across_moves(&topo, &mut wg, &Family::BOTH, 2);
    print_notes(&wg);
    for s in &streams {
        assert_intact(s);
    }
    // B learned where A went from A's packets.
    let a_now = SocketAddr::new(topo.a_address(underlay), roam_lab::systems::wireguard::WG_PORT);
    assert_eq!(wg.b_sees_a_at().expect("wg show"), Some(a_now));
    let (a_if, _) = wg.interfaces();
    let socket = format!("/var/run/wireguard/{a_if}.sock");
    wg.stop(&topo).expect("stop");
    assert!(!std::path::Path::new(&socket).exists(), "{socket} left behind");
}

#[test]
fn wireguard_overlay_streams_survive_lab_moves_over_ipv4() {
    if !support::lab_enabled() {
        return;
    }
    wireguard_bulk_across_moves(Family::V4, 0x5157_0003);
}

#[test]
fn wireguard_overlay_streams_survive_lab_moves_over_ipv6() {
    if !support::lab_enabled() {
        return;
    }
    wireguard_bulk_across_moves(Family::V6, 0x5157_0004);
}

/// Why the WireGuard carrier rebinds: this `wireguard-go` keeps sending from the
/// address A lost, so without a rebind the overlay stalls for good and B never hears
/// of A's new address.
#[test]
fn without_a_socket_rebind_wireguard_go_does_not_roam() {
    if !support::lab_enabled() {
        return;
    }
    let topo = topology(0x5157_0005);
    let mut wg = WireGuard::start(&topo, Family::V4).expect("wireguard");
    wg.set_rebind_on_move(false);
    let old = SocketAddr::new(topo.a_address(Family::V4), roam_lab::systems::wireguard::WG_PORT);
    let to = wg.b_endpoint(&topo, Family::V4, 5001);
    let sink = TcpSink::start(topo.b(), to, Duration::from_secs(20)).expect("sink");
    let source = TcpSource::start(topo.a(), to, 1 << 40, 7, Duration::from_secs(20)).expect("source");
    let flowing = Instant::now() + Duration::from_secs(10);
    while sink.received() < 1_000_000 {
        assert!(Instant::now() < flowing, "the stream did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    wg.move_a(&topo).expect("move");
    std::thread::sleep(Duration::from_secs(1));
    let one_second_after = sink.received();
    std::thread::sleep(Duration::from_secs(3));
    let four_seconds_after = sink.received();
    print_notes(&wg);
    assert_eq!(
        one_second_after, four_seconds_after,
        "the overlay still carried data"
    );
    assert_eq!(
        wg.b_sees_a_at().expect("wg show"),
        Some(old),
        "B heard from A's new address"
    );
    // A rebind is all it takes.
    wg.set_rebind_on_move(true);
    wg.move_a(&topo).expect("move back");
    wg.move_a(&topo).expect("move again");
    let recovered = Instant::now() + Duration::from_secs(15);
    while sink.received() < four_seconds_after + 1_000_000 {
        assert!(Instant::now() < recovered, "no recovery after a rebind");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = source.stop();
    let _ = sink.stop();
    wg.stop(&topo).expect("stop");
}

/// Runs request/response transactions over one connection for `run`, moving A
/// halfway when `carrier` is given; returns the client's report and the server's
/// transaction count.
fn request_response(
    topo: &Topology,
    carrier: Option<&mut dyn Carrier>,
    port: u16,
    run: Duration,
) -> (
    roam_lab::traffic::RrReport,
    roam_lab::traffic::RrServerReport,
    Option<(u64, u64)>,
) {
    let (protocol, to) = match &carrier {
        Some(c) => (c.tcp_protocol(), c.b_endpoint(topo, Family::V4, port)),
        None => (0, SocketAddr::new(topo.b_address(Family::V4), port)),
    };
    let server = RrServer::start(topo.b(), to, 200, 2000, DEADLINE, protocol).expect("rr server");
    let client = RrClient::start(topo.a(), to, 200, 2000, 0x77, DEADLINE, protocol).expect("rr client");
    let mut around_move = None;
    if let Some(carrier) = carrier {
        carrier.wait_ready(topo, port).expect("ready");
        std::thread::sleep(run / 2);
        let before = client.transactions();
        let moved: SystemTime = carrier.move_a(topo).expect("move").started;
        std::thread::sleep(run / 2);
        println!(
            "{}: {} transactions before the move, {} in the {:?} after ({:?} since it)",
            carrier.label(),
            before,
            client.transactions() - before,
            run / 2,
            moved.elapsed().unwrap_or_default()
        );
        around_move = Some((before, client.transactions()));
        print_notes(carrier);
    } else {
        std::thread::sleep(run);
    }
    let report = client.stop().expect("rr client report");
    let served = server.stop().expect("rr server report");
    println!(
        "  {} transactions, {} mismatches, longest {:.1} ms, errors {:?}; server: {served:?}",
        report.transactions,
        report.mismatches,
        ms(report.max_latency),
        report.errors
    );
    (report, served, around_move)
}

#[test]
fn request_response_transactions_verify_over_tcp_and_across_multipath_tcp_moves() {
    if !support::lab_enabled() {
        return;
    }
    let topo = topology(0x5157_0006);
    let (report, served, _) = request_response(&topo, None, 6001, Duration::from_secs(1));
    // 20 ms RTT: about 50 a second.
    assert!(report.transactions >= 10, "{report:?}");
    assert_eq!(report.mismatches, 0);
    assert!(report.alive && report.errors.is_empty(), "{report:?}");
    assert_eq!(report.bytes_received, report.transactions * 2000);
    assert_eq!(report.completed_at.len() as u64, report.transactions);
    assert!(served.transactions >= report.transactions, "{served:?}");
    assert_eq!(served.connections, 1);
    assert_eq!(served.out_of_sequence, 0);
    assert!(served.errors.is_empty(), "{served:?}");

    // Each way of moving, one carrier after the other on the same topology.
    for (how, port) in [
        (MptcpMove::MakeBeforeBreak, 6002),
        (MptcpMove::BreakBeforeMake, 6003),
    ] {
        let mut mptcp = Mptcp::start(&topo, Family::V4, how).expect("multipath tcp");
        let (report, served, around) =
            request_response(&topo, Some(&mut mptcp), port, Duration::from_secs(4));
        let (before, after) = around.expect("moved");
        assert!(
            after > before,
            "{how:?}: no transaction after the move: {report:?}"
        );
        assert_eq!(report.mismatches, 0, "{how:?}");
        assert!(report.alive && report.errors.is_empty(), "{how:?}: {report:?}");
        assert_eq!(served.out_of_sequence, 0, "{how:?}");
        assert_multipath_throughout(&mptcp, 1, 1);
        mptcp.stop(&topo).expect("stop");
    }
}

#[test]
fn request_response_rejects_requests_too_short_to_carry_their_number() {
    if !support::lab_enabled() {
        return;
    }
    let topo = topology(0x5157_0007);
    let to = SocketAddr::new(topo.b_address(Family::V4), 6001);
    assert!(RrServer::start(topo.b(), to, 7, 10, DEADLINE, 0).is_err());
    assert!(RrClient::start(topo.a(), to, 7, 10, 1, DEADLINE, 0).is_err());
}

#[test]
fn mptcpize_runs_an_unmodified_iperf3_over_multipath_tcp() {
    if !support::lab_enabled() {
        return;
    }
    let topo = topology(0x5157_0008);
    let mut mptcp = Mptcp::start(&topo, Family::V4, MptcpMove::MakeBeforeBreak).expect("multipath tcp");
    let b = topo.b_address(Family::V4).to_string();
    let wrap = mptcp.wrap_command();
    assert_eq!(wrap, ["mptcpize", "run"]);
    let mut server: Vec<&str> = wrap.iter().map(String::as_str).collect();
    server.extend(["iperf3", "-s", "-1", "-B", &b, "-p", "5201"]);
    let server = topo
        .b()
        .spawn(&server, ChildOutput::Collect)
        .expect("iperf3 server");
    let listening = Instant::now() + Duration::from_secs(10);
    while !topo
        .b()
        .exec(&["ss", "-MltnH"])
        .is_ok_and(|o| o.stdout.contains(":5201"))
    {
        assert!(
            Instant::now() < listening,
            "iperf3 did not listen: {}",
            server.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = [
        MptcpCounters::read(topo.a()).expect("counters"),
        MptcpCounters::read(topo.b()).expect("counters"),
    ];
    let mut client: Vec<&str> = wrap.iter().map(String::as_str).collect();
    client.extend(["iperf3", "-c", &b, "-p", "5201", "-t", "1"]);
    let out = topo
        .a()
        .exec_timeout(&client, Duration::from_secs(20))
        .expect("iperf3 client");
    println!("{}", out.stdout);
    assert!(out.stdout.contains("receiver"), "{}", out.stdout);
    let a = MptcpCounters::read(topo.a()).expect("counters").since(&before[0]);
    let b = MptcpCounters::read(topo.b()).expect("counters").since(&before[1]);
    println!("A: {}\nB: {}", a.nonzero(), b.nonzero());
    // iperf3's control connection and its data connection, both Multipath TCP.
    assert!(a.get("MPCapableSYNTX") >= 2, "{a:?}");
    assert!(a.get("MPCapableSYNACKRX") >= 2, "{a:?}");
    assert!(b.get("MPCapableSYNRX") >= 2, "{b:?}");
    assert_eq!(a.fallbacks() + b.fallbacks(), 0, "A: {a:?} B: {b:?}");
    let _ = server.wait_timeout(Duration::from_secs(5));
    mptcp.stop(&topo).expect("stop");
}

/// A limit of Multipath TCP that the bench's endless streams stay clear of: once the
/// application has shut its sending side (here: written everything and closed while
/// the data still waits in the kernel), the connection is no longer established and
/// the path manager opens no subflow for it, so a make-before-break move leaves it
/// without a path and what was still queued never arrives.
#[test]
fn a_closing_multipath_tcp_connection_gets_no_new_subflow() {
    if !support::lab_enabled() {
        return;
    }
    // A slow link keeps the data queued at A long after the application is done.
    let topo = topology_with(
        0x5157_0009,
        TopologyOptions {
            rate_bps: 2_000_000,
            ..TopologyOptions::default()
        },
    );
    let mut mptcp = Mptcp::start(&topo, Family::V4, MptcpMove::MakeBeforeBreak).expect("multipath tcp");
    let to = mptcp.b_endpoint(&topo, Family::V4, 5001);
    let bytes = 1_000_000;
    let sink = TcpSink::start_with(topo.b(), to, Duration::from_secs(30), IPPROTO_MPTCP).expect("sink");
    let source = TcpSource::start_with(topo.a(), to, bytes, 3, Duration::from_secs(30), IPPROTO_MPTCP)
        .expect("source");
    mptcp.wait_ready(&topo, 5001).expect("ready");
    let source = source.join().expect("source report");
    assert!(source.completed, "{source:?}");
    let joins_before = MptcpCounters::read(topo.a())
        .expect("counters")
        .get("MPJoinSynTx");
    let at_move = sink.received();
    mptcp.move_a(&topo).expect("move");
    let closing: Vec<_> = mptcp.connections().expect("ss");
    println!("at the move B had {at_move} of {bytes} bytes; A's connections after it: {closing:?}");
    assert!(
        at_move < bytes,
        "everything arrived before the move: nothing to show"
    );
    std::thread::sleep(Duration::from_secs(4));
    let joins_after = MptcpCounters::read(topo.a())
        .expect("counters")
        .get("MPJoinSynTx");
    print_notes(&mptcp);
    let report = sink.stop().expect("sink report");
    println!(
        "B got {} bytes, end of stream: {}",
        report.bytes, report.completed
    );
    assert_eq!(
        joins_after, joins_before,
        "a subflow was tried for the closing connection"
    );
    assert!(!report.completed && report.bytes < bytes, "{report:?}");
    assert!(mptcp.notes().iter().any(|n| n.contains("closing at a move")));
    mptcp.stop(&topo).expect("stop");
}
