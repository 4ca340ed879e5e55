//! What `roam status`, `roam peers` and `roam flows` print for a person, in the manner
//! of `wg show` and `tailscale status`: this host first, then its peers and moved flows
//! in aligned columns, then every drop and error that is not zero, grouped by who
//! counted it. `--json` prints roamd's answer instead (ctl.rs).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use roamd::ctl::{FlowList, PeerList};
use roamd::status::{FlowPeerStatus, FlowStatus, Latency, NamedCounters, PeerStatus, Status};

/// Recent events `roam status` shows.
const RECENT_EVENTS: usize = 5;

/// `roam status`.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    if s.up {
        let _ = writeln!(
            out,
            "roamd is up (pid {}, running for {})",
            s.pid,
            duration(s.uptime_s)
        );
    } else {
        let _ = writeln!(
            out,
            "roamd is DOWN (pid {}, running for {}): nothing is translated and moves are not handled; `roam up` resumes",
            s.pid,
            duration(s.uptime_s)
        );
    }
    let migrated: Vec<&FlowStatus> = s.flows.iter().filter(|f| f.migrated()).collect();
    let mut host = vec![
        ("node", s.node.clone()),
        ("public key", s.public_key.clone()),
        ("control port", format!("{}/udp", s.control_port)),
        ("data plane", s.data_plane.clone()),
        ("addresses", addresses(&s.addresses)),
        (
            "retained",
            if s.retained.is_empty() {
                "none".to_owned()
            } else {
                format!(
                    "{} (kept on lo for the sockets still using them)",
                    addresses(&s.retained)
                )
            },
        ),
        ("flows", format!("{}, {} migrated", s.flows.len(), migrated.len())),
        ("activity", activity(&s.counters)),
    ];
    if let Some(p) = &s.control_socket {
        host.push(("control socket", p.display().to_string()));
    }
    // What a handover waits for on this host (recent ones).
    for (label, l) in [
        ("reaction time", &s.timings.reaction),
        ("plane changes", &s.timings.plane_batch),
        ("state writes", &s.timings.state_save),
    ] {
        if l.count > 0 {
            host.push((label, latency(l)));
        }
    }
    out.push_str(&fields(&host, "  "));

    let names = s.peer_names();
    out.push('\n');
    if s.peers.is_empty() {
        out.push_str("peers: none yet (a peer appears once a flow to it registers)\n");
    } else {
        let _ = writeln!(out, "peers ({}):", s.peers.len());
        out.push_str(&peer_table(&s.peers, s.uptime_s));
    }

    if !migrated.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "migrated flows ({}):", migrated.len());
        let mut t = vec![row(&["PEER", "PROTO", "ORIGINAL", "CURRENT", "MOVES"])];
        for f in &migrated {
            t.push(vec![
                flow_peer(f, &names),
                f.original.protocol.to_string(),
                ends(f, false),
                ends(f, true),
                f.moves.to_string(),
            ]);
        }
        out.push_str(&table(&t, "  "));
    }

    out.push('\n');
    let drops = drops(s);
    if drops.is_empty() {
        out.push_str("drops and errors: none\n");
    } else {
        out.push_str("drops and errors:\n");
        let mut t = Vec::new();
        for (group, entries) in &drops {
            for (i, (name, value)) in entries.iter().enumerate() {
                let g = if i == 0 { group.clone() } else { String::new() };
                t.push(vec![g, name.clone(), value.clone()]);
            }
        }
        out.push_str(&table(&t, "  "));
    }

    if !s.events.is_empty() {
        out.push('\n');
        let shown = s.events.len().min(RECENT_EVENTS);
        let _ = writeln!(out, "recent events ({shown} of {}):", s.events.len());
        let t: Vec<Vec<String>> = s.events[s.events.len() - shown..]
            .iter()
            .map(|e| vec![ago(s.uptime_s - e.at_s), e.what.clone()])
            .collect();
        out.push_str(&table(&t, "  "));
    }
    out
}

