//! roamd on the lab's hosts: keys, configuration, start, status, stop.
//!
//! One place that knows how the lab runs `roam daemon`, shared by the scenarios
//! ([`crate::scenario`]) and the systems `roam bench` compares ([`crate::systems`]).
//! Each host gets a directory of its own under the run's directory (`a/`, `b/`) with its
//! key, configuration, log, status snapshot, state file and control socket: the hosts
//! share one file system.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::netns::{Child, ChildOutput, LabError, Ns, run_checked};

/// The roamds of one run.
#[derive(Debug)]
pub struct Roamds {
    dir: PathBuf,
    binary: PathBuf,
    running: Vec<(String, Child)>,
}

/// How the lab configures each roamd.
#[derive(Clone, Debug)]
pub struct RoamdConfig {
    /// roamd makes TCP retransmit at once after a move.
    pub nudge: bool,
    /// `data_plane` as roamd's configuration file names it.
    pub data_plane: String,
    /// `move_message` as the configuration names it ("connection-update",
    /// "migration-request", "address-change"); `None`: roamd's default.
    pub move_message: Option<String>,
}

impl Roamds {
    /// Nothing running yet; `dir` holds one directory per host, `binary` is the `roam`
    /// executable (roamd runs as `roam daemon`).
    pub fn new(dir: &Path, binary: &Path) -> Roamds {
        Roamds {
            dir: dir.to_owned(),
            binary: binary.to_owned(),
            running: Vec::new(),
        }
    }

