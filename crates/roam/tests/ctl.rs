//! The operator's commands against a real roamd: `roam status`, `peers`, `flows`,
//! `down` and `up` over its control socket, and only root may use it. roamd runs in a
//! fresh network namespace of its own (nftables data plane), with its socket in a
//! directory of the test's; everything is removed even if a test fails. Needs root;
//! `ROAM_SKIP_NETNS=1` skips it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use roam_lab::netns::{Child, ChildOutput};
use roam_lab::{Lab, Ns};
use serde_json::Value;

const ROAM: &str = env!("CARGO_BIN_EXE_roam");

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// roamd in a namespace of its own. Fields drop in order: roamd, then the namespace,
/// then the directory.
struct Roamd {
    child: Option<Child>,
    ns: Ns,
    _lab: Lab,
    dir: Scratch,
    socket: PathBuf,
    node: String,
    public_key: String,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the command runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits (bounded) until `f` gives something.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Roamd {
    /// Starts roamd in a fresh namespace (`None` when the lab is switched off).
    /// `before`: done to the socket's directory before roamd starts.
    fn start(name: &str, before: impl FnOnce(&Path)) -> Option<Roamd> {
        match roam_lab::lab_available() {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("skipped: ROAM_SKIP_NETNS=1");
                return None;
            }
            Err(e) => panic!("{e}: the roamd tests need root (or set ROAM_SKIP_NETNS=1)"),
        }
        let dir = std::env::temp_dir().join(format!("roam-ctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Others (the `nobody` test) must reach the socket's directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = Scratch(dir);
        let lab = Lab::with_prefix("rctl").expect("a lab");
        let ns = lab.add_ns("a").expect("a namespace");
        ns.ip_batch(
            "link add v0 type veth peer name v1\n\
             addr add 10.231.0.1/24 dev v0\n\
             addr add 10.231.0.2/24 dev v1\n\
             link set v0 up\n\
             link set v1 up\n",
        )
        .expect("addresses");

        let keygen = |file: &str| {
            let o = run(Command::new(ROAM).args(["keygen", dir.0.join(file).to_str().unwrap()]));
            assert!(o.status.success(), "{}", text(&o.stderr));
            let node = text(&o.stderr)
                .split("(node ")
                .nth(1)
                .and_then(|s| s.split(')').next())
                .expect("keygen names the node")
                .to_owned();
            (text(&o.stdout).trim().to_owned(), node)
        };
        let (public_key, node) = keygen("a.key");
        let (peer_key, _) = keygen("b.key");
        let config = dir.0.join("roam.toml");
        std::fs::write(
            &config,
            format!(
                "private_key_file = \"a.key\"\n\
                 [[peer]]\nname = \"bee\"\npublic_key = \"{peer_key}\"\n\
                 [daemon]\ndata_plane = \"nftables\"\nflow_scan_ms = 100\n"
            ),
        )
        .unwrap();
        let socket = dir.0.join("run").join("roamd.sock");
        before(&dir.0.join("run"));
        let child = ns
            .spawn(
                &[
                    ROAM,
                    "daemon",
                    "--config",
                    config.to_str().unwrap(),
                    "--socket",
                    socket.to_str().unwrap(),
                    "--state",
                    dir.0.join("state.json").to_str().unwrap(),
                ],
                ChildOutput::File(dir.0.join("roamd.log")),
            )
            .expect("roamd starts");
        let roamd = Roamd {
            child: Some(child),
            ns,
            _lab: lab,
            dir,
            socket,
            node,
            public_key,
        };
        wait_for("roamd's control socket", Duration::from_secs(20), || {
            if let Ok(Some(status)) = roamd.child.as_ref().unwrap().try_wait() {
                panic!("roamd exited ({status}):\n{}", roamd.log());
            }
            roamd.ctl(&["status", "--json"]).status.success().then_some(())
        });
        Some(roamd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("roamd.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().pid()
    }

    /// `roam ARGS --socket SOCKET` as root.
    fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new(ROAM).args(args).arg("--socket").arg(&self.socket))
    }

    /// `roam ARGS --socket SOCKET` as `nobody`.
    fn ctl_as_nobody(&self, args: &[&str]) -> Output {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", ROAM])
            .args(args)
            .arg("--socket")
            .arg(&self.socket))
    }

    /// `roam ARGS --json`, which must succeed, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.ctl(&a);
        assert!(o.status.success(), "{a:?}: {}\n{}", text(&o.stderr), self.log());
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{a:?}: {e}: {}", text(&o.stdout)))
    }