/// `roam peers`: one block per peer, as `wg show` does.
pub fn peers(p: &PeerList) -> String {
    if p.peers.is_empty() {
        return "no peers yet (a peer appears once a flow to it registers)\n".to_owned();
    }
    let mut out = String::new();
    for (i, peer) in p.peers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "peer: {}", peer.name.as_deref().unwrap_or(&peer.node));
        out.push_str(&fields(
            &[
                ("node", peer.node.clone()),
                ("public key", peer.public_key.clone()),
                ("control", peer.control.to_string()),
                ("addresses", addresses(&peer.addresses)),
                ("rtt", peer.rtt_ms.map_or("-".to_owned(), millis)),
                ("flows", peer.flows.to_string()),
                ("last move", last_move(peer, p.uptime_s)),
            ],
            "  ",
        ));
    }
    out
}

/// `roam flows`: every flow, migrated or not.
pub fn flows(f: &FlowList) -> String {
    if f.flows.is_empty() {
        return "no flows (roamd lists the host's TCP and connected UDP sockets)\n".to_owned();
    }
    let migrated = f.flows.iter().filter(|f| f.migrated()).count();
    let mut out = format!("flows ({}, {migrated} migrated):\n", f.flows.len());
    let mut t = vec![row(&["PROTO", "ORIGINAL", "CURRENT", "PEER", "STATE", "AGE"])];
    for flow in &f.flows {
        t.push(vec![
            flow.original.protocol.to_string(),
            ends(flow, false),
            if flow.migrated() {
                ends(flow, true)
            } else {
                "(same)".to_owned()
            },
            flow_peer(flow, &f.peer_names),
            flow_state(flow, f.uptime_s),
            duration(f.uptime_s - nanos_to_secs(flow.opened_at)),
        ]);
    }
    out.push_str(&table(&t, "  "));
    out
}

fn peer_table(peers: &[PeerStatus], uptime_s: f64) -> String {
    let mut t = vec![row(&[
        "NAME",
        "NODE",
        "CONTROL",
        "ADDRESSES",
        "RTT",
        "FLOWS",
        "LAST MOVE",
    ])];
    for p in peers {
        t.push(vec![
            p.name.clone().unwrap_or_else(|| "-".to_owned()),
            p.node.clone(),
            p.control.to_string(),
            addresses(&p.addresses),
            p.rtt_ms.map_or("-".to_owned(), millis),
            p.flows.to_string(),
            last_move(p, uptime_s),
        ]);
    }
    table(&t, "  ")
}

fn last_move(p: &PeerStatus, uptime_s: f64) -> String {
    match (p.last_move_at_s, p.last_move_ms) {
        (Some(at), Some(took)) => format!("{} (took {})", ago(uptime_s - at), millis(took)),
        (Some(at), None) => ago(uptime_s - at),
        _ => "never".to_owned(),
    }
}

/// A flow's two ends, original or current (the protocol has its own column).
fn ends(f: &FlowStatus, current: bool) -> String {
    let t = if current { &f.current } else { &f.original };
    format!("{} <-> {}", t.local, t.remote)
}

fn flow_peer(f: &FlowStatus, names: &BTreeMap<String, String>) -> String {
    match &f.peer {
        FlowPeerStatus::Peer(node) => names.get(node).cloned().unwrap_or_else(|| node.clone()),
        FlowPeerStatus::Probing => "(asking)".to_owned(),
        FlowPeerStatus::NotRoam => "(no roam)".to_owned(),
        FlowPeerStatus::Local => "(this host)".to_owned(),
    }
}

