//! The operator's control socket: `roam status`, `roam peers`, `roam flows`, `roam up`
//! and `roam down` talk to roamd over a Unix stream socket (by default
//! [`DEFAULT_SOCKET`]).
//!
//! Protocol: the client sends one JSON line, `{"version":1,"request":"status"}`, and
//! roamd answers one JSON line, `{"version":1,"response":"status","body":{...}}`, then
//! closes the connection. The types below are the protocol; the daemon serves them
//! ([`Server`]) and the CLI calls them ([`call`]).
//!
//! Access: the socket is mode 0600 in a 0755 directory (only root can connect), and
//! roamd checks every caller's credentials with SO_PEERCRED (the kernel's, not the
//! caller's word) and refuses any uid but 0 and its own: the file mode is the first
//! line of defence, the credential check the second. A request is bounded in size
//! ([`MAX_REQUEST`]) and time ([`REQUEST_TIMEOUT`]); anything else is answered with an
//! error and changes nothing.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::status::{FlowStatus, PeerStatus, Status};

/// Where roamd serves its control socket unless told otherwise (`--socket`).
pub const DEFAULT_SOCKET: &str = "/run/roam/roamd.sock";
/// The protocol's version: a request or response of another is refused.
pub const VERSION: u32 = 1;
/// The largest request roamd reads (a request is a few dozen bytes).
pub const MAX_REQUEST: usize = 64 * 1024;
/// The largest response the client reads (a status with many thousands of flows).
pub const MAX_RESPONSE: usize = 64 << 20;
/// How long roamd waits for a request once a client has connected, and for the client
/// to take its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;
/// What roamd answers a caller who is not root.
pub const PERMISSION_DENIED: &str = "permission denied: roam needs root (run with sudo)";

/// What the operator asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The whole status (answer: [`Response::Status`]).
    Status,
    /// The peers (answer: [`Response::Peers`]).
    Peers,
    /// The flows (answer: [`Response::Flows`]).
    Flows,
    /// Turn roam back on after `Down` (answer: [`Response::Ok`]).
    Up,
    /// Stop translating and handling moves (answer: [`Response::Ok`]).
    Down,
}

impl Request {
    /// The request's name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Peers => "peers",
            Request::Flows => "flows",
            Request::Up => "up",
            Request::Down => "down",
        }
    }
}

/// A request as sent: one JSON object on one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    pub version: u32,
    pub request: Request,
}

/// The peers, and what their times are relative to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerList {
    /// Seconds since roamd started (peers' times count from then).
    pub uptime_s: f64,
    pub peers: Vec<PeerStatus>,
}

/// The flows, with what names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    /// Seconds since roamd started (flows' times count from then, in nanoseconds).
    pub uptime_s: f64,
    /// Configured names of peers, by node identifier.
    pub peer_names: std::collections::BTreeMap<String, String>,
    pub flows: Vec<FlowStatus>,
}

/// roamd's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", content = "body", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Peers(PeerList),
    Flows(FlowList),
    /// A command was carried out (or had nothing to do).
    Ok {
        message: String,
    },
    /// The request was refused; nothing changed.
    Error {
        message: String,
    },
}

/// A response as sent: one JSON object on one line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseLine {
    pub version: u32,
    #[serde(flatten)]
    pub response: Response,
}

/// Why a request was not understood. Each is answered with [`Response::Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("request larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("no request within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("empty request")]
    Empty,
    #[error("not a request line (expected {{\"version\":{VERSION},\"request\":\"status\"}}): {0}")]
    NotJson(String),
    #[error(
        "unsupported protocol version {got} (roamd speaks {VERSION}): use the roam command of this roamd"
    )]
    Version { got: u64 },
    #[error("unknown request {0:?} (known: status, peers, flows, up, down)")]
    Unknown(String),
    #[error("cannot read the request: {0}")]
    Io(#[from] io::Error),
}

