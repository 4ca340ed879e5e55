//! Batches: many entries in one nft transaction (timed: run with `--nocapture` to see
//! the numbers), and a refused batch leaves the data plane exactly as it was, in the
//! kernel and in the mirror.

mod common_nft;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common_nft::*;
use roam_core::DataPlaneCommand;
use roam_core::translate::{Protocol, TableChange, TableError, Tuple};
use roam_linux::nft::NftError;

/// Flow `i` of a batch: a distinct original local address, moved to another one.
fn flow(i: u32) -> (Tuple, Tuple) {
    let (hi, lo) = ((i / 250) as u8, (i % 250 + 1) as u8);
    let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 443);
    let port = 20000 + (i % 30000) as u16;
    let o = Tuple::new(
        Protocol::Tcp,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, hi, lo)), port),
        remote,
    );
    let c = Tuple::new(
        Protocol::Tcp,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 2, hi, lo)), port),
        remote,
    );
    (o, c)
}

fn batch(range: std::ops::Range<u32>) -> Vec<DataPlaneCommand> {
    range
        .map(|i| {
            let (o, c) = flow(i);
            install(o, c, false)
        })
        .collect()
}

/// Elements of one of the plane's maps, as the kernel lists them.
fn kernel_elements(ns: &Netns, map: &str) -> usize {
    let out = ns
        .exec("nft", &["-j", "list", "map", "inet", "roam", map])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("map"))
        .and_then(|m| m.get("elem"))
        .and_then(|e| e.as_array())
        .map_or(0, |e| e.len())
}

#[test]
fn install_times_for_1_100_and_10000_entries_in_process_and_by_nft_processes() {
    if !netns_available() {
        return;
    }
    // libnftables comes with nftables (Debian's libnftables1): in process is the default.
    let mut report = install_times(true);
    report += &install_times(false);
    println!("{report}");
    eprintln!("{report}");
}

/// Times installs and the transactions of a move, all through libnftables or all by
/// `nft` processes (checked by the plane's counters); the report.
fn install_times(in_process: bool) -> String {
    let ns = Netns::new();
    let runner = if in_process {
        "libnftables"
    } else {
        "nft processes"
    };
    let mut report = format!("-- {runner}\n");
    let check_runner = |plane: &roam_linux::nft::NftDataPlane| {
        let c = plane.counters().unwrap();
        assert!(c.transactions > 0);
        let expected = if in_process { c.transactions } else { 0 };
        assert_eq!(c.in_process_transactions, expected, "{runner}");
    };
    for n in [1u32, 100, 10_000] {
        let mut plane = ns.plane_in_process(in_process);
        // Small batches are repeated (the machine is shared: report the median and the
        // best); 10,000 once.
        let rounds = if n < 10_000 { 7 } else { 1 };
        let mut times = Vec::new();
        for round in 0..rounds {
            if round > 0 {
                let removes: Vec<DataPlaneCommand> = (n * (round - 1)..n * round)
                    .map(|i| DataPlaneCommand::Table(TableChange::RemoveFlow { original: flow(i).0 }))
                    .collect();
                plane.apply_batch(&removes).unwrap();
            }
            // Fresh flows each round: a first install, as on a move.
            let cmds = batch(n * round..n * (round + 1));
            let start = Instant::now();
            plane.apply_batch(&cmds).unwrap();
            times.push(start.elapsed());
        }
        times.sort();
        assert_eq!(plane.entries().flows.len(), n as usize);
        assert_eq!(kernel_elements(&ns, "eg4tcp"), n as usize);
        // (Ingress also holds the drain aliases of the previous rounds' flows.)
        assert!(kernel_elements(&ns, "in4tcp") >= n as usize);
        report += &format!(
            "install {n:>6} flow entries in one batch: median {:>8.1} ms, best {:>8.1} ms ({rounds} runs)\n",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
        );
        if n == 10_000 {
            // One more next to 10,000, five times (nft reads the table's chains every
            // time): the median.
            let mut more = Vec::new();
            for i in n..n + 5 {
                let start = Instant::now();
                plane.apply_batch(&batch(i..i + 1)).unwrap();
                more.push(start.elapsed());
            }
            more.sort();
            report += &format!(
                "install      1 more next to {n}:      {:>8.1} ms (median of 5)\n",
                more[2].as_secs_f64() * 1e3
            );
            let removes: Vec<DataPlaneCommand> = (0..n + 5)
                .map(|i| DataPlaneCommand::Table(TableChange::RemoveFlow { original: flow(i).0 }))
                .collect();
            let start = Instant::now();
            plane.apply_batch(&removes).unwrap();
            report += &format!(
                "remove {:>6} flow entries in one batch: {:>8.1} ms\n",
                n + 5,
                start.elapsed().as_secs_f64() * 1e3
            );
            assert!(plane.entries().flows.is_empty());
            assert_eq!(kernel_elements(&ns, "eg4tcp"), 0);
            // Their drain aliases are still there for a while; the kernel expires them.
            assert_eq!(plane.entries().draining.len(), n as usize + 5);
        }
        check_runner(&plane);
        plane.close().unwrap();
    }
    // The transactions on the path of a move, which add only, next to one that deletes
    // (an RCU grace period when nft closes its socket): median of 7, one flow each.
    let mut plane = ns.plane_in_process(in_process);
    let mut times: [Vec<Duration>; 4] = Default::default();
    for i in 0..7 {
        let (o, c) = flow(i);
        let r = c.local.ip();
        let steps = [
            vec![install(o, c, true)],
            vec![install(o, c, false)],
            vec![
                DataPlaneCommand::Unvalidated {
                    remote: r,
                    cap: 16384,
                    received: 200,
                },
                DataPlaneCommand::Validated { remote: r },
            ],
            vec![DataPlaneCommand::Table(TableChange::RemoveFlow { original: o })],
        ];
        for (k, step) in steps.iter().enumerate() {
            let start = Instant::now();
            plane.apply_batch(step).unwrap();
            times[k].push(start.elapsed());
        }
    }
    for (k, what) in [
        "mover: install held entry",
        "mover: release the hold",
        "peer: budget then validated",
        "remove an entry (deletes)",
    ]
    .iter()
    .enumerate()
    {
        times[k].sort();
        report += &format!(
            "{what:<28} median {:>6.1} ms, best {:>6.1} ms\n",
            times[k][3].as_secs_f64() * 1e3,
            times[k][0].as_secs_f64() * 1e3
        );
    }
    check_runner(&plane);
    report
}

