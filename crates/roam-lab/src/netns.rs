//! Network namespaces owned by a [`Lab`], and what runs inside them.
//!
//! A [`Lab`] creates namespaces named `{prefix}{pid}x{lab}{role}` (say `rl4242x0a`): the
//! pid says which process owns them, so [`cleanup_stale`] can remove what a crashed run
//! left without touching a live one. Dropping the lab (also while a test panics) kills
//! the processes it spawned and deletes its namespaces. Every live lab is also in a
//! process-wide registry that a SIGINT/SIGTERM/SIGHUP handler empties before exiting, so
//! Ctrl-C leaves nothing behind either.
//!
//! An [`Ns`] runs commands inside its namespace (always with a timeout), spawns
//! long-running processes there (killed with the lab), and runs Rust closures on a
//! thread that has entered it with `setns(2)`: sockets opened there stay in the
//! namespace.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::{fmt, io};

use crate::sys;

/// The namespace-name prefix of labs that do not choose one.
pub const DEFAULT_PREFIX: &str = "rl";

/// How long a command run by the lab may take unless the caller says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Output kept from a command, per stream: enough for any diagnostic, bounded.
const OUTPUT_CAP: usize = 8 << 20;

/// Everything that can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    #[error("the lab needs root (network namespaces, raw sockets): run as root or set ROAM_SKIP_NETNS=1")]
    NotRoot,
    #[error("`{command}` could not start: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("a thread in namespace {namespace} panicked: {message}")]
    ThreadPanicked { namespace: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> LabError {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Whether namespace tests can run here: `Ok(false)` when `ROAM_SKIP_NETNS=1` asks to
/// skip them, [`LabError::NotRoot`] when they cannot run (tests should fail then, not
/// pass silently), `Ok(true)` otherwise.
pub fn lab_available() -> Result<bool, LabError> {
    if std::env::var("ROAM_SKIP_NETNS").is_ok_and(|v| v == "1") {
        return Ok(false);
    }
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    Ok(true)
}

/// A poisoned lock here only means another thread panicked while holding it; cleanup
/// must still proceed.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Commands

/// What a finished command printed.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs a program to completion within `timeout` and returns what it printed, whatever
/// its exit status. On timeout its whole process group is killed.
pub fn run_command(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CommandOutput, LabError> {
    let command = describe(program, args);
    if stdin.is_some_and(|s| s.len() > 32 << 10) {
        // Written before reading output: more than a pipe holds could deadlock.
        return Err(LabError::Invalid(format!("{command}: stdin over 32 KiB")));
    }
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading gives EPIPE: its status tells the story.
        let _ = pipe.write_all(data);
    }
    let pid = child.id();
    let pidfd = sys::pidfd_open(pid).ok();
    let mut pipes: [Option<Box<dyn ReadFd>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn ReadFd>),
    ];
    for pipe in pipes.iter().flatten() {
        sys::set_nonblocking(pipe.fd()).map_err(|e| LabError::io(command.clone(), e))?;
    }
    let mut buffers = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + timeout;
    let mut exited: Option<(ExitStatus, Instant)> = None;
    loop {
        if exited.is_none()
            && let Some(status) = child.try_wait().map_err(|e| LabError::io(command.clone(), e))?
        {
            exited = Some((status, Instant::now()));
        }
        let now = Instant::now();
        match exited {
            // A grandchild that kept the pipes open must not hold us past 200 ms.
            Some((_, at)) if pipes.iter().all(Option::is_none) || now - at > Duration::from_millis(200) => {
                break;
            }
            None if now >= deadline => {
                sys::kill_group(pid);
                let _ = child.wait();
                return Err(LabError::Timeout { command, timeout });
            }
            _ => {}
        }
        let mut fds = Vec::with_capacity(3);
        let mut owners = Vec::with_capacity(3);
        for (i, pipe) in pipes.iter().enumerate() {
            if let Some(p) = pipe {
                fds.push(sys::pollfd(p.fd()));
                owners.push(i);
            }
        }
        let mut wait = deadline.saturating_duration_since(now);
        match (&pidfd, exited) {
            (Some(fd), None) => {
                use std::os::fd::AsRawFd;
                fds.push(sys::pollfd(fd.as_raw_fd()));
            }
            // Without a pidfd nothing wakes us at exit: look again soon.
            (None, None) => wait = wait.min(Duration::from_millis(5)),
            (_, Some((_, at))) => {
                wait = wait.min((at + Duration::from_millis(200)).saturating_duration_since(now))
            }
        }
        sys::poll(&mut fds, wait).map_err(|e| LabError::io(command.clone(), e))?;
        for (slot, fd) in owners.iter().zip(&fds) {
            if fd.revents == 0 {
                continue;
            }
            let mut chunk = [0u8; 16 << 10];
            // Drain until the pipe is empty (WouldBlock) or closed (EOF, error).
            while let Some(pipe) = pipes[*slot].as_mut() {
                match pipe.read(&mut chunk) {
                    Ok(0) => pipes[*slot] = None,
                    Ok(n) => {
                        let buf = &mut buffers[*slot];
                        let room = OUTPUT_CAP.saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => pipes[*slot] = None,
                }
            }
        }
    }
    let (status, _) = exited.expect("loop ends only after exit");
    let [stdout, stderr] = buffers;
    Ok(CommandOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// [`run_command`], and a non-zero exit status is an error carrying stderr.
pub fn run_checked(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CommandOutput, LabError> {
    let output = run_command(program, args, stdin, timeout)?;
    if !output.status.success() {
        return Err(LabError::Failed {
            command: describe(program, args),
            status: output.status,
            stderr: output.stderr.trim().to_owned(),
        });
    }
    Ok(output)
}

trait ReadFd: Read {
    fn fd(&self) -> std::os::fd::RawFd;
}
impl<T: Read + std::os::fd::AsRawFd> ReadFd for T {
    fn fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
}

// ---------------------------------------------------------------------------------------
// The lab and its registry

static NEXT_LAB: AtomicU64 = AtomicU64::new(0);
static LABS: Mutex<Vec<Weak<LabState>>> = Mutex::new(Vec::new());

/// What a lab owns, shared with its [`Ns`] handles and the registry.
#[derive(Debug)]
struct LabState {
    id: u64,
    prefix: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Weak<ChildSlot>>>,
}

impl LabState {
    /// Kills what the lab spawned and deletes its namespaces. Idempotent; keeps going
    /// past failures and returns them.
    fn cleanup(&self) -> Vec<LabError> {
        let children = std::mem::take(&mut *lock(&self.children));
        for child in children.iter().filter_map(Weak::upgrade) {
            child.kill();
        }
        let names = std::mem::take(&mut *lock(&self.namespaces));
        names
            .iter()
            .rev()
            .filter_map(|n| delete_namespace(n).err())
            .collect()
    }
}

/// A set of namespaces and processes that live and die together. See the module docs.
#[derive(Debug)]
pub struct Lab {
    state: Arc<LabState>,
}

impl Lab {
    /// A lab with the default prefix. Removes stale namespaces of dead runs first.
    pub fn new() -> Result<Lab, LabError> {
        Lab::with_prefix(DEFAULT_PREFIX)
    }

    /// A lab whose namespaces start with `prefix` (1 to 6 lowercase ASCII letters: the
    /// pid follows, so a digit would make it ambiguous).
    pub fn with_prefix(prefix: &str) -> Result<Lab, LabError> {
        validate_prefix(prefix)?;
        if !sys::is_root() {
            return Err(LabError::NotRoot);
        }
        install_signal_cleanup();
        if let Err(e) = cleanup_stale(prefix) {
            tracing::warn!("could not remove stale namespaces: {e}");
        }
        let state = Arc::new(LabState {
            id: NEXT_LAB.fetch_add(1, Ordering::Relaxed),
            prefix: prefix.to_owned(),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        });
        let mut labs = lock(&LABS);
        labs.retain(|w| w.strong_count() > 0);
        labs.push(Arc::downgrade(&state));
        Ok(Lab { state })
    }

    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// Creates a namespace `{prefix}{pid}x{lab}{role}` with its loopback up. `role`: 1 to
    /// 4 lowercase letters or digits, unique in this lab.
    pub fn add_ns(&self, role: &str) -> Result<Ns, LabError> {
        if role.is_empty()
            || role.len() > 4
            || !role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(LabError::Invalid(format!(
                "namespace role {role:?}: 1-4 of [a-z0-9]"
            )));
        }
        let name = format!(
            "{}{}x{}{}",
            self.state.prefix,
            std::process::id(),
            self.state.id,
            role
        );
        if lock(&self.state.namespaces).contains(&name) {
            return Err(LabError::Invalid(format!("namespace role {role:?} used twice")));
        }
        if let Err(first) = run_checked("ip", &["netns", "add", &name], None, DEFAULT_COMMAND_TIMEOUT) {
            // The name holds our pid and lab number, so an existing one is the leftover of
            // an earlier process that had our pid: ours to remove.
            if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
                delete_namespace(&name)?;
                run_checked("ip", &["netns", "add", &name], None, DEFAULT_COMMAND_TIMEOUT)?;
            } else {
                return Err(first);
            }
        }
        lock(&self.state.namespaces).push(name.clone());
        let ns = Ns {
            name: name.into(),
            lab: self.state.clone(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The names of the namespaces this lab owns now.
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.state.namespaces).clone()
    }

    /// Kills the lab's processes and deletes its namespaces now (dropping does the same).
    pub fn cleanup(&self) -> Result<(), LabError> {
        match self.state.cleanup().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.state.cleanup() {
            tracing::warn!("lab cleanup: {e}");
        }
        lock(&LABS).retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.state)));
    }
}

fn validate_prefix(prefix: &str) -> Result<(), LabError> {
    if prefix.is_empty() || prefix.len() > 6 || !prefix.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(LabError::Invalid(format!("lab prefix {prefix:?}: 1-6 of [a-z]")));
    }
    Ok(())
}

