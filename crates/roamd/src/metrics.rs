//! Prometheus metrics, opt-in (`roamd --metrics 127.0.0.1:9641`): the status snapshot's
//! numbers in the Prometheus text format (encoded by `prometheus-client`), served over
//! HTTP (`tiny_http`) at `/metrics` on the address given, and nowhere by default: the
//! counters say which hosts this one talks to, so exposing them is the operator's call.
//!
//! What is exported, all from one [`Status`]:
//! - `roam_protocol_events_total{counter}`: every counter of the protocol core (each
//!   drop reason among them: `drop_malformed`, `drop_bad_auth`, `drop_replay`, ...);
//! - `roam_daemon_events_total{counter}`: the daemon's own (datagrams, scans, control
//!   socket requests and refusals, ...);
//! - `roam_dataplane_total{counter}`: every number the data plane reports (packets and
//!   bytes translated, held and budget drops, ICMP errors relayed, ...), named by its
//!   path in the status JSON (`egress_translated_packets`, `icmp_translated`);
//! - gauges: `roam_up`, `roam_uptime_seconds`, `roam_peers`, `roam_flows`,
//!   `roam_flows_migrated`, `roam_retained_addresses`, and per peer
//!   `roam_peer_rtt_seconds{peer}`, `roam_peer_flows{peer}`, `roam_peer_last_move_seconds{peer}`.
//!
//! The daemon renders the text once per status snapshot (every second) and the server
//! thread hands out the latest: a scrape never waits for the daemon's loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::status::Status;

type Labels = Vec<(String, String)>;

/// Renders `status` in the Prometheus text exposition format.
pub fn render(status: &Status) -> String {
    let mut reg = Registry::with_prefix("roam");

    let protocol = Family::<Labels, Counter>::default();
    for (name, v) in status.counters.iter() {
        protocol
            .get_or_create(&vec![("counter".into(), name.to_owned())])
            .inc_by(v);
    }
    reg.register(
        "protocol_events",
        "Protocol core counters, each drop reason included",
        protocol,
    );

    let daemon = Family::<Labels, Counter>::default();
    if let serde_json::Value::Object(m) = serde_json::to_value(&status.daemon).unwrap_or_default() {
        for (name, v) in m {
            if let Some(v) = v.as_u64() {
                daemon.get_or_create(&vec![("counter".into(), name)]).inc_by(v);
            }
        }
    }
    reg.register("daemon_events", "roamd's own counters", daemon);

    let plane = Family::<Labels, Counter>::default();
    if let Some(c) = &status.data_plane_counters {
        let mut leaves = Vec::new();
        numeric_leaves(&c.to_value(), String::new(), &mut leaves);
        for (name, v) in leaves {
            plane.get_or_create(&vec![("counter".into(), name)]).inc_by(v);
        }
    }
    reg.register(
        "dataplane",
        "Data plane counters (translated, dropped while held or over budget, ICMP relayed, ...)",
        plane,
    );

    let gauge = |reg: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        reg.register(name, help, g);
    };
    gauge(
        &mut reg,
        "up",
        "1 while roamd handles moves (0 after `roam down`)",
        i64::from(status.up),
    );
    gauge(
        &mut reg,
        "peers",
        "Peers with a session",
        status.peers.len() as i64,
    );
    gauge(
        &mut reg,
        "flows",
        "Flows roamd knows of",
        status.flows.len() as i64,
    );
    gauge(
        &mut reg,
        "flows_migrated",
        "Flows whose current tuple differs from their original one",
        status.flows.iter().filter(|f| f.migrated()).count() as i64,
    );
    gauge(
        &mut reg,
        "retained_addresses",
        "Old addresses kept on lo for sockets still using them",
        status.retained.len() as i64,
    );
    let fgauge = |reg: &mut Registry, name: &str, help: &str, v: f64| {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(v);
        reg.register(name, help, g);
    };
    fgauge(
        &mut reg,
        "uptime_seconds",
        "Seconds since roamd started",
        status.uptime_s,
    );

    let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let flows = Family::<Labels, Gauge>::default();
    let last_move = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for p in &status.peers {
        let l = vec![("peer".into(), p.name.clone().unwrap_or_else(|| p.node.clone()))];
        if let Some(ms) = p.rtt_ms {
            rtt.get_or_create(&l).set(ms / 1000.0);
        }
        flows.get_or_create(&l).set(p.flows as i64);
        if let Some(ms) = p.last_move_ms {
            last_move.get_or_create(&l).set(ms / 1000.0);
        }
    }
    reg.register(
        "peer_rtt_seconds",
        "Smoothed control-channel round-trip time",
        rtt,
    );
    reg.register("peer_flows", "Flows with the peer", flows);
    reg.register(
        "peer_last_move_seconds",
        "How long the last move with the peer took to agree",
        last_move,
    );

    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// The numeric leaves of a JSON value, named by their path joined with `_`.