/// Parses one request line (without its newline). Total: any bytes give a request or
/// an error.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST {
        return Err(RequestError::TooLarge { max: MAX_REQUEST });
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::Empty);
    }
    // In two steps, so that a well-formed request of another version or an unknown
    // name gets its own answer rather than a parse error.
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| RequestError::NotJson("not a JSON object".into()))?;
    match obj.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(got) => return Err(RequestError::Version { got }),
        None => return Err(RequestError::NotJson("no \"version\" number".into())),
    }
    match obj.get("request") {
        Some(serde_json::Value::String(name)) => {
            let line: RequestLine = serde_json::from_value(value.clone()).map_err(|e| {
                if ["status", "peers", "flows", "up", "down"].contains(&name.as_str()) {
                    RequestError::NotJson(e.to_string())
                } else {
                    RequestError::Unknown(name.chars().take(64).collect())
                }
            })?;
            Ok(line.request)
        }
        _ => Err(RequestError::NotJson("no \"request\" name".into())),
    }
}

/// Reads one line of at most `max` bytes (the newline excluded); a line may also end at
/// the end of the stream.
pub async fn read_request_line<R: AsyncRead + Unpin>(r: R, max: usize) -> Result<Vec<u8>, RequestError> {
    let mut reader = BufReader::new(r.take(max as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Err(RequestError::TooLarge { max });
    }
    Ok(line)
}

/// Whether a caller of this uid may use the socket: root, or whoever roamd runs as.
pub fn allowed(uid: u32, own_euid: u32) -> bool {
    uid == 0 || uid == own_euid
}

/// The caller of a request, as the kernel reports it (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

/// A request the daemon's loop must answer: understood, or why not. The loop answers
/// everything, so one place counts.
#[derive(Debug)]
pub enum Asked {
    Request(Request),
    /// The caller is not root (or its credentials could not be read).
    Denied,
    Malformed(RequestError),
}

/// One connection's question, and where its answer goes.
#[derive(Debug)]
pub struct Call {
    pub caller: Caller,
    pub asked: Asked,
    pub reply: oneshot::Sender<Response>,
}

/// What stops roamd from serving its control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("{0} exists and is not a socket: remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error("another roamd is serving {0} (stop it, or give this one another --socket)")]
    InUse(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

/// The control socket, served on the daemon's runtime. Dropping it stops serving and
/// removes the socket file (if it is still the one it created).
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// Device and inode of the socket file, so that only ours is ever removed.
    file: (u64, u64),
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `path` (creating its directory, mode 0755, if missing; removing a stale
    /// socket that nothing listens on; never another file, never a live roamd's
    /// socket), makes it mode 0600, and serves it: every connection's request goes to
    /// `tx` with its caller's credentials.
    pub fn bind(path: &Path, tx: mpsc::Sender<Call>) -> Result<Server, ServeError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
            // Whatever the umask: others may reach the socket, its mode decides.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(format!("cannot chmod {}", dir.display())))?;
        }
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(io_err(format!("cannot bind {}", path.display())))?;
        // Between bind and chmod the socket has the umask's mode: SO_PEERCRED still
        // refuses whoever connects in that moment.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("cannot chmod {}", path.display())))?;
        let meta = std::fs::metadata(path).map_err(io_err(format!("cannot stat {}", path.display())))?;
        // SAFETY: geteuid has no preconditions and cannot fail (POSIX).
        let euid = unsafe { libc::geteuid() };
        info!(path = %path.display(), "control socket ready");
        Ok(Server {
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
            task: tokio::spawn(serve(listener, tx, euid)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        // Remove only our own socket: another roamd may have replaced it since.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file) {
            match std::fs::remove_file(&self.path) {
                Ok(()) => debug!(path = %self.path.display(), "control socket removed"),
                Err(e) => warn!(path = %self.path.display(), "cannot remove the control socket: {e}"),
            }
        }
    }
}

/// Makes way for a new socket at `path`: nothing there, or a socket nobody listens on
/// (a roamd that crashed), which is removed.
fn remove_stale(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("cannot stat {}", path.display()))(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    // A connection that sends nothing is not counted by the roamd that serves it.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(io_err(format!(
                "cannot remove the stale socket {}",
                path.display()
            )))?;
            info!(path = %path.display(), "removed a stale control socket");
            Ok(())
        }
        Err(e) => Err(io_err(format!("cannot probe {}", path.display()))(e)),
    }
}