/// Kills every live lab's processes and deletes their namespaces. The signal handler
/// calls it; a program that handles signals itself can too.
pub fn cleanup_all() {
    let labs: Vec<Arc<LabState>> = lock(&LABS).iter().filter_map(Weak::upgrade).collect();
    for lab in labs {
        for e in lab.cleanup() {
            tracing::warn!("lab cleanup: {e}");
        }
    }
}

/// Installs (once per process) a SIGINT/SIGTERM/SIGHUP handler that cleans every live lab
/// and exits with 128 + the signal. [`Lab::new`] calls it. signal-hook chains handlers,
/// so others registered through it (tokio's) still run.
pub fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("no signal cleanup for labs: {e}");
                return;
            }
        };
        let spawned = thread::Builder::new()
            .name("roam-lab-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    cleanup_all();
                    std::process::exit(128 + signal);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no signal cleanup for labs: {e}");
        }
    });
}

/// The pid encoded in a namespace name of a lab with this prefix.
fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'x') {
        return None;
    }
    rest[..digits].parse().ok()
}

/// Deletes namespaces of labs with this prefix whose owning process is dead (leftovers
/// of crashed runs), killing whatever still runs in them. Returns their names.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, LabError> {
    validate_prefix(prefix)?;
    let list = run_checked("ip", &["netns", "list"], None, DEFAULT_COMMAND_TIMEOUT)?;
    let mut removed = Vec::new();
    for line in list.stdout.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = owner_pid(prefix, name)
            && !sys::pid_alive(pid)
        {
            delete_namespace(name)?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

/// Kills the processes inside a namespace (ours or anyone's `ip netns exec`), then
/// deletes its name; the kernel frees it when its last socket closes.
fn delete_namespace(name: &str) -> Result<(), LabError> {
    if let Ok(pids) = run_command("ip", &["netns", "pids", name], None, DEFAULT_COMMAND_TIMEOUT) {
        let own = std::process::id();
        for pid in pids
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if pid != own {
                sys::kill_pid(pid);
            }
        }
    }
    let out = run_command("ip", &["netns", "del", name], None, DEFAULT_COMMAND_TIMEOUT)?;
    if !out.status.success() && std::path::Path::new(&format!("/run/netns/{name}")).exists() {
        return Err(LabError::Failed {
            command: format!("ip netns del {name}"),
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Namespaces

/// A namespace of a lab. Cheap to clone; it does not keep the namespace alive.
#[derive(Clone)]
pub struct Ns {
    name: Arc<str>,
    lab: Arc<LabState>,
}

impl fmt::Debug for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Ns").field(&&*self.name).finish()
    }
}

impl Ns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file (`/run/netns/NAME`), for what enters it by path (`setns`,
    /// nft's and the nudge's `netns` option).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a program inside the namespace (`ip netns exec`) within
    /// [`DEFAULT_COMMAND_TIMEOUT`]; a non-zero exit is an error.
    pub fn exec(&self, args: &[&str]) -> Result<CommandOutput, LabError> {
        self.exec_timeout(args, DEFAULT_COMMAND_TIMEOUT)
    }

    /// [`Ns::exec`] with a chosen timeout.
    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> Result<CommandOutput, LabError> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_checked("ip", &full, None, timeout)
    }

    /// Like [`Ns::exec_timeout`] but returns the output whatever the exit status.
    pub fn exec_output(&self, args: &[&str], timeout: Duration) -> Result<CommandOutput, LabError> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_command("ip", &full, None, timeout)
    }

    /// `ip -n NAME args...` (iproute2 enters the namespace itself: no extra process).
    pub fn ip(&self, args: &[&str]) -> Result<CommandOutput, LabError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_checked("ip", &full, None, DEFAULT_COMMAND_TIMEOUT)
    }

    /// Several `ip` commands (one per line, without the leading `ip`) in one process:
    /// `ip -n NAME -batch -`. Stops at the first failing line.
    pub fn ip_batch(&self, commands: &str) -> Result<CommandOutput, LabError> {
        run_checked(
            "ip",
            &["-n", &self.name, "-batch", "-"],
            Some(commands.as_bytes()),
            DEFAULT_COMMAND_TIMEOUT,
        )
    }

    /// Writes sysctls of this namespace (`("net.ipv4.ip_forward", "1")`) from a thread
    /// inside it: /proc/sys/net shows the namespace of the thread that opens it. A key
    /// with a `/` is taken as a path under /proc/sys (for interface names with dots).
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<(), LabError> {
        self.run(|| {
            for (key, value) in settings {
                let path = if key.contains('/') {
                    format!("/proc/sys/{key}")
                } else {
                    format!("/proc/sys/{}", key.replace('.', "/"))
                };
                std::fs::write(&path, value).map_err(|e| LabError::io(format!("sysctl {key}={value}"), e))?;
            }
            Ok(())
        })?
    }

    /// Polls `ss` until something in this namespace listens on TCP `port` (a TCP or a
    /// Multipath TCP listener: `ss -t` or `ss -M`), bounded by `within`; an early exit
    /// of `server` is an error carrying what it printed.
    pub fn wait_listening(&self, port: u16, server: &Child, within: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + within;
        let filter = format!("sport = :{port}");
        loop {
            for kind in ["-Hltn", "-HlMn"] {
                if !self.exec(&["ss", kind, &filter])?.stdout.trim().is_empty() {
                    return Ok(());
                }
            }
            if let Some(status) = server.try_wait()? {
                return Err(LabError::Invalid(format!(
                    "{} exited ({status}) before listening: {}",
                    server.command(),
                    server.stdout().trim()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "nothing listens on port {port} within {within:?} of `{}`",
                    server.command()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads one sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String, LabError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || std::fs::read_to_string(&path).map(|s| s.trim().to_owned()))?
            .map_err(|e| LabError::io(format!("sysctl {key}"), e))
    }

    /// Spawns a long-running program inside the namespace. It is its own process group
    /// leader, and is killed (with the group) when the returned [`Child`] or the lab is
    /// dropped, whichever comes first.
    pub fn spawn(&self, args: &[&str], output: ChildOutput) -> Result<Child, LabError> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        let command = describe("ip", &full);
        let mut cmd = Command::new("ip");
        cmd.args(&full).stdin(Stdio::null()).process_group(0);
        let collect = matches!(output, ChildOutput::Collect);
        match &output {
            ChildOutput::Discard => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            ChildOutput::Collect => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            ChildOutput::File(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| LabError::io(format!("{}", path.display()), e))?;
                let clone = file
                    .try_clone()
                    .map_err(|e| LabError::io(format!("{}", path.display()), e))?;
                cmd.stdout(file).stderr(clone);
            }
        }
        let mut process = cmd.spawn().map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if collect {
            if let Some(pipe) = process.stdout.take() {
                readers.push(spawn_reader(pipe, stdout.clone()));
            }
            if let Some(pipe) = process.stderr.take() {
                readers.push(spawn_reader(pipe, stderr.clone()));
            }
        }
        let slot = Arc::new(ChildSlot {
            pid: process.id(),
            state: Mutex::new(ChildState {
                process,
                status: None,
            }),
        });
        let mut children = lock(&self.lab.children);
        children.retain(|w| w.strong_count() > 0);
        children.push(Arc::downgrade(&slot));
        Ok(Child {
            slot,
            command,
            stdout,
            stderr,
            readers,
        })
    }

    /// Runs `f` on a fresh thread inside this namespace and waits for it. `f` may borrow
    /// (the thread is scoped). A panic in `f` comes back as
    /// [`LabError::ThreadPanicked`].
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T, LabError> {
        let name = &*self.name;
        thread::scope(|scope| {
            let handle = scope.spawn(move || sys::enter_netns(name).map(|()| f()));
            match handle.join() {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(LabError::io(format!("entering namespace {name}"), e)),
                Err(payload) => Err(LabError::ThreadPanicked {
                    namespace: name.to_owned(),
                    message: panic_message(&*payload),
                }),
            }
        })
    }

    /// Starts `f` on a named thread inside this namespace and returns once the thread
    /// is in it (or could not get in). The caller joins it; the lab does not.
    pub fn spawn_thread<T, F>(&self, thread_name: &str, f: F) -> Result<NsThread<T>, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let name = self.name.clone();
        let handle = thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || match sys::enter_netns(&name) {
                Ok(()) => {
                    let _ = tx.send(Ok(()));
                    Some(f())
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            })
            .map_err(|e| LabError::io("spawning a thread", e))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread {
                namespace: self.name.to_string(),
                handle,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(LabError::io(format!("entering namespace {}", self.name), e))
            }
            Err(_) => Err(LabError::ThreadPanicked {
                namespace: self.name.to_string(),
                message: "thread ended before entering the namespace".into(),
            }),
        }
    }
}

