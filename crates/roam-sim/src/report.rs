//! What a run did, for people (`Display`) and machines (`serde`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::apps::Receipt;
use crate::net::NetCounters;
use crate::scenario::{Family, Side};
use crate::sim::Sim;
use roam_core::Instant;

/// How long after a move stalls are attributed to it.
const HANDOVER_WINDOW: Duration = Duration::from_secs(3);

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn at_ms(t: Instant) -> f64 {
    (t.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub t_ms: f64,
    pub host: String,
    pub what: String,
}

/// One direction of one flow.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub name: String,
    pub protocol: &'static str,
    pub from: String,
    pub to: String,
    pub bytes_expected: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sha256_sent: String,
    pub sha256_received: String,
    pub ok: bool,
    pub finished_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MoveReport {
    pub t_ms: f64,
    pub host: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Longest time a receiving application read nothing across the move (virtual ms).
    pub gap_ms: Option<f64>,
    /// The flow direction that saw that gap.
    pub gap_flow: Option<String>,
    /// From the move to the peer's confirmation of the update.
    pub confirmed_after_ms: Option<f64>,
    pub update_retransmits: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    pub name: String,
    pub roam: bool,
    pub address: Option<String>,
    pub translation_entries: usize,
    pub counters: BTreeMap<&'static str, u64>,
    pub dataplane: roam_core::plane::PlaneCounters,
    /// What reached the host from its link.
    pub received_packets: u64,
    pub received_bytes: u64,
    /// The host's roam peers as it sees them at the end.
    pub peers: Vec<PeerReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerReport {
    /// The peer's host name (from its key), or its node identifier.
    pub name: String,
    /// Where its control messages go.
    pub control: String,
    /// The addresses it has proven it receives at (whose flows are its flows).
    pub addresses: Vec<String>,
}

impl HostReport {
    /// A metric an expectation may name (see `scenario::metric_names`).
    pub fn metric(&self, name: &str) -> Option<u64> {
        match name {
            "received_bytes" => Some(self.received_bytes),
            "received_packets" => Some(self.received_packets),
            _ => self
                .counters
                .get(name)
                .copied()
                .or_else(|| serde_json::to_value(&self.dataplane).ok()?.get(name)?.as_u64()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub family: Family,
    pub seed: u64,
    /// Every flow completed with identical digests and every expectation held.
    pub ok: bool,
    pub failures: Vec<String>,
    pub virtual_ms: f64,
    pub wall_ms: f64,
    pub engine_steps: u64,
    pub timeline: Vec<TimelineEntry>,
    pub flows: Vec<FlowReport>,
    pub moves: Vec<MoveReport>,
    pub control_messages_sent: u64,
    pub control_retransmits: u64,
    pub hosts: Vec<HostReport>,
    pub network: NetCounters,
}

impl Report {
    /// The largest handover gap of the run, if any move had an active flow.
    pub fn max_gap_ms(&self) -> Option<f64> {
        self.moves.iter().filter_map(|m| m.gap_ms).reduce(f64::max)
    }
}

/// The handover gap of a move at `t` as the receiving application saw it: the longest
/// time it read nothing while it was still owed data (`demand(t)`: bytes the sender
/// had been asked to send by `t`), from its last read before the move until the window
/// after the move closes. Data already in flight on the old path keeps arriving for a
/// while after the move, so the stall is usually not the first interval after `t`.
/// `None` if the flow owed nothing at the move (an idle flow has no gap).
fn gap_at(r: &Receipt, demand: &dyn Fn(Instant) -> u64, t: Instant) -> Option<Duration> {
    let received_by = |at: Instant| {
        r.reads
            .iter()
            .take_while(|(x, _)| *x <= at)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    if received_by(t) >= demand(t) {
        return None;
    }
    let end = t + HANDOVER_WINDOW;
    // Read instants from the last one before the move (or the move itself).
    let mut points: Vec<(Instant, u64)> = Vec::new();
    let mut got = 0;
    for (at, n) in &r.reads {
        got += n;
        if *at <= t {
            points.clear();
        }
        if *at > end {
            break;
        }
        points.push((*at, got));
    }
    if points.first().is_none_or(|(at, _)| *at > t) {
        points.insert(0, (t, received_by(t)));
    }
    points
        .windows(2)
        .filter(|w| w[0].1 < demand(w[0].0))
        .map(|w| w[1].0 - w[0].0)
        .max()
}

pub(crate) fn build(sim: Sim<'_>, wall: Duration) -> Report {
    let sc = sim.sc;
    let name = |h: usize| sc.hosts[h].name.clone();
    let mut flows = Vec::new();
    // (label, receipt, demand) of every receiving direction, for gaps.
    type Demand<'a> = Box<dyn Fn(Instant) -> u64 + 'a>;
    let mut receipts: Vec<(String, &Receipt, Demand<'_>)> = Vec::new();
    let mut failures = sim.failures.clone();
    for app in &sim.tcp {
        for k in 0..2 {
            let expected = app.total_from(k);
            if expected == 0 {
                continue;
            }
            let (tx, rx) = (&app.ends[k], &app.ends[1 - k]);
            let label = format!("{} {}->{}", app.spec.name, name(tx.host), name(rx.host));
            let ok = rx.received.bytes == expected
                && tx.sent.bytes == expected
                && tx.sent.digest() == rx.received.digest()
                && app.failed.is_none();
            if !ok {
                failures.push(format!(
                    "tcp {label}: {} of {expected} bytes arrived{}",
                    rx.received.bytes,
                    app.failed.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()
                ));
            }
            flows.push(FlowReport {
                name: app.spec.name.clone(),
                protocol: "tcp",
                from: name(tx.host),
                to: name(rx.host),
                bytes_expected: expected,
                bytes_sent: tx.sent.bytes,
                bytes_received: rx.received.bytes,
                sha256_sent: tx.sent.digest(),
                sha256_received: rx.received.digest(),
                ok,
                finished_ms: app.finished_at.map(at_ms),
                error: app.failed.clone(),
            });
            let side = if k == 0 { Side::Client } else { Side::Server };
            let spec = &app.spec;
            receipts.push((
                label,
                &rx.received,
                Box::new(move |t: Instant| spec.demand(side, t - Instant::ZERO)),
            ));
        }
    }
    for app in &sim.udp {
        let label = format!("{} {}->{}", app.spec.name, name(app.sender), name(app.receiver));
        let ok = app.received.bytes == app.spec.bytes
            && app.sent.digest() == app.received.digest()
            && app.failed.is_none();
        if !ok {
            failures.push(format!(
                "udp {label}: {} of {} bytes arrived",
                app.received.bytes, app.spec.bytes
            ));
        }
        flows.push(FlowReport {
            name: app.spec.name.clone(),
            protocol: "udp",
            from: name(app.sender),
            to: name(app.receiver),
            bytes_expected: app.spec.bytes,
            bytes_sent: app.sent.bytes,
            bytes_received: app.received.bytes,
            sha256_sent: app.sent.digest(),
            sha256_received: app.received.digest(),
            ok,
            finished_ms: app.finished_at.map(at_ms),
            error: app.failed.clone(),
        });
        let (start, bytes) = (app.spec.start, app.spec.bytes);
        receipts.push((
            label,
            &app.received,
            Box::new(move |t: Instant| if t - Instant::ZERO >= start { bytes } else { 0 }),
        ));
    }
    let moves: Vec<MoveReport> = sim
        .moves
        .iter()
        .map(|m| {
            let worst = receipts
                .iter()
                .filter_map(|(label, r, demand)| gap_at(r, demand.as_ref(), m.at).map(|g| (g, label.clone())))
                .max_by_key(|(g, _)| *g);
            MoveReport {
                t_ms: at_ms(m.at),
                host: name(m.host),
                from: m.from.map(|a| a.to_string()),
                to: m.to.map(|a| a.to_string()),
                gap_ms: worst.as_ref().map(|(g, _)| ms(*g)),
                gap_flow: worst.map(|(_, l)| l),
                confirmed_after_ms: m.confirmed.map(|(t, _, _)| ms(t - m.at)),
                update_retransmits: m.confirmed.map(|(_, _, r)| r),
            }
        })
        .collect();
    let mut control_messages_sent = 0;
    let mut control_retransmits = 0;
    let mut conflicts = 0;
    let hosts: Vec<HostReport> = sim
        .hosts
        .iter()
        .zip(&sc.hosts)
        .map(|(h, spec)| {
            let counters: BTreeMap<&'static str, u64> = h
                .agent
                .as_ref()
                .map(|a| a.endpoint.counters().iter().collect())
                .unwrap_or_default();
            control_messages_sent += counters.get("messages_sent").copied().unwrap_or(0);
            control_retransmits += counters.get("retransmits").copied().unwrap_or(0);
            conflicts += counters.get("conflicts_resolved").copied().unwrap_or(0);
            HostReport {
                name: spec.name.clone(),
                roam: spec.roam,
                address: h.addr.map(|a| a.to_string()),
                translation_entries: h.dataplane.table().flow_count(),
                counters,
                dataplane: h.dataplane.counters.clone(),
                received_packets: h.received_packets,
                received_bytes: h.received_bytes,
                peers: h
                    .agent
                    .as_ref()
                    .map(|a| {
                        a.endpoint
                            .peers()
                            .map(|p| PeerReport {
                                name: sc
                                    .hosts
                                    .iter()
                                    .find(|o| crate::sim::node_id_for(&o.name) == p.id)
                                    .map(|o| o.name.clone())
                                    .unwrap_or_else(|| p.id.to_string()),
                                control: p.control.to_string(),
                                addresses: p.addrs.iter().map(|a| a.to_string()).collect(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    let e = &sc.expect;
    if let Some(max) = e.max_gap {
        for m in &moves {
            if let Some(g) = m.gap_ms
                && g > ms(max)
            {
                failures.push(format!(
                    "move of {} at {} ms: gap {g} ms exceeds {} ms",
                    m.host,
                    m.t_ms,
                    ms(max)
                ));
            }
        }
    }
    for ((h, metric), bound) in &e.at_least {
        let v = hosts[*h].metric(metric).unwrap_or(0);
        if v < *bound {
            failures.push(format!(
                "{}.{metric} is {v}, expected at least {bound}",
                hosts[*h].name
            ));
        }
    }
    for ((h, metric), bound) in &e.at_most {
        let v = hosts[*h].metric(metric).unwrap_or(0);
        if v > *bound {
            failures.push(format!(
                "{}.{metric} is {v}, expected at most {bound}",
                hosts[*h].name
            ));
        }
    }
    if let Some(n) = e.conflicts_resolved
        && conflicts != n
    {
        failures.push(format!("{conflicts} conflicts resolved, expected {n}"));
    }
    if let Some(n) = e.min_control_retransmits
        && control_retransmits < n
    {
        failures.push(format!(
            "{control_retransmits} control retransmissions, expected at least {n}"
        ));
    }
    // Every move of a roam host with flows to move must be confirmed by its peer,
    // unless a later move superseded it.
    for (i, m) in sim.moves.iter().enumerate() {
        let superseded = sim.moves[i + 1..].iter().any(|o| o.host == m.host);
        let had_flows = !sim.hosts[m.host].tcp_flows.is_empty()
            || !sim.hosts[m.host].udp_flows.is_empty()
            || moves[i].gap_ms.is_some();
        if sc.hosts[m.host].roam && m.confirmed.is_none() && !superseded && had_flows {
            failures.push(format!(
                "move of {} at {} ms was never confirmed",
                name(m.host),
                at_ms(m.at)
            ));
        }
    }
    Report {
        scenario: sc.name.clone(),
        description: sc.description.clone(),
        family: sim.opts.family,
        seed: sim.opts.seed,
        ok: failures.is_empty(),
        failures,
        virtual_ms: at_ms(sim.now),
        wall_ms: ms(wall),
        engine_steps: sim.steps,
        timeline: sim
            .timeline
            .iter()
            .map(|(t, h, w)| TimelineEntry {
                t_ms: at_ms(*t),
                host: h.clone(),
                what: w.clone(),
            })
            .collect(),
        flows,
        moves,
        control_messages_sent,
        control_retransmits,
        hosts,
        network: sim.net.clone(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "roam simulation: {} ({}, seed {})",
            self.scenario, self.family, self.seed
        )?;
        if !self.description.is_empty() {
            writeln!(f, "  {}", self.description.replace('\n', "\n  "))?;
        }
        writeln!(f)?;
        writeln!(f, "what happened (virtual time):")?;
        for e in &self.timeline {
            writeln!(f, "  {:>9.3} ms  {:<3} {}", e.t_ms, e.host, e.what)?;
        }
        writeln!(f)?;
        writeln!(f, "flows:")?;
        for fl in &self.flows {
            writeln!(
                f,
                "  {} {} {} -> {}: {} of {} bytes  {}",
                fl.protocol,
                fl.name,
                fl.from,
                fl.to,
                fl.bytes_received,
                fl.bytes_expected,
                if fl.ok { "OK" } else { "FAILED" }
            )?;
            writeln!(f, "      sent     sha256 {}", fl.sha256_sent)?;
            writeln!(f, "      received sha256 {}", fl.sha256_received)?;
        }
        if !self.moves.is_empty() {
            writeln!(f)?;
            writeln!(f, "moves:")?;
            for m in &self.moves {
                write!(
                    f,
                    "  {:>9.3} ms  {} {} -> {}",
                    m.t_ms,
                    m.host,
                    m.from.as_deref().unwrap_or("?"),
                    m.to.as_deref().unwrap_or("?")
                )?;
                if let Some(c) = m.confirmed_after_ms {
                    write!(f, ", peer confirmed after {c:.1} ms")?;
                    if let Some(r) = m.update_retransmits.filter(|r| *r > 0) {
                        write!(f, " ({r} retransmissions)")?;
                    }
                }
                match (&m.gap_ms, &m.gap_flow) {
                    (Some(g), Some(fl)) => writeln!(f, "; handover gap {g:.1} ms ({fl})")?,
                    _ => writeln!(f, "; no flow was active")?,
                }
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "control messages: {} sent, {} retransmitted",
            self.control_messages_sent, self.control_retransmits
        )?;
        for h in &self.hosts {
            let drops: Vec<String> = h
                .counters
                .iter()
                .filter(|(k, v)| {
                    **v > 0
                        && (k.starts_with("drop_")
                            || k.contains("failed")
                            || k.contains("stranded")
                            || k.contains("refus")
                            || ["cookies_sent", "sessions_rekeyed", "paths_validated"].contains(k))
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                f,
                "  {}: {} translation entries{}{}",
                h.name,
                h.translation_entries,
                if h.roam {
                    String::new()
                } else {
                    format!(
                        " (does not run roam; received {} packets, {} bytes)",
                        h.received_packets, h.received_bytes
                    )
                },
                if drops.is_empty() {
                    String::new()
                } else {
                    format!(", {}", drops.join(" "))
                }
            )?;
        }
        let n = &self.network;
        writeln!(
            f,
            "network: {} packets, {} bytes; lost {}, queue drops {}, ingress-filtered {}, on a left link {}",
            n.transmitted, n.bytes, n.lost, n.queue_drops, n.ingress_filtered, n.link_gone
        )?;
        writeln!(
            f,
            "simulated {:.3} s in {:.3} s of wall time ({} engine steps)",
            self.virtual_ms / 1e3,
            self.wall_ms / 1e3,
            self.engine_steps
        )?;
        writeln!(f)?;
        if self.ok {
            writeln!(f, "result: OK, every byte arrived")
        } else {
            writeln!(f, "result: FAILED")?;
            for x in &self.failures {
                writeln!(f, "  - {x}")?;
            }
            Ok(())
        }
    }
}
