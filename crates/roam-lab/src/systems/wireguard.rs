//! A WireGuard overlay between A and B with `wireguard-go` (userspace: these machines
//! have no WireGuard kernel module).
//!
//! Each host runs `wireguard-go -f IFNAME` in its namespace, which creates a TUN device
//! there and listens for configuration on a UAPI socket at
//! `/var/run/wireguard/IFNAME.sock`. That directory is shared by every namespace, so
//! the names are unique per process and lab: `{prefix}{pid}g{n}{a,b}`, at most 15
//! bytes (IFNAMSIZ). `wg set` configures both ends: keys, B's listen port, A's peer B
//! at B's real address, and the overlay addresses (10.202.0.1/24, fd00:202::1/64 on A;
//! `.2`, `::2` on B). B is not told where A is: it learns A's endpoint from the first
//! authenticated packet, and follows it when A's packets come from elsewhere ("endpoints
//! and roaming" in the WireGuard paper).
//!
//! A moves the lab's way (its old address removed, the new one added). That alone does
//! not make this `wireguard-go` (0.0.20220316, Debian's) roam: its sockets remember the
//! source address and interface of the last packet received from the peer ("sticky
//! sockets") and send from them, and when the address is gone the kernel refuses those
//! sends with `ENETUNREACH`, which it does not take as a reason to forget them (only
//! `EINVAL` is); its route listener asks the kernel for the route *from* the old source,
//! which fails as well. Nothing from A reaches B and nothing from B reaches A: the
//! overlay stalls for good. The kernel module forgets the source when it is no longer a
//! local address. What clients embedding `wireguard-go` do on a network change is
//! rebind its sockets (`BindUpdate`, called by the Apple clients' `wgBumpSockets` on a
//! path change), which forgets the remembered sources; a UAPI `listen_port` set does
//! the same. So each move here is the lab's move followed by `wg set IF listen-port
//! PORT` (same port) on A, unless [`WireGuard::set_rebind_on_move`] turns that off to
//! show the stall.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Carrier, lab_move};
use crate::capture::{PacketFilter, Protocol};
use crate::netns::{Child, ChildOutput, DEFAULT_COMMAND_TIMEOUT, LabError, Ns, run_checked};
use crate::sys;
use crate::topology::{DualStack, Family, MoveTimes, Topology};

/// The UDP port both ends listen on.
pub const WG_PORT: u16 = 51820;
/// A's and B's addresses inside the overlay.
pub const OVERLAY_A: DualStack = DualStack {
    v4: Ipv4Addr::new(10, 202, 0, 1),
    v6: Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 1),
};
pub const OVERLAY_B: DualStack = DualStack {
    v4: Ipv4Addr::new(10, 202, 0, 2),
    v6: Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, 2),
};
/// A sends a keepalive when it has sent nothing for this long (what a roaming client
/// behind NAT is configured with); setting it also makes A shake hands at once.
const PERSISTENT_KEEPALIVE_S: u32 = 25;

/// Where `wireguard-go` puts its UAPI sockets (`wg` looks there too).
const UAPI_DIR: &str = "/var/run/wireguard";
/// IFNAMSIZ minus the terminating zero.
const MAX_IFNAME: usize = 15;
/// How long `wireguard-go` may take to create its device and socket, and a handshake
/// to complete.
const START_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);

static NEXT_OVERLAY: AtomicU32 = AtomicU32::new(0);

/// A WireGuard overlay between A and B. See the module docs.
#[derive(Debug)]
pub struct WireGuard {
    /// The family of the underlay (B's real address that A sends to).
    family: Family,
    a: Ns,
    b: Ns,
    a_if: String,
    b_if: String,
    daemons: Vec<Child>,
    rebind_on_move: bool,
    moves: u32,
    rebinds: Vec<Duration>,
    /// What `notes` says about the peers, read at the stop (the devices are gone after).
    final_state: Option<Vec<String>>,
    stopped: bool,
}