/// A thread started by [`Ns::spawn_thread`].
#[derive(Debug)]
pub struct NsThread<T> {
    namespace: String,
    handle: JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread; its panic comes back as [`LabError::ThreadPanicked`].
    pub fn join(self) -> Result<T, LabError> {
        match self.handle.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(LabError::ThreadPanicked {
                namespace: self.namespace,
                message: "thread did not run".into(),
            }),
            Err(payload) => Err(LabError::ThreadPanicked {
                namespace: self.namespace,
                message: panic_message(&*payload),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Children

/// Where a spawned program's stdout and stderr go.
#[derive(Clone, Debug)]
pub enum ChildOutput {
    Discard,
    /// Kept in memory (bounded) by reader threads, so the child never blocks on a full
    /// pipe; see [`Child::stdout`].
    Collect,
    /// Both streams into one file.
    File(PathBuf),
}

#[derive(Debug)]
struct ChildState {
    process: std::process::Child,
    status: Option<ExitStatus>,
}

#[derive(Debug)]
struct ChildSlot {
    pid: u32,
    state: Mutex<ChildState>,
}

impl ChildSlot {
    fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        let mut state = lock(&self.state);
        if state.status.is_none() {
            state.status = state.process.try_wait()?;
        }
        Ok(state.status)
    }

    /// SIGKILL to the group, then reap it (bounded: a killed process exits at once
    /// unless stuck in the kernel).
    fn kill(&self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        sys::kill_group(self.pid);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
        tracing::warn!("process {} did not die within 2 s of SIGKILL", self.pid);
    }
}

/// A program spawned in a namespace by [`Ns::spawn`]. Dropping it kills it.
#[must_use = "dropping a Child kills the process"]
#[derive(Debug)]
pub struct Child {
    slot: Arc<ChildSlot>,
    command: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn spawn_reader(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut buf = lock(&into);
                    let room = OUTPUT_CAP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    })
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.slot.pid
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn try_wait(&self) -> Result<Option<ExitStatus>, LabError> {
        self.slot
            .try_wait()
            .map_err(|e| LabError::io(self.command.clone(), e))
    }

    /// Waits up to `timeout` for the program to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(2).min(deadline - Instant::now()));
        }
    }

