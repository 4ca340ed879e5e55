//! A lab leaves nothing behind: not when dropped, not when the test panics, not on
//! SIGINT; and leftovers of dead runs are removed.

mod support;

use std::io::{BufRead, BufReader};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use roam_lab::netns::{ChildOutput, LabError, cleanup_stale, run_checked};
use roam_lab::topology::{Topology, TopologyOptions};
use roam_lab::{Lab, Ns};

fn listed_namespaces() -> Vec<String> {
    let out = run_checked("ip", &["netns", "list"], None, Duration::from_secs(5)).expect("ip netns list");
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn sleeper(ns: &Ns) -> roam_lab::netns::Child {
    ns.spawn(&["sleep", "30"], ChildOutput::Discard).expect("spawn")
}

#[test]
fn dropping_a_lab_kills_its_processes_and_deletes_its_namespaces() {
    if !support::lab_enabled() {
        return;
    }
    let lab = Lab::new().expect("lab");
    let ns = lab.add_ns("x").expect("namespace");
    let child = sleeper(&ns);
    let pid = child.pid();
    let names = lab.namespaces();
    assert!(listed_namespaces().contains(&names[0]));
    // The process runs inside the namespace.
    let out = ns.exec(&["ip", "-o", "link"]).expect("exec");
    assert!(out.stdout.contains("lo"));
    assert!(
        run_checked("ip", &["netns", "pids", ns.name()], None, Duration::from_secs(5))
            .unwrap()
            .stdout
            .contains(&pid.to_string())
    );

    drop(lab);
    let listed = listed_namespaces();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} still in {listed:?}"
    );
    assert!(!process_exists(pid), "child {pid} survived its lab");
    assert!(child.try_wait().unwrap().is_some());
}

#[test]
fn a_panic_inside_a_test_still_cleans_up() {
    if !support::lab_enabled() {
        return;
    }
    let seen = Mutex::new((Vec::new(), 0));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let topo = Topology::build(TopologyOptions::default()).expect("topology");
        let child = sleeper(topo.b());
        *seen.lock().unwrap() = (topo.lab().namespaces(), child.pid());
        // A panic on a thread inside a namespace comes back as an error...
        let err = topo.a().run(|| panic!("inside")).unwrap_err();
        assert!(matches!(err, LabError::ThreadPanicked { .. }), "{err}");
        // ...and one in the test itself unwinds through the topology.
        panic!("deliberate panic with a live topology");
    }));
    assert!(outcome.is_err());
    let (names, pid) = seen.into_inner().unwrap();
    assert_eq!(names.len(), 4);
    let listed = listed_namespaces();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} still in {listed:?}"
    );
    assert!(!process_exists(pid));
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed_and_live_ones_kept() {
    if !support::lab_enabled() {
        return;
    }
    // A prefix of its own: labs of other tests clean "rl" leftovers concurrently.
    let prefix = "rlst";
    let mut dead = Command::new("true").spawn().expect("spawn");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    let stale = format!("{prefix}{dead_pid}x0a");
    let live = format!("{prefix}{}x999a", std::process::id());
    let other = format!("{prefix}x{dead_pid}");
    for name in [&stale, &live, &other] {
        run_checked("ip", &["netns", "add", name], None, Duration::from_secs(5)).expect("netns add");
    }
    let removed = cleanup_stale(prefix);
    let listed = listed_namespaces();
    for name in [&live, &other] {
        let _ = run_checked("ip", &["netns", "del", name], None, Duration::from_secs(5));
    }
    let removed = removed.expect("cleanup_stale");
    assert_eq!(removed, vec![stale.clone()]);
    assert!(!listed.contains(&stale));
    assert!(listed.contains(&live) && listed.contains(&other));
}

/// The environment variable that turns [`signal_child_holds_a_lab_until_killed`] on.
const SIGNAL_CHILD: &str = "ROAM_LAB_SIGNAL_CHILD";

#[test]
fn sigint_cleans_every_live_lab_before_exiting() {
    if !support::lab_enabled() || std::env::var_os(SIGNAL_CHILD).is_some() {
        return;
    }
    // This test binary again, running only the helper below, which builds a lab and
    // waits.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "signal_child_holds_a_lab_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SIGNAL_CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn test binary");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test NAME ... " on the same line first.
            if let Some(at) = line.find("LAB ") {
                let _ = tx.send(line[at + 4..].to_owned());
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the helper did not report its lab");
    };
    let mut parts = line.split_whitespace();
    let pid: u32 = parts.next().unwrap().parse().unwrap();
    let names: Vec<String> = parts.map(str::to_owned).collect();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| listed_namespaces().contains(n)));

    // SAFETY: a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the helper did not exit on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
    let listed = listed_namespaces();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "{names:?} still in {listed:?}"
    );
    assert!(!process_exists(pid), "the lab's process {pid} survived");
}

/// Not a test on its own: the process [`sigint_cleans_every_live_lab_before_exiting`]
/// starts and interrupts. Without the variable it does nothing.
#[test]
fn signal_child_holds_a_lab_until_killed() {
    if std::env::var_os(SIGNAL_CHILD).is_none() {
        return;
    }
    let lab = Lab::new().expect("lab");
    let a = lab.add_ns("a").expect("namespace");
    lab.add_ns("b").expect("namespace");
    let child = sleeper(&a);
    println!("LAB {} {}", child.pid(), lab.namespaces().join(" "));
    // Bounded: the parent interrupts long before.
    std::thread::sleep(Duration::from_secs(15));
}