    /// The `roam` executable.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `host`'s directory.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join(host)
    }

    /// Writes a fresh key and a configuration for each of `hosts`, every host trusting
    /// every other (by the names in `hosts`). Keys come from `roam keygen`, the one way
    /// roam writes a key (mode 0600, from the OS's randomness).
    pub fn configure(&self, hosts: &[&str], config: &RoamdConfig) -> Result<(), LabError> {
        let mut public = Vec::new();
        for host in hosts {
            let dir = self.host_dir(host);
            std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating a host directory", e))?;
            let key = dir.join("host.key");
            // A kept directory from an earlier run: keygen never overwrites.
            let _ = std::fs::remove_file(&key);
            // Nor may its roamd restore that run's translation entries.
            let _ = std::fs::remove_file(dir.join("state.json"));
            let bin = self.binary.display().to_string();
            let out = run_checked(
                &bin,
                &["keygen", &key.display().to_string()],
                None,
                Duration::from_secs(10),
            )?;
            public.push(out.stdout.trim().to_owned());
        }
        for (i, host) in hosts.iter().enumerate() {
            let mut text = String::from("# written by roam lab\nprivate_key_file = \"host.key\"\n");
            for (j, peer) in hosts.iter().enumerate() {
                if i != j {
                    text.push_str(&format!(
                        "\n[[peer]]\nname = \"{peer}\"\npublic_key = \"{}\"\n",
                        public[j]
                    ));
                }
            }
            text.push_str(&format!(
                "\n[daemon]\nnudge = {}\ndata_plane = \"{}\"\n",
                config.nudge, config.data_plane
            ));
            if let Some(m) = &config.move_message {
                text.push_str(&format!("move_message = \"{m}\"\n"));
            }
            std::fs::write(self.host_dir(host).join("roam.toml"), text)
                .map_err(|e| LabError::io("writing a configuration", e))?;
        }
        Ok(())
    }

    /// Starts `roam daemon` on `host` (inside `ns`) from the configured executable.
    pub fn spawn(&mut self, ns: &Ns, host: &str) -> Result<(), LabError> {
        let bin = self.binary.clone();
        self.spawn_from(ns, host, &bin)
    }

    /// Starts `roam daemon` on `host` from the executable `bin` (a restart may run
    /// another copy, as an upgrade does).
    pub fn spawn_from(&mut self, ns: &Ns, host: &str, bin: &Path) -> Result<(), LabError> {
        let dir = self.host_dir(host);
        let status = dir.join("status.json");
        let _ = std::fs::remove_file(&status);
        let bin = bin.display().to_string();
        let config = dir.join("roam.toml").display().to_string();
        let status_arg = status.display().to_string();
        // Each host's own state file and control socket: the hosts share a file system.
        let state_arg = dir.join("state.json").display().to_string();
        let socket_arg = self.socket(host).display().to_string();
        let log_level = std::env::var("ROAM_LAB_LOG").unwrap_or_else(|_| "info".into());
        let child = ns.spawn(
            &[
                "env",
                &format!("ROAM_LOG={log_level}"),
                &bin,
                "daemon",
                "--config",
                &config,
                "--status-file",
                &status_arg,
                "--state",
                &state_arg,
                "--socket",
                &socket_arg,
            ],
            ChildOutput::File(dir.join("roamd.log")),
        )?;
        self.running.retain(|(h, _)| h != host);
        self.running.push((host.to_owned(), child));
        Ok(())
    }

    /// `host`'s control socket.
    pub fn socket(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("roamd.sock")
    }

    /// The hosts whose roamd this run started and has not stopped.
    pub fn hosts(&self) -> Vec<String> {
        self.running.iter().map(|(h, _)| h.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// roamd's process on `host`.
    pub fn child(&self, host: &str) -> Result<&Child, LabError> {
        self.running
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, c)| c)
            .ok_or_else(|| LabError::Invalid(format!("roamd is not running on {host}")))
    }

    /// Forgets `host`'s roamd (it was killed or exited).
    pub fn forget(&mut self, host: &str) {
        self.running.retain(|(h, _)| h != host);
    }

    /// Takes roam out of `host` and stops roamd, the way an operator removing it would:
    /// `roam down` (every translation entry and kept address goes, and the state file
    /// is emptied), then SIGTERM (roamd writes its last status and exits), waiting up to
    /// 10 s; kills it past that. True if it exited on SIGTERM. (A bare SIGTERM, a
    /// service manager's stop, leaves the entries for the next roamd.)
    pub fn stop(&mut self, host: &str) -> Result<bool, LabError> {
        let down = std::process::Command::new(&self.binary)
            .args(["down", "--socket"])
            .arg(self.socket(host))
            .output()
            .map_err(|e| LabError::io(format!("running roam down on {host}"), e))?;
        if !down.status.success() {
            return Err(LabError::Invalid(format!(
                "roam down on {host}: {}",
                String::from_utf8_lossy(&down.stderr).trim()
            )));
        }
        let child = self.child(host)?;
        crate::sys::signal(child.pid(), libc::SIGTERM)
            .map_err(|e| LabError::io(format!("stopping roamd on {host}"), e))?;
        let exited = child.wait_timeout(Duration::from_secs(10))?.is_some();
        if !exited {
            child.kill();
        }
        self.forget(host);
        Ok(exited)
    }

    /// Kills every roamd still running (the end of a run).
    pub fn kill_all(&self) {
        for (_, c) in &self.running {
            c.kill();
        }
    }

    pub fn status_path(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("status.json")
    }

    /// roamd's last status snapshot on `host`.
    pub fn status(&self, host: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.status_path(host)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits (bounded) until `host`'s status satisfies `ok`.
    pub fn wait_status(
        &self,
        host: &str,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, LabError> {
        self.wait_status_since(host, UNIX_EPOCH, within, ok)
    }

    /// Waits (bounded) until `host`'s status, from a snapshot written after `after`
    /// (roamd rewrites it every second), satisfies `ok`.
    pub fn wait_status_since(
        &self,
        host: &str,
        after: SystemTime,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, LabError> {
        let deadline = Instant::now() + within;
        loop {
            // The file's time first: what is read afterwards is at least that new (roamd
            // replaces it by rename).
            let fresh = std::fs::metadata(self.status_path(host))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > after);
            if fresh
                && let Some(s) = self.status(host)
                && ok(&s)
            {
                return Ok(s);
            }
            if let Some((_, c)) = self.running.iter().find(|(h, _)| h == host)
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(LabError::Invalid(format!(
                    "roamd on {host} exited ({status}); see {}",
                    self.host_dir(host).join("roamd.log").display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "roamd on {host} did not reach the expected state within {within:?}; see {}",
                    self.host_dir(host).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until each of `hosts` reports at least one address of its own.
    pub fn wait_up(&self, hosts: &[&str]) -> Result<(), LabError> {
        for host in hosts {
            self.wait_status(host, Duration::from_secs(10), |s| {
                s["addresses"].as_array().is_some_and(|a| !a.is_empty())
            })?;
        }
        Ok(())
    }

    /// Waits until each of `hosts` knows a peer with which it shares at least `flows`
    /// flows.
    pub fn wait_flows(&self, hosts: &[&str], flows: u64) -> Result<(), LabError> {
        for host in hosts {
            self.wait_status(host, Duration::from_secs(10), |s| {
                s["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["flows"].as_u64() >= Some(flows)))
            })?;
        }
        Ok(())
    }
}