    /// Waits up to `timeout` for exit and returns what it printed
    /// ([`ChildOutput::Collect`]); [`LabError::Timeout`] if it is still running.
    pub fn wait_output(mut self, timeout: Duration) -> Result<CommandOutput, LabError> {
        let Some(status) = self.wait_timeout(timeout)? else {
            return Err(LabError::Timeout {
                command: self.command.clone(),
                timeout,
            });
        };
        // The pipes close at exit (or when the group is killed on drop): bounded.
        let deadline = Instant::now() + Duration::from_secs(1);
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        Ok(CommandOutput {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// What it has printed on stdout so far ([`ChildOutput::Collect`]).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Stops the program (SIGSTOP) until [`Child::resume`]: it keeps its state and
    /// sockets, and does nothing, as a daemon that hangs.
    pub fn suspend(&self) -> Result<(), LabError> {
        sys::signal(self.pid(), libc::SIGSTOP)
            .map_err(|e| LabError::io(format!("stopping {}", self.command), e))
    }

    /// Lets a [`Child::suspend`]ed program go on (SIGCONT).
    pub fn resume(&self) -> Result<(), LabError> {
        sys::signal(self.pid(), libc::SIGCONT)
            .map_err(|e| LabError::io(format!("resuming {}", self.command), e))
    }

    /// Kills the program and its process group, and reaps it.
    pub fn kill(&self) {
        self.slot.kill();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.slot.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("rl", "rl4242x0a"), Some(4242));
        assert_eq!(owner_pid("rl", "rl4242x17rw"), Some(4242));
        assert_eq!(owner_pid("rl", "rlx0a"), None);
        assert_eq!(owner_pid("rl", "rl42"), None);
        assert_eq!(owner_pid("rl", "other4242x0a"), None);
        assert_eq!(owner_pid("rl", "rlab4242x0a"), None);
    }

    #[test]
    fn prefixes_are_letters_only() {
        assert!(validate_prefix("rl").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("r1").is_err());
        assert!(validate_prefix("toolongx").is_err());
    }

    #[test]
    fn run_command_times_out_and_reports_failures() {
        let out = run_command(
            "sh",
            &["-c", "echo hi; echo err >&2; exit 3"],
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
        let err = run_checked("sh", &["-c", "exit 1"], None, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, LabError::Failed { .. }), "{err}");
        let started = Instant::now();
        let err = run_command("sleep", &["10"], None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, LabError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let out = run_command("cat", &[], Some(b"through stdin"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, "through stdin");
    }
}
