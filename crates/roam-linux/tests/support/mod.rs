//! Network namespaces for roam-linux's tests, on top of the lab's (`roam_lab::Lab`):
//! each [`Netns`] is a fresh namespace with `lo` up, deleted on drop (also when the test
//! panics, and on Ctrl-C). Rust code runs inside one on a thread that has entered it
//! ([`Netns::run`], [`Netns::block_on`]); sockets keep the namespace they were created
//! in, so a socket made there can be used from any thread afterwards. [`two_hosts`] is
//! the two-host lab on which every data plane is tested the same way.

#![allow(dead_code)] // each test binary uses a different part

pub mod two_hosts;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use roam_lab::{Lab, Ns};

/// Whether namespace tests can run here. Not root: fails with a clear message, unless
/// `ROAM_SKIP_NETNS=1` asks to skip (then returns false and the test returns early).
pub fn netns_available() -> bool {
    match roam_lab::lab_available() {
        Ok(true) => true,
        Ok(false) => {
            eprintln!("ROAM_SKIP_NETNS=1: skipping a network namespace test");
            false
        }
        Err(e) => panic!(
            "{e}: this test creates network namespaces and needs root (CAP_SYS_ADMIN, \
             CAP_NET_ADMIN, CAP_NET_RAW); run it as root, or set ROAM_SKIP_NETNS=1 to skip it"
        ),
    }
}

/// One namespace, owned by a lab of its own (dropping it deletes the namespace).
pub struct Netns {
    pub name: String,
    ns: Ns,
    _lab: Lab,
}

impl Netns {
    pub fn new() -> Netns {
        let lab = Lab::new().expect("a lab");
        let ns = lab.add_ns("n").expect("a namespace");
        Netns {
            name: ns.name().to_owned(),
            ns,
            _lab: lab,
        }
    }

    /// The lab's handle, for the lab's tools (captures).
    pub fn ns(&self) -> &Ns {
        &self.ns
    }

    pub fn path(&self) -> PathBuf {
        self.ns.path()
    }

    /// `ip -n <ns> <args>`; panics with ip's message on failure.
    pub fn ip(&self, args: &str) {
        if let Err(e) = self.try_ip(args) {
            panic!("{e}");
        }
    }

    pub fn try_ip(&self, args: &str) -> Result<(), String> {
        let args: Vec<&str> = args.split_whitespace().collect();
        self.ns.ip(&args).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Runs a program inside the namespace; its stdout, or what went wrong.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec![program];
        full.extend_from_slice(args);
        self.ns.exec(&full).map(|o| o.stdout).map_err(|e| e.to_string())
    }

    /// Runs `f` on a thread inside this namespace and returns its result; a panic in `f`
    /// panics here with its message.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs an async block inside this namespace on a current-thread tokio runtime.
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

/// A veth pair: `a_if` in `a`, `b_if` in `b` (the same namespace allowed), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&format!(
        "link add {a_if} type veth peer name {b_if} netns {}",
        b.name
    ));
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

/// Polls `f` until it returns `Some`, for at most `limit`.
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
        std::thread::sleep(Duration::from_millis(10));
    }
}