    /// Human output of a command that must succeed.
    fn human(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            text(&o.stderr),
            self.log()
        );
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    }

    /// Whether roam's nftables table is in roamd's namespace.
    fn nft_table(&self) -> bool {
        self.ns
            .exec_output(&["nft", "list", "table", "inet", "roam"], Duration::from_secs(10))
            .expect("nft runs")
            .status
            .success()
    }

    /// One raw request line, and roamd's answer.
    fn raw(&self, request: &[u8]) -> Value {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn daemon_counter(&self, name: &str) -> u64 {
        self.json(&["status"])["daemon"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no daemon counter {name}"))
    }

    /// SIGTERM, and roamd's exit (bounded).
    fn stop(&mut self) -> std::process::ExitStatus {
        let child = self.child.take().unwrap();
        let o = run(Command::new("kill").args(["-TERM", &child.pid().to_string()]));
        assert!(o.status.success(), "{}", text(&o.stderr));
        child
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap_or_else(|| panic!("roamd did not stop within 10 s of SIGTERM:\n{}", self.log()))
    }
}

/// A TCP connection in the namespace: flows roamd lists.
fn tcp_flow(ns: &Ns) -> (std::net::TcpListener, std::net::TcpStream, std::net::TcpStream) {
    ns.run(|| {
        let l = std::net::TcpListener::bind("10.231.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (l, c, s)
    })
    .expect("in the namespace")
}

fn has_flow(flows: &Value, port: u16) -> bool {
    flows["flows"].as_array().is_some_and(|fs| {
        fs.iter()
            .any(|f| f["original"]["local"] == format!("10.231.0.1:{port}"))
    })
}

#[test]
fn the_operator_sees_roamd_and_turns_it_down_and_up() {
    let Some(mut roamd) = Roamd::start("updown", |_| {}) else {
        return;
    };
    // Who and what, as configured.
    let s = roamd.json(&["status"]);
    assert_eq!(s["node"], roamd.node.as_str(), "{s}");
    assert_eq!(s["public_key"], roamd.public_key.as_str(), "{s}");
    assert_eq!(s["data_plane"], "nftables", "{s}");
    assert_eq!(s["control_port"], 4791, "{s}");
    assert_eq!(s["up"], true, "{s}");
    assert_eq!(s["pid"], roamd.pid(), "{s}");
    assert_eq!(s["control_socket"], roamd.socket.to_str().unwrap(), "{s}");
    let addresses = s["addresses"].to_string();
    assert!(
        addresses.contains("10.231.0.1") && addresses.contains("10.231.0.2"),
        "{s}"
    );
    let human = roamd.human(&["status"]);
    assert!(human.starts_with("roamd is up (pid "), "{human}");
    for want in [
        roamd.node.as_str(),
        roamd.public_key.as_str(),
        "nftables",
        "4791/udp",
        "drops and errors",
    ] {
        assert!(human.contains(want), "{want}:\n{human}");
    }

    // A flow, as `roam flows` shows it.
    let (listener, _c, _s) = tcp_flow(&roamd.ns);
    let port = listener.local_addr().unwrap().port();
    let flows = wait_for("the flow in roam flows", Duration::from_secs(10), || {
        let f = roamd.json(&["flows"]);
        has_flow(&f, port).then_some(f)
    });
    assert!(flows["uptime_s"].as_f64().unwrap() > 0.0, "{flows}");
    let human = roamd.human(&["flows"]);
    assert!(human.contains(&format!("10.231.0.1:{port} <->")), "{human}");
    // No peer runs roam here: none is listed.
    let peers = roamd.json(&["peers"]);
    assert_eq!(peers["peers"], serde_json::json!([]), "{peers}");
    assert!(roamd.human(&["peers"]).starts_with("no peers yet"));

    // Down: the data plane's table goes, roamd stays and says so.
    assert!(roamd.nft_table(), "the data plane is there while up");
    let out = roamd.human(&["down"]);
    assert!(out.starts_with("roam is down"), "{out}");
    assert!(!roamd.nft_table(), "roam down removes the translation");
    let s = roamd.json(&["status"]);
    assert_eq!(s["up"], false, "{s}");
    assert_eq!(s["flows"], serde_json::json!([]), "{s}");
    assert!(s["events"].to_string().contains("roam down"), "{s}");
    assert!(roamd.human(&["status"]).starts_with("roamd is DOWN"));
    // Down twice changes nothing.
    assert!(roamd.human(&["down"]).contains("already down"));
    // While down, flows are not followed.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!has_flow(&roamd.json(&["flows"]), port));

    // Up: the table and the flows come back.
    let out = roamd.human(&["up"]);
    assert!(out.starts_with("roam is up"), "{out}");
    assert!(roamd.nft_table(), "roam up opens the data plane again");
    assert_eq!(roamd.json(&["status"])["up"], true);
    wait_for("the flow again after up", Duration::from_secs(10), || {
        has_flow(&roamd.json(&["flows"]), port).then_some(())
    });
    assert!(roamd.human(&["up"]).contains("already up"));
    let s = roamd.json(&["status"]);
    assert!(s["daemon"]["ctl_requests"].as_u64().unwrap() >= 10, "{s}");
    assert_eq!(s["daemon"]["ctl_refused"], 0, "{s}");
    assert_eq!(s["daemon"]["ctl_malformed"], 0, "{s}");

    // A clean exit removes the socket and leaves the translation table for the next
    // roamd (migrated sessions keep working while it is down), whose entries it
    // persisted.
    let socket = roamd.socket.clone();
    let status = roamd.stop();
    assert!(status.success(), "{status}:\n{}", roamd.log());
    assert!(!socket.exists(), "the socket is removed at exit");
    assert!(roamd.nft_table(), "a stop keeps the table");
    let state = socket.parent().unwrap().parent().unwrap().join("state.json");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(state["format"], 1, "{state}");
    assert_eq!(state["data_plane"], "nftables", "{state}");
}

#[test]
fn only_root_may_ask_and_bad_requests_change_nothing() {
    // A socket left by a roamd that crashed: the new one replaces it.
    let Some(mut roamd) = Roamd::start("perm", |run| {
        std::fs::create_dir_all(run).unwrap();
        std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(std::os::unix::net::UnixListener::bind(run.join("roamd.sock")).unwrap());
    }) else {
        return;
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&roamd.socket), 0o600);
    assert!(
        roamd.log().contains("removed a stale control socket"),
        "{}",
        roamd.log()
    );

    // The file mode stops `nobody` before roamd hears anything.
    let o = roamd.ctl_as_nobody(&["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert!(
        e.contains(&format!("permission denied on {}", roamd.socket.display()))
            && e.contains("sudo roam status"),
        "{e}"
    );
    assert_eq!(roamd.daemon_counter("ctl_refused"), 0);

    // Past the file mode, roamd itself refuses by the caller's credentials.
    std::fs::set_permissions(&roamd.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for (cmd, hint) in [("status", "sudo roam status"), ("down", "sudo roam down")] {
        let o = roamd.ctl_as_nobody(&[cmd]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o.stderr));
        let e = text(&o.stderr);
        assert!(
            e.contains("roamd refused: permission denied") && e.contains(hint),
            "{cmd}: {e}"
        );
        assert!(o.stdout.is_empty(), "{cmd}: nothing of the status leaks");
    }
    let s = roamd.json(&["status"]);
    assert_eq!(s["daemon"]["ctl_refused"], 2, "{s}");
    assert_eq!(s["up"], true, "a refused `roam down` changes nothing: {s}");
    assert!(roamd.nft_table());

    // Malformed requests: answered with an error, counted, nothing changes.
    for (request, says) in [
        (b"garbage\n".to_vec(), "bad request: not a request line"),
        (
            b"{\"version\":1,\"request\":\"reboot\"}\n".to_vec(),
            "unknown request \"reboot\"",
        ),
        (
            b"{\"version\":7,\"request\":\"down\"}\n".to_vec(),
            "unsupported protocol version 7",
        ),
        (vec![b'x'; 70 * 1024], "larger than 65536 bytes"),
    ] {
        let answer = roamd.raw(&request);
        assert_eq!(answer["version"], 1, "{answer}");
        assert_eq!(answer["response"], "error", "{answer}");
        assert!(
            answer["body"]["message"].as_str().unwrap().contains(says),
            "{says}: {answer}"
        );
    }
    let s = roamd.json(&["status"]);
    assert_eq!(s["daemon"]["ctl_malformed"], 4, "{s}");
    assert_eq!(s["up"], true, "{s}");
    // A well-formed raw request is answered in the protocol's shape.
    let answer = roamd.raw(b"{\"version\":1,\"request\":\"peers\"}\n");
    assert_eq!(answer["response"], "peers", "{answer}");

    let status = roamd.stop();
    assert!(status.success(), "{status}:\n{}", roamd.log());
    assert!(!roamd.socket.exists());
}
