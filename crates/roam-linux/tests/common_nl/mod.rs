//! Network namespaces for roam-linux's netlink and sock_diag tests.
//!
//! Each [`Netns`] is a fresh namespace (`ip netns add`) named `rd<pid>n<counter>`, with
//! `lo` up, deleted on drop (also when the test panics). Rust code runs inside one on a
//! dedicated thread that `setns(2)`s into it ([`Netns::run`], [`Netns::block_on`]);
//! sockets keep the namespace they were created in, so a socket made there can be used
//! from any thread afterwards.

#![allow(dead_code)] // each test binary uses a different part

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether namespace tests can run here. Not root: fails with a clear message, unless
/// `ROAM_SKIP_NETNS=1` asks to skip (then returns false and the test returns early).
pub fn netns_available() -> bool {
    if std::env::var("ROAM_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("ROAM_SKIP_NETNS=1: skipping a network namespace test");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces and needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); \
         run it as root, or set ROAM_SKIP_NETNS=1 to skip it"
    );
    true
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "rd{}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_cmd("ip", &["netns", "add", &name]).expect("ip netns add");
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n <ns> <args>`; panics with ip's message on failure.
    pub fn ip(&self, args: &str) {
        if let Err(e) = self.try_ip(args) {
            panic!("ip -n {} {args}: {e}", self.name);
        }
    }

    pub fn try_ip(&self, args: &str) -> Result<(), String> {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend(args.split_whitespace());
        run_cmd("ip", &v)
    }

    /// Run `f` on a thread inside this namespace and return its result; a panic in `f`
    /// is re-raised here with its message.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a valid namespace fd; setns only changes this thread's netns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Run an async block inside this namespace on a current-thread tokio runtime.
    pub fn block_on<T: Send, Fut: Future<Output = T>>(&self, f: impl FnOnce() -> Fut + Send) -> T {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup: ip netns del {}: {e}", self.name);
        }
    }
}

/// A veth pair: `a_if` in `a`, `b_if` in `b` (same namespace allowed), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&format!(
        "link add {a_if} type veth peer name {b_if} netns {}",
        b.name
    ));
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Poll `f` until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