#[test]
fn a_refused_batch_changes_nothing() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new();
    let mut plane = ns.plane();
    plane.apply_batch(&batch(0..10)).unwrap();
    let before = plane.entries();
    let counters = plane.local_counters().clone();

    // Refused by the table: the last command reuses flow 0's current tuple (seed 000
    // ¶0069). The ten good ones before it are not applied either.
    let mut cmds = batch(10..20);
    let (o, _) = flow(99);
    cmds.push(install(o, flow(0).1, false));
    match plane.apply_batch(&cmds) {
        Err(NftError::Table(TableError::CurrentInUse { .. })) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(plane.entries(), before);
    assert_eq!(kernel_elements(&ns, "eg4tcp"), 10);
    assert_eq!(plane.local_counters().transactions, counters.transactions);

    // Refused by the kernel: an element the mirror has was deleted behind the plane's
    // back, so removing its flow fails inside the transaction, and the new entries
    // that came before it in the batch are not applied.
    let (victim, _) = flow(3);
    ns.exec(
        "nft",
        &[
            "delete",
            "element",
            "inet",
            "roam",
            "eg4tcp",
            &format!(
                "{{ {} . {} . {} . {} }}",
                victim.local.ip(),
                victim.local.port(),
                victim.remote.ip(),
                victim.remote.port()
            ),
        ],
    )
    .unwrap();
    let mut cmds = batch(10..20);
    cmds.push(DataPlaneCommand::Table(TableChange::RemoveFlow {
        original: victim,
    }));
    match plane.apply_batch(&cmds) {
        Err(NftError::Nft { stderr, .. }) => assert!(!stderr.is_empty()),
        other => panic!("expected nft to refuse, got {other:?}"),
    }
    assert_eq!(plane.entries(), before);
    assert_eq!(kernel_elements(&ns, "eg4tcp"), 9);
    assert_eq!(kernel_elements(&ns, "in4tcp"), 10);
    assert_eq!(
        plane.local_counters().failed_transactions,
        counters.failed_transactions + 1
    );

    // The plane is still consistent for everything else.
    plane.apply_batch(&batch(10..20)).unwrap();
    assert_eq!(plane.entries().flows.len(), 20);
    assert_eq!(kernel_elements(&ns, "eg4tcp"), 19);
}

/// A plane dropped with `keep_on_drop` leaves its table (a restarting daemon must not
/// drop migrated sessions); a closed one deletes it; opening replaces any previous one.
#[test]
fn the_table_outlives_the_plane_only_when_asked() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new();
    let has_table = || ns.exec("nft", &["list", "table", "inet", "roam"]).is_ok();
    {
        let mut plane = roam_linux::nft::NftDataPlane::open_with(roam_linux::nft::NftConfig {
            netns: Some(ns.path()),
            keep_on_drop: true,
            ..Default::default()
        })
        .unwrap();
        plane.apply_batch(&batch(0..3)).unwrap();
    }
    assert!(has_table());
    assert_eq!(kernel_elements(&ns, "eg4tcp"), 3);
    let plane = ns.plane();
    assert_eq!(kernel_elements(&ns, "eg4tcp"), 0, "open replaces the table");
    drop(plane);
    assert!(!has_table());
    let mut plane = ns.plane();
    plane.apply_batch(&batch(0..3)).unwrap();
    plane.detach();
    assert!(has_table());
    ns.plane().close().unwrap();
    assert!(!has_table());
    let _ = Duration::ZERO;
}