impl WireGuard {
    /// Starts `wireguard-go` on A and B, configures the tunnel over `family` (A's peer
    /// is B's real address in that family), brings the overlay up and waits for the
    /// first handshake.
    pub fn start(topology: &Topology, family: Family) -> Result<WireGuard, LabError> {
        let (a_if, b_if) = interface_names(topology.lab().prefix(), std::process::id())?;
        remove_stale_sockets(topology.lab().prefix());
        let mut wg = WireGuard {
            family,
            a: topology.a().clone(),
            b: topology.b().clone(),
            a_if,
            b_if,
            daemons: Vec::new(),
            rebind_on_move: true,
            moves: 0,
            rebinds: Vec::new(),
            final_state: None,
            stopped: false,
        };
        if let Err(e) = wg.set_up(topology) {
            wg.shut_down();
            return Err(e);
        }
        Ok(wg)
    }

    fn set_up(&mut self, topology: &Topology) -> Result<(), LabError> {
        let a_key = genkey()?;
        let b_key = genkey()?;
        let (a_pub, b_pub) = (pubkey(&a_key)?, pubkey(&b_key)?);
        for (ns, name) in [
            (self.a.clone(), self.a_if.clone()),
            (self.b.clone(), self.b_if.clone()),
        ] {
            let daemon = ns.spawn(
                &[
                    // Asked for only where a kernel module exists; harmless here.
                    "env",
                    "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                    "wireguard-go",
                    "-f",
                    &name,
                ],
                ChildOutput::Collect,
            )?;
            wait_for_uapi(&daemon, &name)?;
            self.daemons.push(daemon);
        }
        let port = WG_PORT.to_string();
        let b_real = SocketAddr::new(topology.b_address(self.family), WG_PORT).to_string();
        let allowed = |o: DualStack| format!("{}/32,{}/128", o.v4, o.v6);
        wg_set(
            &self.b,
            &self.b_if,
            &[
                "listen-port",
                &port,
                "private-key",
                "/dev/stdin",
                "peer",
                &a_pub,
                "allowed-ips",
                &allowed(OVERLAY_A),
            ],
            Some(&b_key),
        )?;
        wg_set(
            &self.a,
            &self.a_if,
            &[
                "listen-port",
                &port,
                "private-key",
                "/dev/stdin",
                "peer",
                &b_pub,
                "allowed-ips",
                &allowed(OVERLAY_B),
                "endpoint",
                &b_real,
                "persistent-keepalive",
                &PERSISTENT_KEEPALIVE_S.to_string(),
            ],
            Some(&a_key),
        )?;
        for (ns, name, overlay) in [(&self.b, &self.b_if, OVERLAY_B), (&self.a, &self.a_if, OVERLAY_A)] {
            ns.ip_batch(&format!(
                "addr add {}/24 dev {name}\naddr add {}/64 dev {name} nodad\nlink set {name} up\n",
                overlay.v4, overlay.v6
            ))?;
        }
        self.wait_for_handshake(START_TIMEOUT)
    }

    /// Whether each move rebinds `wireguard-go`'s sockets on A (the default; see the
    /// module docs). Without it this `wireguard-go` does not roam.
    pub fn set_rebind_on_move(&mut self, rebind: bool) {
        self.rebind_on_move = rebind;
    }

    /// A's and B's interface names.
    pub fn interfaces(&self) -> (&str, &str) {
        (&self.a_if, &self.b_if)
    }