async fn serve(listener: UnixListener, tx: mpsc::Sender<Call>, euid: u32) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot first: the backlog holds the rest.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    connection(stream, tx, euid).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                // Bounded: a broken listener (out of descriptors) must not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(mut stream: UnixStream, tx: mpsc::Sender<Call>, euid: u32) {
    let cred = stream.peer_cred().ok();
    let caller = Caller {
        uid: cred.map(|c| c.uid()),
        pid: cred.and_then(|c| c.pid()),
    };
    // Read the request even from a caller who will be refused: closing a Unix socket
    // with unread data resets the connection, and the caller would not see why.
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_request_line(&mut stream, MAX_REQUEST)).await
    {
        Ok(r) => r,
        Err(_) => Err(RequestError::Timeout),
    };
    let asked = match (caller.uid, line) {
        (None, _) => Asked::Denied,
        (Some(uid), _) if !allowed(uid, euid) => Asked::Denied,
        // Connected and closed without a word: a probe (another roamd looking for a
        // live socket), not a request.
        (_, Ok(l)) if l.is_empty() => return,
        (_, Ok(l)) => match parse_request(&l) {
            Ok(r) => Asked::Request(r),
            Err(e) => Asked::Malformed(e),
        },
        (_, Err(e)) => Asked::Malformed(e),
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(Call { caller, asked, reply }).await.is_err() {
        return;
    }
    let Ok(response) = answer.await else { return };
    let mut bytes = match serde_json::to_vec(&ResponseLine {
        version: VERSION,
        response,
    }) {
        Ok(b) => b,
        Err(e) => {
            warn!("cannot encode a control answer: {e}");
            return;
        }
    };
    bytes.push(b'\n');
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("control answer not delivered: {e}"),
        Err(_) => debug!("control answer not taken within {} s", REQUEST_TIMEOUT.as_secs()),
    }
}

// ---------------------------------------------------------------------------------------
// The client (the `roam` command): blocking, no runtime needed.

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("roamd is not running (no socket at {0})")]
    NoSocket(PathBuf),
    #[error("roamd is not running (nothing listens on {0})")]
    NotListening(PathBuf),
    #[error("permission denied on {0}")]
    PermissionDenied(PathBuf),
    #[error("roamd did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("roamd's answer is larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("roamd's answer is not understood ({0}): is roam the same version as roamd?")]
    BadResponse(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Sends `request` to the roamd serving `path` and returns its answer (which may be a
/// [`Response::Error`]). `timeout` bounds each read and write.
pub fn call(path: &Path, request: Request, timeout: Duration) -> Result<Response, ClientError> {
    let io = |source: io::Error| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(path.to_owned()),
        io::ErrorKind::ConnectionRefused => ClientError::NotListening(path.to_owned()),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_owned()),
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(&RequestLine {
        version: VERSION,
        request,
    })
    .expect("a request always encodes");
    line.push(b'\n');
    let timed_out = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
        _ => io(e),
    };
    stream.write_all(&line).map_err(timed_out)?;
    let mut reader = io::BufReader::new(stream.take(MAX_RESPONSE as u64 + 1));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(timed_out)?;
    if answer.len() > MAX_RESPONSE {
        return Err(ClientError::TooLarge);
    }
    parse_response(&answer)
}

/// Parses one response line.
pub fn parse_response(line: &[u8]) -> Result<Response, ClientError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ClientError::BadResponse(
            "no answer: roamd closed the connection".into(),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        other => {
            return Err(ClientError::BadResponse(format!(
                "protocol version {other:?}, this roam speaks {VERSION}"
            )));
        }
    }
    serde_json::from_value::<ResponseLine>(value)
        .map(|l| l.response)
        .map_err(|e| ClientError::BadResponse(e.to_string()))
}