fn flow_state(f: &FlowStatus, uptime_s: f64) -> String {
    let mut parts = Vec::new();
    if let Some(since) = f.moving_since {
        parts.push(format!(
            "moving for {}",
            duration(uptime_s - nanos_to_secs(since))
        ));
    }
    if f.orphaned {
        parts.push("no local address".to_owned());
    }
    if let Some((addr, _)) = f.validating {
        parts.push(format!("checking {addr}"));
    }
    if f.remapped {
        parts.push("remapped".to_owned());
    }
    if f.moves > 0 {
        parts.push(format!("moved {}x", f.moves));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Non-zero counters of what went right, in a line.
fn activity(c: &NamedCounters) -> String {
    let parts: Vec<String> = [
        ("flows_moved", "flow(s) moved"),
        ("migrations_applied", "peer move(s) applied"),
        ("handshakes_completed", "handshake(s)"),
        ("messages_sent", "message(s) sent"),
        ("messages_accepted", "accepted"),
        ("retransmits", "retransmitted"),
    ]
    .iter()
    .filter_map(|(name, what)| c.get(name).filter(|n| *n > 0).map(|n| format!("{n} {what}")))
    .collect();
    if parts.is_empty() {
        "nothing yet".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Whether a counter counts something dropped, refused or failed.
fn is_drop(name: &str) -> bool {
    const WORDS: [&str; 11] = [
        "drop",
        "error",
        "fail",
        "refus",
        "overflow",
        "malformed",
        "oversize",
        "stranded",
        "stale",
        "unknown",
        "unanswered",
    ];
    WORDS.iter().any(|w| name.contains(w))
}

/// Every non-zero drop or error, by who counted it: the protocol (roam-core), roamd
/// itself, the data plane.
fn drops(s: &Status) -> Vec<(String, Vec<(String, String)>)> {
    let mut groups = Vec::new();
    let protocol: Vec<(String, String)> = s
        .counters
        .iter()
        .filter(|(n, v)| *v > 0 && is_drop(n))
        .map(|(n, v)| (n.to_owned(), v.to_string()))
        .collect();
    groups.push(("protocol".to_owned(), protocol));
    let daemon = serde_json::to_value(&s.daemon).unwrap_or_default();
    let mut roamd = Vec::new();
    flatten(&daemon, "", &mut roamd);
    groups.push(("roamd".to_owned(), roamd));
    let mut plane = Vec::new();
    if let Some(c) = &s.data_plane_counters {
        flatten(&c.to_value(), "", &mut plane);
    }
    groups.push((format!("data plane ({})", s.data_plane), plane));
    groups.retain(|(_, entries)| !entries.is_empty());
    groups
}

/// Non-zero drop counters of a JSON tree, named by their path (`plane.hold_overflow`);
/// a `{packets, bytes}` pair is one entry.
fn flatten(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    let Some(obj) = v.as_object() else {
        if let Some(n) = v.as_u64()
            && n > 0
            && is_drop(path)
        {
            out.push((path.to_owned(), n.to_string()));
        }
        return;
    };
    if let (Some(p), Some(b), 2) = (
        obj.get("packets").and_then(serde_json::Value::as_u64),
        obj.get("bytes").and_then(serde_json::Value::as_u64),
        obj.len(),
    ) {
        if p > 0 && is_drop(path) {
            out.push((path.to_owned(), format!("{p} packets, {b} bytes")));
        }
        return;
    }
    for (k, child) in obj {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        flatten(child, &p, out);
    }
}

fn addresses(a: &[std::net::IpAddr]) -> String {
    if a.is_empty() {
        return "none".to_owned();
    }
    a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn nanos_to_secs(n: u64) -> f64 {
    n as f64 / 1e9
}

/// A round-trip or exchange time.
fn millis(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// A duration's recent distribution.
fn latency(l: &Latency) -> String {
    format!(
        "p50 {}, p90 {}, max {} (of the last {}; {} in all)",
        millis(l.p50_ms),
        millis(l.p90_ms),
        millis(l.max_ms),
        l.count.min(roamd::status::Samples::WINDOW as u64),
        l.count
    )
}

/// A span of time, as precise as a person needs it.
fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        return format!("{:.0} ms", secs * 1000.0);
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs as u64;
    match s {
        ..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn ago(secs: f64) -> String {
    format!("{} ago", duration(secs))
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// `key:  value` lines, values aligned.
fn fields(rows: &[(&str, String)], indent: &str) -> String {
    let width = rows.iter().map(|(k, _)| k.chars().count() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{indent}{:<width$}  {v}", format!("{k}:"));
    }
    out
}

/// Rows in columns two spaces apart, each as wide as its widest cell.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = indent.to_owned();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_core::translate::{Protocol, Tuple};
    use roamd::status::{DaemonCounters, EventRecord, PlaneCounters};

    fn tuple(local: &str, remote: &str) -> Tuple {
        Tuple {
            protocol: Protocol::Tcp,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    fn flow(original: Tuple, current: Tuple, peer: FlowPeerStatus, moves: u32) -> FlowStatus {
        FlowStatus {
            original,
            current,
            wire_key: original,
            peer,
            moving_since: None,
            orphaned: false,
            remapped: false,
            validating: None,
            opened_at: 10_000_000_000,
            moves,
        }
    }

    /// A host that moved one flow to laptop, with some drops.
    fn fixture() -> Status {
        let moved = flow(
            tuple("10.0.0.2:40112", "10.0.2.2:5201"),
            tuple("10.0.1.2:40112", "10.0.2.2:5201"),
            FlowPeerStatus::Peer("8d1e0f2a3b4c".into()),
            1,
        );
        let plain = flow(
            tuple("10.0.1.2:40200", "10.0.2.2:22"),
            tuple("10.0.1.2:40200", "10.0.2.2:22"),
            FlowPeerStatus::Peer("8d1e0f2a3b4c".into()),
            0,
        );
        let mut counters = NamedCounters::default();
        for (n, v) in [
            ("messages_sent", 40),
            ("messages_accepted", 38),
            ("drop_malformed", 3),
            ("drop_replay", 0),
            ("flows_moved", 1),
            ("handshake_duplicates", 2),
        ] {
            counters.0.push((n.into(), v));
        }
        Status {
            node: "00000000002a".into(),
            public_key: "5lpx/7tCxNUHyxNs0dDxr6j+xoOPqay9XGZTpRb1PAE=".into(),
            pid: 4242,
            uptime_s: 3725.0,
            up: true,
            control_socket: Some("/run/roam/roamd.sock".into()),
            control_port: 4791,
            data_plane: "nftables".into(),
            data_plane_counters: Some(PlaneCounters::Read(serde_json::json!({
                "egress_translated": {"packets": 900, "bytes": 90000},
                "hold_dropped": {"packets": 12, "bytes": 720},
                "budget_dropped": {"packets": 0, "bytes": 0},
                "transactions": 4,
                "failed_transactions": 0,
                "nudges": 1,
                "nudge_errors": 0,
            }))),
            addresses: vec!["10.0.1.2".parse().unwrap(), "2001:db8:1::2".parse().unwrap()],
            retained: vec!["10.0.0.2".parse().unwrap()],
            peers: vec![
                PeerStatus {
                    node: "8d1e0f2a3b4c".into(),
                    name: Some("laptop".into()),
                    public_key: "Ab3/peerkeypeerkeypeerkeypeerkeypeerkey12=".into(),
                    control: "10.0.2.2:4791".parse().unwrap(),
                    addresses: vec!["10.0.2.2".parse().unwrap()],
                    rtt_ms: Some(20.43),
                    flows: 2,
                    last_move_at_s: Some(3725.0 - 192.0),
                    last_move_ms: Some(48.21),
                },
                PeerStatus {
                    node: "0123456789ab".into(),
                    name: None,
                    public_key: "Zz9/learnedlearnedlearnedlearnedlearned12=".into(),
                    control: "[2001:db8:2::9]:4791".parse().unwrap(),
                    addresses: vec!["2001:db8:2::9".parse().unwrap()],
                    rtt_ms: None,
                    flows: 0,
                    last_move_at_s: None,
                    last_move_ms: None,
                },
            ],
            flows: vec![moved, plain],
            counters,
            daemon: DaemonCounters {
                ctl_refused: 1,
                flow_scans: 100,
                ..DaemonCounters::default()
            },
            timings: roamd::status::Timings {
                reaction: Latency {
                    count: 1000,
                    p50_ms: 2.5,
                    p90_ms: 8.0,
                    max_ms: 31.0,
                    last_ms: 1.0,
                },
                ..Default::default()
            },
            events: (0..7)
                .map(|i| EventRecord {
                    at_s: 3000.0 + f64::from(i),
                    what: format!("event {i}"),
                })
                .collect(),
        }
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    }

    #[test]
    fn status_shows_the_host_its_peers_and_moved_flows() {
        let s = fixture();
        let text = status(&s);
        println!("{text}");
        assert!(
            text.starts_with("roamd is up (pid 4242, running for 1h02m)\n"),
            "{text}"
        );
        for (key, value) in [
            ("node:", "00000000002a"),
            ("public key:", "5lpx/7tCxNUHyxNs0dDxr6j+xoOPqay9XGZTpRb1PAE="),
            ("control port:", "4791/udp"),
            ("data plane:", "nftables"),
            ("addresses:", "10.0.1.2, 2001:db8:1::2"),
            ("retained:", "10.0.0.2 (kept on lo"),
            ("flows:", "2, 1 migrated"),
            ("activity:", "1 flow(s) moved, 40 message(s) sent, 38 accepted"),
            ("control socket:", "/run/roam/roamd.sock"),
            (
                "reaction time:",
                "p50 2.5 ms, p90 8.0 ms, max 31.0 ms (of the last 256; 1000 in all)",
            ),
        ] {
            assert!(line_with(&text, key).contains(value), "{key} {value}:\n{text}");
        }
        // The peer row: name, node, control, RTT, flows, last move and its duration.
        let laptop = line_with(&text, "laptop  8d1e0f2a3b4c");
        for want in ["10.0.2.2:4791", "20.4 ms", "3m12s ago (took 48.2 ms)"] {
            assert!(laptop.contains(want), "{want}: {laptop}");
        }
        let learned = line_with(&text, "0123456789ab");
        assert!(
            learned.trim_start().starts_with('-') && learned.ends_with("never"),
            "{learned}"
        );
        // Only the migrated flow, original then current.
        assert!(text.contains("migrated flows (1):"), "{text}");
        let moved = line_with(&text, "10.0.0.2:40112 <-> 10.0.2.2:5201");
        assert!(moved.contains("10.0.1.2:40112 <-> 10.0.2.2:5201"), "{moved}");
        assert!(moved.trim_start().starts_with("laptop"), "{moved}");
        assert!(
            !text.contains("40200"),
            "an unmoved flow is not in the status:\n{text}"
        );
        // Only the last five events.
        assert!(text.contains("recent events (5 of 7):"), "{text}");
        // Steps never taken are not shown.
        assert!(!text.contains("state writes"), "{text}");
        assert!(!text.contains("event 1\n") && text.contains("event 6"), "{text}");
    }

    #[test]
    fn every_non_zero_drop_is_listed_by_who_counted_it_and_nothing_else() {
        let text = status(&fixture());
        let drops = &text[text.find("drops and errors:").expect("a drops section")..];
        assert!(line_with(drops, "drop_malformed").contains("protocol"), "{drops}");
        assert!(line_with(drops, "ctl_refused").contains("roamd"), "{drops}");
        let hold = line_with(drops, "hold_dropped");
        assert!(
            hold.contains("data plane (nftables)") && hold.contains("12 packets, 720 bytes"),
            "{hold}"
        );
        for absent in [
            "drop_replay",
            "budget_dropped",
            "failed_transactions",
            "nudge_errors",
            "handshake_duplicates",
            "flow_scans",
            "egress_translated",
            "messages_sent  ",
        ] {
            assert!(!drops.contains(absent), "{absent} listed:\n{drops}");
        }
        let mut clean = fixture();
        clean.counters = NamedCounters::default();
        clean.daemon = DaemonCounters::default();
        clean.data_plane_counters = None;
        assert!(status(&clean).contains("drops and errors: none\n"));
    }

    #[test]
    fn nested_data_plane_counters_are_named_by_their_path() {
        let mut s = fixture();
        s.data_plane = "tun".into();
        s.data_plane_counters = Some(PlaneCounters::Read(serde_json::json!({
            "plane": {"held": 5, "hold_overflow": 2, "malformed": {"truncated": 4}},
            "from_wire": 10,
            "oversize": 1,
        })));
        let text = status(&s);
        for want in ["plane.hold_overflow", "plane.malformed.truncated", "oversize"] {
            assert!(
                line_with(&text, want).contains(char::is_numeric),
                "{want}:\n{text}"
            );
        }
        assert!(
            !text.contains("plane.held") && !text.contains("from_wire"),
            "{text}"
        );
    }

    #[test]
    fn columns_line_up() {
        let text = status(&fixture());
        let header = line_with(&text, "NAME");
        let rows = [line_with(&text, "laptop  8d1e"), line_with(&text, "0123456789ab")];
        for col in ["NODE", "CONTROL", "ADDRESSES", "RTT", "FLOWS", "LAST MOVE"] {
            let at = header.find(col).unwrap();
            for r in rows {
                let cell = &r[at..];
                assert!(
                    at == 0 || r.as_bytes()[at - 1] == b' ' && !cell.starts_with(' '),
                    "{col} is not aligned:\n{header}\n{r}"
                );
            }
        }
        // The host's values start in one column.
        let starts: Vec<usize> = text
            .lines()
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.find(':').unwrap() + 1 + l[l.find(':').unwrap() + 1..].find(|c| c != ' ').unwrap())
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{starts:?}\n{text}");
    }

    #[test]
    fn a_host_that_is_down_says_so_and_how_to_resume() {
        let mut s = fixture();
        s.up = false;
        s.peers.clear();
        s.flows.clear();
        let text = status(&s);
        assert!(text.starts_with("roamd is DOWN"), "{text}");
        assert!(
            text.lines().next().unwrap().contains("`roam up` resumes"),
            "{text}"
        );
        assert!(text.contains("peers: none yet"), "{text}");
        assert!(!text.contains("migrated flows"), "{text}");
    }

    #[test]
    fn peers_are_shown_one_block_each() {
        let s = fixture();
        let text = peers(&PeerList {
            uptime_s: s.uptime_s,
            peers: s.peers.clone(),
        });
        assert!(text.starts_with("peer: laptop\n"), "{text}");
        assert!(line_with(&text, "rtt:").ends_with("20.4 ms"), "{text}");
        assert!(
            line_with(&text, "last move:").ends_with("3m12s ago (took 48.2 ms)"),
            "{text}"
        );
        assert!(
            text.contains("\npeer: 0123456789ab\n"),
            "unnamed peers go by node:\n{text}"
        );
        assert_eq!(
            peers(&PeerList {
                uptime_s: 1.0,
                peers: vec![]
            }),
            "no peers yet (a peer appears once a flow to it registers)\n"
        );
    }

    #[test]
    fn flows_show_every_flow_with_its_state() {
        let s = fixture();
        let mut list = FlowList {
            uptime_s: s.uptime_s,
            peer_names: s.peer_names(),
            flows: s.flows.clone(),
        };
        list.flows[1].moving_since = Some(3_724_500_000_000);
        list.flows.push(flow(
            tuple("127.0.0.1:5000", "127.0.0.1:6000"),
            tuple("127.0.0.1:5000", "127.0.0.1:6000"),
            FlowPeerStatus::Local,
            0,
        ));
        let text = flows(&list);
        println!("{text}");
        assert!(text.starts_with("flows (3, 1 migrated):\n"), "{text}");
        let moved = line_with(&text, "10.0.0.2:40112");
        assert!(
            moved.contains("10.0.1.2:40112 <-> 10.0.2.2:5201") && moved.contains("laptop"),
            "{moved}"
        );
        assert!(moved.contains("moved 1x") && moved.ends_with("1h01m"), "{moved}");
        let moving = line_with(&text, "40200");
        assert!(
            moving.contains("(same)") && moving.contains("moving for 500 ms"),
            "{moving}"
        );
        assert!(
            line_with(&text, "127.0.0.1:5000").contains("(this host)"),
            "{text}"
        );
        assert!(
            flows(&FlowList {
                uptime_s: 0.0,
                peer_names: BTreeMap::new(),
                flows: vec![]
            })
            .starts_with("no flows")
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(192.0), "3m12s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(3.0 * 86_400.0 + 7200.0), "3d02h");
        assert_eq!(duration(-1.0), "0 ms", "a clock step never shows a negative time");
        assert_eq!(millis(48.21), "48.2 ms");
        assert_eq!(millis(1500.0), "1.50 s");
    }
}