    /// Where B sends A's packets now, as B's `wg show` says (`None` before the first
    /// authenticated packet from A).
    pub fn b_sees_a_at(&self) -> Result<Option<SocketAddr>, LabError> {
        let out = wg_show(&self.b, &self.b_if, "endpoints")?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .find_map(|e| e.parse().ok()))
    }

    /// The time of A's latest handshake with B (`None`: none yet).
    pub fn latest_handshake(&self) -> Result<Option<SystemTime>, LabError> {
        let out = wg_show(&self.a, &self.a_if, "latest-handshakes")?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|t| t.parse::<u64>().ok())
            .find(|&t| t > 0)
            .map(|t| UNIX_EPOCH + Duration::from_secs(t)))
    }

    fn wait_for_handshake(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.latest_handshake()?.is_some() && self.b_sees_a_at()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "no WireGuard handshake between {} and {} within {timeout:?}; A's \
                     wireguard-go said: {}",
                    self.a_if,
                    self.b_if,
                    self.daemons
                        .first()
                        .map(|d| d.stdout() + &d.stderr())
                        .unwrap_or_default()
                        .trim()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Rebinds A's sockets: a UAPI `listen_port` set makes `wireguard-go` close and
    /// reopen them (`BindUpdate`), forgetting every peer's remembered source.
    fn rebind(&self) -> Result<(), LabError> {
        wg_set(&self.a, &self.a_if, &["listen-port", &WG_PORT.to_string()], None)
    }

    /// What the peers' state says, for the notes.
    fn peer_state(&self) -> Vec<String> {
        let mut state = Vec::new();
        match self.b_sees_a_at() {
            Ok(Some(at)) => state.push(format!("B sends to A at {at} (its endpoint, learned by roaming)")),
            Ok(None) => state.push("B has no endpoint for A".into()),
            Err(e) => state.push(format!("B's endpoint for A unknown: {e}")),
        }
        if let Ok(transfer) = wg_show(&self.a, &self.a_if, "transfer")
            && let Some([rx, tx]) = transfer.lines().next().map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                [w.get(1).copied().unwrap_or("?"), w.get(2).copied().unwrap_or("?")]
            })
        {
            state.push(format!("A's tunnel: {rx} bytes received, {tx} bytes sent"));
        }
        state
    }

    /// Stops the daemons (SIGTERM, so that they remove their sockets; SIGKILL after a
    /// second) and removes whatever socket is left. The TUN devices go with the
    /// processes.
    fn shut_down(&mut self) {
        for daemon in &self.daemons {
            let _ = sys::signal(daemon.pid(), libc::SIGTERM);
        }
        for daemon in std::mem::take(&mut self.daemons) {
            if !matches!(daemon.wait_timeout(Duration::from_secs(1)), Ok(Some(_))) {
                daemon.kill();
            }
        }
        for name in [&self.a_if, &self.b_if] {
            let _ = std::fs::remove_file(uapi_socket(name));
        }
    }
}

impl Carrier for WireGuard {
    fn label(&self) -> String {
        "WireGuard (wireguard-go)".into()
    }

    /// B's address inside the overlay.
    fn b_endpoint(&self, _topology: &Topology, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(OVERLAY_B.get(family), port)
    }

    /// The tunnel's datagrams to B's real address and WireGuard port, in the family the
    /// tunnel was set up over (the overlay hides the inner family and port: every
    /// datagram of the tunnel counts, data, keepalives and handshakes alike).
    fn wire_filter(&self, topology: &Topology, _family: Family, _port: u16) -> PacketFilter {
        PacketFilter::to(
            Protocol::Udp,
            SocketAddr::new(topology.b_address(self.family), WG_PORT),
        )
    }

    /// Waits for a handshake, and for B to know where A is.
    fn wait_ready(&mut self, _topology: &Topology, _port: u16) -> Result<(), LabError> {
        self.wait_for_handshake(START_TIMEOUT)
    }

    fn move_a(&mut self, topology: &Topology) -> Result<MoveTimes, LabError> {
        if self.stopped {
            return Err(LabError::Invalid("WireGuard was stopped".into()));
        }
        let times = lab_move(topology)?;
        if self.rebind_on_move {
            let started = Instant::now();
            self.rebind()?;
            self.rebinds.push(started.elapsed());
        }
        self.moves += 1;
        Ok(times)
    }

    fn stop(&mut self, _topology: &Topology) -> Result<(), LabError> {
        if self.stopped {
            return Ok(());
        }
        self.final_state = Some(self.peer_state());
        self.stopped = true;
        self.shut_down();
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "tunnel over {}, UDP port {WG_PORT}, inner MTU 1420 (wireguard-go's default)",
            match self.family {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
            }
        )];
        if self.rebind_on_move {
            let mut rebinds = self.rebinds.clone();
            rebinds.sort();
            let median = rebinds.get(rebinds.len() / 2).copied().unwrap_or_default();
            notes.push(format!(
                "{} move(s), each the lab's followed by a socket rebind on A (`wg set \
                 listen-port`, {:.1} ms median): without it this wireguard-go keeps \
                 sending from the old address and never roams",
                self.moves,
                median.as_secs_f64() * 1e3
            ));
        } else {
            notes.push(format!(
                "{} move(s), the lab's only (no socket rebind)",
                self.moves
            ));
        }
        match &self.final_state {
            Some(state) => notes.extend(state.iter().cloned()),
            None => notes.extend(self.peer_state()),
        }
        let send_errors: usize = self
            .daemons
            .iter()
            .map(|d| d.stdout().matches("Failed to send").count())
            .sum();
        if send_errors > 0 {
            notes.push(format!("wireguard-go logged {send_errors} failed send(s)"));
        }
        notes
    }
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        if !self.stopped {
            self.shut_down();
        }
    }
}