impl Response {
    /// The body alone, as `--json` prints it: pretty, fields in their order.
    pub fn body_pretty(&self) -> String {
        let body = match self {
            Response::Status(s) => serde_json::to_string_pretty(s),
            Response::Peers(p) => serde_json::to_string_pretty(p),
            Response::Flows(f) => serde_json::to_string_pretty(f),
            Response::Ok { message } | Response::Error { message } => {
                serde_json::to_string_pretty(&serde_json::json!({ "message": message }))
            }
        };
        body.expect("a response always encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DaemonCounters, NamedCounters, PlaneCounters};

    fn status() -> Status {
        Status {
            node: "00000000002a".into(),
            public_key: "key".into(),
            pid: 7,
            uptime_s: 1.5,
            up: true,
            control_socket: Some("/run/roam/roamd.sock".into()),
            control_port: 4791,
            data_plane: "nftables".into(),
            data_plane_counters: Some(PlaneCounters::Read(
                serde_json::json!({"hold_dropped": {"packets": 1, "bytes": 60}}),
            )),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            retained: vec![],
            peers: vec![],
            flows: vec![],
            counters: NamedCounters(vec![("drop_replay".into(), 2)]),
            daemon: DaemonCounters::default(),
            timings: Default::default(),
            events: vec![],
        }
    }

    #[test]
    fn every_request_parses_from_its_line() {
        for r in [
            Request::Status,
            Request::Peers,
            Request::Flows,
            Request::Up,
            Request::Down,
        ] {
            let line = format!("{{\"version\":1,\"request\":\"{}\"}}", r.name());
            assert_eq!(parse_request(line.as_bytes()).unwrap(), r);
            let encoded = serde_json::to_vec(&RequestLine {
                version: VERSION,
                request: r,
            })
            .unwrap();
            assert_eq!(parse_request(&encoded).unwrap(), r);
        }
        // Whitespace around is fine (a person typing into socat).
        assert_eq!(
            parse_request(b"  {\"request\":\"up\", \"version\":1}\r").unwrap(),
            Request::Up
        );
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"   ", "empty"),
            (b"status", "not a request line"),
            (b"{\"version\":1,\"request\":", "not a request line"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"request\":\"status\"}", "no \"version\""),
            (b"{\"version\":\"1\",\"request\":\"status\"}", "no \"version\""),
            (
                b"{\"version\":2,\"request\":\"status\"}",
                "unsupported protocol version 2",
            ),
            (b"{\"version\":1}", "no \"request\""),
            (b"{\"version\":1,\"request\":7}", "no \"request\""),
            (
                b"{\"version\":1,\"request\":\"teleport\"}",
                "unknown request \"teleport\"",
            ),
            (
                b"{\"version\":1,\"request\":\"status\",\"extra\":1}",
                "not a request line",
            ),
            (b"\xff\xfe", "not a request line"),
        ];
        for (line, want) in cases {
            let e = parse_request(line).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
        let big = vec![b' '; MAX_REQUEST + 1];
        assert!(matches!(parse_request(&big), Err(RequestError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn a_request_line_is_bounded() {
        let ok = read_request_line(&b"{\"a\":1}\nrest"[..], 16).await.unwrap();
        assert_eq!(ok, b"{\"a\":1}");
        // Ended by the end of the stream.
        assert_eq!(read_request_line(&b"abc"[..], 16).await.unwrap(), b"abc");
        // Exactly the limit, then the newline: accepted.
        let exact = [vec![b'x'; 16], b"\n".to_vec()].concat();
        assert_eq!(read_request_line(&exact[..], 16).await.unwrap().len(), 16);
        // One byte over, with or without a newline later: refused without reading on.
        let over = [vec![b'x'; 17], b"\n".to_vec()].concat();
        assert!(matches!(
            read_request_line(&over[..], 16).await,
            Err(RequestError::TooLarge { max: 16 })
        ));
        let endless = vec![b'x'; MAX_REQUEST * 4];
        assert!(matches!(
            read_request_line(&endless[..], MAX_REQUEST).await,
            Err(RequestError::TooLarge { .. })
        ));
    }

    #[test]
    fn responses_read_back_and_their_body_is_the_payload() {
        for response in [
            Response::Status(Box::new(status())),
            Response::Peers(PeerList {
                uptime_s: 3.0,
                peers: vec![],
            }),
            Response::Flows(FlowList {
                uptime_s: 3.0,
                peer_names: Default::default(),
                flows: vec![],
            }),
            Response::Ok {
                message: "roam is down".into(),
            },
            Response::Error {
                message: PERMISSION_DENIED.into(),
            },
        ] {
            let line = serde_json::to_vec(&ResponseLine {
                version: VERSION,
                response: response.clone(),
            })
            .unwrap();
            assert!(!line.contains(&b'\n'), "one line");
            assert_eq!(parse_response(&line).unwrap(), response);
        }
        // The body is the response's "body", in the order the fields are declared.
        for response in [
            Response::Status(Box::new(status())),
            Response::Peers(PeerList {
                uptime_s: 3.0,
                peers: vec![],
            }),
            Response::Ok { message: "m".into() },
        ] {
            let body: serde_json::Value = serde_json::from_str(&response.body_pretty()).unwrap();
            assert_eq!(body, serde_json::to_value(&response).unwrap()["body"]);
        }
        let text = Response::Status(Box::new(status())).body_pretty();
        assert!(
            text.find("\"node\"").unwrap() < text.find("\"data_plane\"").unwrap(),
            "{text}"
        );
    }

    #[test]
    fn a_response_of_another_version_or_shape_is_refused() {
        for line in [
            &b""[..],
            b"garbage",
            b"{\"response\":\"ok\",\"body\":{\"message\":\"x\"}}",
            b"{\"version\":9,\"response\":\"ok\",\"body\":{\"message\":\"x\"}}",
            b"{\"version\":1,\"response\":\"weird\"}",
        ] {
            assert!(
                matches!(parse_response(line), Err(ClientError::BadResponse(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn only_root_and_roamds_own_user_may_ask() {
        assert!(allowed(0, 0));
        assert!(!allowed(65534, 0));
        assert!(!allowed(1000, 0));
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 1000));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("roamd-ctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The server end to end on a real socket (as root or not: the caller is whoever
    /// runs the tests, which is roamd's own user here).
    #[tokio::test]
    async fn the_socket_is_private_answers_one_line_and_goes_at_drop() {
        let dir = scratch("serve");
        let path = dir.join("sub").join("roamd.sock");
        let (tx, mut rx) = mpsc::channel(4);
        let server = Server::bind(&path, tx).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        // The daemon's loop, answering what comes.
        let answering = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(call) = rx.recv().await {
                let response = match &call.asked {
                    Asked::Request(r) => Response::Ok {
                        message: r.name().into(),
                    },
                    Asked::Denied => Response::Error {
                        message: PERMISSION_DENIED.into(),
                    },
                    Asked::Malformed(e) => Response::Error {
                        message: e.to_string(),
                    },
                };
                seen.push((call.caller, format!("{:?}", call.asked)));
                let _ = call.reply.send(response);
            }
            seen
        });
        let p = path.clone();
        let ok = tokio::task::spawn_blocking(move || call(&p, Request::Down, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ok,
            Response::Ok {
                message: "down".into()
            }
        );
        // Garbage, by hand.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"version\":1,\"request\":\"reboot\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.ends_with('\n'), "{answer}");
        match parse_response(answer.as_bytes()).unwrap() {
            Response::Error { message } => assert!(message.contains("unknown request"), "{message}"),
            other => panic!("{other:?}"),
        }
        // A second server on the same path is refused while the first lives.
        let (tx2, _rx2) = mpsc::channel(1);
        let e = Server::bind(&path, tx2).unwrap_err();
        assert!(matches!(e, ServeError::InUse(_)), "{e}");
        drop(server);
        assert!(!path.exists(), "removed at drop");
        let seen = answering.await.unwrap();
        assert_eq!(seen.len(), 2, "the probe is not a request: {seen:?}");
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(seen[0].0.uid, Some(me));
        assert_eq!(seen[0].0.pid, Some(std::process::id() as i32));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_another_file_never_is() {
        let dir = scratch("stale");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roamd.sock");
        // A socket file nobody listens on: what a crashed roamd leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (tx, _rx) = mpsc::channel(1);
        let server = Server::bind(&path, tx).unwrap();
        drop(server);
        // A regular file is not ours to remove.
        std::fs::write(&path, "not a socket").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let e = Server::bind(&path, tx).unwrap_err();
        assert!(matches!(e, ServeError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_client_says_when_nothing_is_there() {
        let dir = scratch("client");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roamd.sock");
        let e = call(&path, Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NoSocket(_)), "{e}");
        assert!(e.to_string().contains("roamd is not running"), "{e}");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = call(&path, Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NotListening(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