fn numeric_leaves(v: &serde_json::Value, path: String, out: &mut Vec<(String, u64)>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                out.push((path, n));
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}_{k}")
                };
                numeric_leaves(v, p, out);
            }
        }
        _ => {}
    }
}

/// The HTTP server: `GET /metrics` answers the latest rendering; anything else 404.
pub struct MetricsServer {
    latest: Arc<Mutex<String>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr`. Fails (roamd does not start) if the address cannot be bound:
    /// an operator who asked for metrics should hear that they are not there.
    pub fn start(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let server = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
        let latest = Arc::new(Mutex::new(String::new()));
        let (s, l) = (server.clone(), latest.clone());
        let thread = std::thread::Builder::new()
            .name("roam-metrics".into())
            .spawn(move || serve(&s, &l))?;
        tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
        Ok(MetricsServer {
            latest,
            server,
            thread: Some(thread),
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the next scrape gets.
    pub fn publish(&self, status: &Status) {
        let text = render(status);
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, latest: &Mutex<String>) {
    // `incoming_requests` ends when the server is unblocked.
    for req in server.incoming_requests() {
        let ok = *req.method() == tiny_http::Method::Get && req.url().split('?').next() == Some("/metrics");
        let res = if ok {
            let body = latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let ct = tiny_http::Header::from_bytes(
                &b"Content-Type"[..],
                &b"text/plain; version=0.0.4; charset=utf-8"[..],
            )
            .expect("a valid header");
            req.respond(tiny_http::Response::from_string(body).with_header(ct))
        } else {
            req.respond(tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404))
        };
        if let Err(e) = res {
            tracing::debug!("metrics: answering a scrape: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as roamd writes it, read back (the CLI's way).
    fn status() -> Status {
        let v = serde_json::json!({
            "node": "a1b2c3", "public_key": "KEY", "pid": 7, "uptime_s": 12.5, "up": true,
            "control_socket": null, "control_port": 4791, "data_plane": "nftables",
            "data_plane_counters": {
                "egress_translated": {"packets": 10, "bytes": 1500},
                "icmp": {"translated": 2, "malformed": 0}
            },
            "addresses": ["10.0.2.7"], "retained": ["10.0.1.2"],
            "peers": [{
                "node": "d4e5f6", "name": "server", "public_key": "PK", "control": "10.0.9.2:4791",
                "addresses": ["10.0.9.2"], "rtt_ms": 20.0, "flows": 1,
                "last_move_at_s": 3.0, "last_move_ms": 21.5
            }],
            "flows": [],
            "counters": {"drop_malformed": 3, "drop_bad_auth": 0, "moves_completed": 1},
            "daemon": {"datagrams_received": 9},
            "events": []
        });
        serde_json::from_value(v).expect("a status")
    }

    #[test]
    fn the_status_numbers_come_out_in_prometheus_text_format() {
        let text = render(&status());
        for line in [
            "roam_protocol_events_total{counter=\"drop_malformed\"} 3",
            "roam_protocol_events_total{counter=\"drop_bad_auth\"} 0",
            "roam_daemon_events_total{counter=\"datagrams_received\"} 9",
            "roam_dataplane_total{counter=\"egress_translated_packets\"} 10",
            "roam_dataplane_total{counter=\"icmp_translated\"} 2",
            "roam_up 1",
            "roam_peers 1",
            "roam_retained_addresses 1",
            "roam_peer_rtt_seconds{peer=\"server\"} 0.02",
            "roam_peer_flows{peer=\"server\"} 1",
            "# TYPE roam_protocol_events counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_server_answers_metrics_and_nothing_else() {
        let m = MetricsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        m.publish(&status());
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(m.addr()).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(
            ok.contains("text/plain; version=0.0.4") && ok.contains("roam_up 1"),
            "{ok}"
        );
        let nf = get("/other");
        assert!(nf.contains(" 404 "), "{nf}");
        drop(m); // joins the thread: must not hang
    }
}