/// `{prefix}{pid}g{n}a` and `...b`: unique per process (the pid) and overlay (`n`),
/// so that the shared UAPI directory never sees two live daemons with one name, and a
/// dead process's leftovers are recognisable.
fn interface_names(prefix: &str, pid: u32) -> Result<(String, String), LabError> {
    let n = NEXT_OVERLAY.fetch_add(1, Ordering::Relaxed);
    let base = format!("{prefix}{pid}g{n}");
    if base.len() + 1 > MAX_IFNAME {
        return Err(LabError::Invalid(format!(
            "WireGuard interface name {base}a is longer than {MAX_IFNAME} bytes: use a \
             shorter lab prefix than {prefix:?}"
        )));
    }
    Ok((format!("{base}a"), format!("{base}b")))
}

/// The pid in an interface name of [`interface_names`] with this prefix.
fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'g') {
        return None;
    }
    rest[..digits].parse().ok()
}

fn uapi_socket(name: &str) -> PathBuf {
    PathBuf::from(format!("{UAPI_DIR}/{name}.sock"))
}

/// Removes UAPI sockets left by dead processes of labs with this prefix (killed
/// daemons do not remove theirs).
fn remove_stale_sockets(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(UAPI_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".sock")) else {
            continue;
        };
        if let Some(pid) = owner_pid(prefix, name)
            && !sys::pid_alive(pid)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Waits until the daemon listens on its UAPI socket; its own words if it exits first.
fn wait_for_uapi(daemon: &Child, name: &str) -> Result<(), LabError> {
    let socket = uapi_socket(name);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = daemon.try_wait()? {
            return Err(LabError::Invalid(format!(
                "wireguard-go for {name} exited ({status}): {}",
                (daemon.stdout() + &daemon.stderr()).trim()
            )));
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Invalid(format!(
                "wireguard-go for {name} did not open {} within {START_TIMEOUT:?}",
                socket.display()
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn genkey() -> Result<String, LabError> {
    Ok(run_checked("wg", &["genkey"], None, DEFAULT_COMMAND_TIMEOUT)?
        .stdout
        .trim()
        .to_owned())
}

fn pubkey(private: &str) -> Result<String, LabError> {
    Ok(run_checked(
        "wg",
        &["pubkey"],
        Some(private.as_bytes()),
        DEFAULT_COMMAND_TIMEOUT,
    )?
    .stdout
    .trim()
    .to_owned())
}

/// `wg set IF args...` inside `ns`, with `stdin` (a private key read from /dev/stdin,
/// so that no key is written to a file).
fn wg_set(ns: &Ns, name: &str, args: &[&str], stdin: Option<&str>) -> Result<(), LabError> {
    let mut full = vec!["netns", "exec", ns.name(), "wg", "set", name];
    full.extend_from_slice(args);
    run_checked("ip", &full, stdin.map(str::as_bytes), DEFAULT_COMMAND_TIMEOUT).map(drop)
}

fn wg_show(ns: &Ns, name: &str, what: &str) -> Result<String, LabError> {
    Ok(ns.exec(&["wg", "show", name, what])?.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz_and_name_their_owner() {
        let (a, b) = interface_names("rl", 4_194_304).unwrap();
        assert!(a.starts_with("rl4194304g") && a.ends_with('a'), "{a}");
        assert!(b.ends_with('b') && a.len() <= MAX_IFNAME && b.len() == a.len());
        assert_eq!(owner_pid("rl", &a), Some(4_194_304));
        assert_eq!(owner_pid("rl", "rlab12g0a"), None, "another prefix's name");
        assert_eq!(owner_pid("rl", "rl12x0a"), None, "a namespace name");
        assert!(
            interface_names("rlabcd", 4_194_304).is_err(),
            "too long is refused"
        );
    }
}
