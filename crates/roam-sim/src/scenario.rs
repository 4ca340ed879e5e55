//! Scenarios are data: a TOML file names routers, subnets, links, hosts, traffic,
//! faults and events. A file with an error is refused with its line and the reason.
//!
//! Addressing is derived, so one file runs over IPv4 and IPv6: subnet number `n`
//! (1-based, in file order) is `10.0.n.0/24` and `fd00:0:0:n::/64`, its router is
//! host 1 in it, and a host with `id = k` is `10.0.n.k` / `fd00:0:0:n::k`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Address family of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// Address of host `id` on subnet number `subnet` (1-based).
    pub fn addr(self, subnet: usize, id: u8) -> IpAddr {
        match self {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(10, 0, subnet as u8, id)),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, subnet as u16, 0, 0, 0, u16::from(id))),
        }
    }

    pub fn prefix_len(self) -> u8 {
        match self {
            Family::Ipv4 => 24,
            Family::Ipv6 => 64,
        }
    }

    /// The subnet number an address belongs to, if it is one of the lab's.
    pub fn subnet_of(self, a: IpAddr) -> Option<usize> {
        match (self, a) {
            (Family::Ipv4, IpAddr::V4(v4)) => {
                let o = v4.octets();
                (o[0] == 10 && o[1] == 0).then_some(usize::from(o[2]))
            }
            (Family::Ipv6, IpAddr::V6(v6)) => {
                let s = v6.segments();
                (s[0] == 0xfd00 && s[1] == 0 && s[2] == 0).then_some(usize::from(s[3]))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// A scenario that does not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{}: {message}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
pub struct ScenarioError {
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

/// One direction-symmetric link's properties.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LinkParams {
    pub latency: Duration,
    /// Bits per second.
    pub rate_bps: u64,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delayed past later ones (by up to one latency).
    pub reorder: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Longest queueing delay before tail drop.
    pub queue: Duration,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Subnet {
    pub name: String,
    /// Index into `Scenario::routers`.
    pub router: usize,
    pub link: LinkParams,
    /// Routers drop packets from this subnet whose source is not in it (BCP 38).
    pub ingress_filter: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CoreLink {
    pub a: usize,
    pub b: usize,
    pub link: LinkParams,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Host {
    pub name: String,
    /// Subnet it starts on (`None`: attached later by an event).
    pub subnet: Option<usize>,
    pub id: u8,
    /// Runs roam.
    pub roam: bool,
    /// Runs no stack at all: what reaches it is counted and dropped (a victim that
    /// never answers).
    pub silent: bool,
    pub move_message: roam_core::MoveMessage,
    /// Overrides the endpoint's session lifetime (to see rekeys in a short run).
    pub rekey_after: Option<Duration>,
    /// The hosts whose keys it trusts (`None`: every roam host's).
    pub trusts: Option<Vec<String>>,
}

/// Who sends in a phase of a TCP session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Server,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
    pub at: Duration,
    pub from: Side,
    pub bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TcpFlow {
    pub name: String,
    pub client: usize,
    pub server: usize,
    pub port: u16,
    pub client_port: u16,
    pub start: Duration,
    pub phases: Vec<Phase>,
    /// Socket buffer size at both ends (bytes): bounds the window.
    pub buffer: usize,
}

impl TcpFlow {
    /// Bytes `from` has been asked to send by `elapsed` since the run began.
    pub fn demand(&self, from: Side, elapsed: Duration) -> u64 {
        self.phases
            .iter()
            .filter(|p| p.from == from && p.at <= elapsed)
            .map(|p| p.bytes)
            .sum()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct UdpFlow {
    pub name: String,
    pub sender: usize,
    pub receiver: usize,
    pub port: u16,
    pub sender_port: u16,
    pub start: Duration,
    pub bytes: u64,
}

/// When an event fires.
#[derive(Clone, Debug, serde::Serialize)]
pub enum Trigger {
    At(Duration),
    /// When the named flow's receivers have received this many bytes in total.
    Received {
        flow: String,
        bytes: u64,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub enum Action {
    /// The host leaves its subnet (its address is removed) and, `dhcp_delay` later,
    /// gets an address on `to` with a default route via its router.
    Move {
        host: usize,
        to: usize,
        id: Option<u8>,
        dhcp_delay: Duration,
    },
    Attach {
        host: usize,
        subnet: usize,
        id: Option<u8>,
    },
    Detach {
        host: usize,
    },
    /// The host's roam daemon restarts: it forgets its sessions, peers and flows; the
    /// data plane keeps its entries, which the new endpoint takes back.
    Restart {
        host: usize,
    },
    Attack(Attack),
}

/// What an attacker (or a malicious peer) does. The attacker sends from its own
/// access link, bypassing its stack.
#[derive(Clone, Debug, serde::Serialize)]
pub enum Attack {
    /// Off path: a Connection Update in `of`'s name, sealed under a key it guessed
    /// (random index and key), "moving" `of`'s flows with `target` to the attacker.
    Forge { by: usize, target: usize, of: usize },
    /// On path: the last sealed message `of` sent `target`, one bit changed.
    Tamper { by: usize, target: usize, of: usize },
    /// On path: the last message of type `message` that `of` sent `target`, sent again
    /// as it was, from the attacker's address.
    Replay {
        by: usize,
        target: usize,
        of: usize,
        /// The message type code.
        message: u8,
    },
    /// A malicious peer (`by`, a roam host `target` trusts) tells `target` that its
    /// flows moved to `victim`'s address.
    Redirect { by: usize, target: usize, victim: usize },
    /// `count` Handshake Inits to `target` spread over `over`, from addresses spoofed
    /// across the attacker's subnet.
    Flood {
        by: usize,
        target: usize,
        count: u32,
        over: Duration,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub trigger: Trigger,
    pub action: Action,
}

/// What loss applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// roam's control messages only.
    Control,
    /// Everything but control messages.
    Data,
    All,
}

/// Extra loss on what hosts send, for a time window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Loss {
    /// Hosts whose transmissions it applies to (empty: all).
    pub hosts: Vec<usize>,
    pub traffic: Traffic,
    pub probability: f64,
    pub from: Duration,
    pub until: Duration,
}

/// What a scenario test checks beyond "every flow completes with matching digests".
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Expect {
    /// Upper bound on the handover gap of every move, in virtual time. A gap above a
    /// TCP retransmission timeout means roam failed to kick the sender.
    pub max_gap: Option<Duration>,
    pub conflicts_resolved: Option<u64>,
    pub min_control_retransmits: Option<u64>,
    /// Bounds on per-host metrics (an endpoint or data plane counter, or
    /// `received_bytes` / `received_packets`): (host, metric) -> bound.
    pub at_least: BTreeMap<(usize, String), u64>,
    pub at_most: BTreeMap<(usize, String), u64>,
}

/// The per-host metrics an expectation may name: the endpoint's counters, the data
/// plane's, and what reached the host.
pub fn metric_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = roam_core::Counters::default()
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(roam_core::plane::PlaneCounters::default())
    {
        names.extend(m.into_iter().filter(|(_, v)| v.is_u64()).map(|(k, _)| k));
    }
    names.insert("received_bytes".into());
    names.insert("received_packets".into());
    names
}

/// A validated scenario.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// The run stops here even if flows are unfinished.
    pub duration: Duration,
    pub families: Vec<Family>,
    pub routers: Vec<String>,
    pub subnets: Vec<Subnet>,
    pub core_links: Vec<CoreLink>,
    pub hosts: Vec<Host>,
    pub tcp: Vec<TcpFlow>,
    pub udp: Vec<UdpFlow>,
    pub events: Vec<Event>,
    pub losses: Vec<Loss>,
    pub expect: Expect,
}

// ---- the file format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_duration_ms")]
    duration_ms: u64,
    families: Option<Vec<Family>>,
    #[serde(default, rename = "router")]
    routers: Vec<RouterSpec>,
    #[serde(default, rename = "subnet")]
    subnets: Vec<SubnetSpec>,
    #[serde(default, rename = "core_link")]
    core_links: Vec<CoreLinkSpec>,
    #[serde(default, rename = "host")]
    hosts: Vec<HostSpec>,
    #[serde(default)]
    tcp: Vec<TcpSpec>,
    #[serde(default)]
    udp: Vec<UdpSpec>,
    #[serde(default, rename = "event")]
    events: Vec<EventSpec>,
    #[serde(default, rename = "loss")]
    losses: Vec<LossSpec>,
    #[serde(default)]
    expect: ExpectSpec,
}

fn default_duration_ms() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterSpec {
    name: Spanned<String>,
}

/// A number written as an integer or a float (`latency_ms = 8` or `= 0.5`).
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn get(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// A link's properties as written (subnets and core links carry these fields).
struct LinkSpec<'a> {
    latency_ms: &'a Option<Spanned<Num>>,
    bandwidth_mbps: &'a Option<Spanned<Num>>,
    loss: &'a Option<Spanned<Num>>,
    reorder: &'a Option<Spanned<Num>>,
    duplicate: &'a Option<Spanned<Num>>,
    queue_ms: &'a Option<Spanned<Num>>,
}

macro_rules! link_spec {
    ($s:expr) => {
        LinkSpec {
            latency_ms: &$s.latency_ms,
            bandwidth_mbps: &$s.bandwidth_mbps,
            loss: &$s.loss,
            reorder: &$s.reorder,
            duplicate: &$s.duplicate,
            queue_ms: &$s.queue_ms,
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetSpec {
    name: Spanned<String>,
    router: Spanned<String>,
    #[serde(default = "yes")]
    ingress_filter: bool,
    latency_ms: Option<Spanned<Num>>,
    bandwidth_mbps: Option<Spanned<Num>>,
    loss: Option<Spanned<Num>>,
    reorder: Option<Spanned<Num>>,
    duplicate: Option<Spanned<Num>>,
    queue_ms: Option<Spanned<Num>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoreLinkSpec {
    between: Spanned<[Spanned<String>; 2]>,
    latency_ms: Option<Spanned<Num>>,
    bandwidth_mbps: Option<Spanned<Num>>,
    loss: Option<Spanned<Num>>,
    reorder: Option<Spanned<Num>>,
    duplicate: Option<Spanned<Num>>,
    queue_ms: Option<Spanned<Num>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSpec {
    name: Spanned<String>,
    subnet: Option<Spanned<String>>,
    id: Option<Spanned<u8>>,
    #[serde(default = "yes")]
    roam: bool,
    #[serde(default)]
    silent: bool,
    #[serde(default)]
    move_message: roam_core::MoveMessage,
    rekey_after_ms: Option<Spanned<u64>>,
    /// Hosts whose keys it trusts (default: every roam host's).
    trusts: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseSpec {
    at_ms: u64,
    from: Side,
    bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpSpec {
    name: Spanned<String>,
    client: Spanned<String>,
    server: Spanned<String>,
    port: u16,
    client_port: u16,
    #[serde(default)]
    start_ms: u64,
    /// Client to server at the start.
    #[serde(default)]
    bytes: u64,
    /// Server to client at the start.
    #[serde(default)]
    reply_bytes: u64,
    #[serde(default, rename = "phase")]
    phases: Vec<PhaseSpec>,
    /// Socket buffer (and so window) size in KiB at both ends.
    window_kb: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UdpSpec {
    name: Spanned<String>,
    sender: Spanned<String>,
    receiver: Spanned<String>,
    port: u16,
    sender_port: u16,
    #[serde(default)]
    start_ms: u64,
    bytes: Spanned<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    at_ms: Option<u64>,
    /// With `received_bytes`: fire when this flow's receivers have this much.
    flow: Option<Spanned<String>>,
    received_bytes: Option<u64>,
    #[serde(rename = "move")]
    move_host: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    attach: Option<Spanned<String>>,
    subnet: Option<Spanned<String>>,
    detach: Option<Spanned<String>>,
    id: Option<u8>,
    #[serde(default)]
    dhcp_delay_ms: u64,
    restart: Option<Spanned<String>>,
    /// An attack: "forge", "tamper", "replay", "redirect" or "flood".
    attack: Option<Spanned<String>>,
    by: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    of: Option<Spanned<String>>,
    victim: Option<Spanned<String>>,
    /// For "replay": the captured message's type, e.g. "connection-update".
    message: Option<Spanned<String>>,
    count: Option<Spanned<u32>>,
    over_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LossSpec {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    traffic: Traffic,
    probability: Spanned<Num>,
    #[serde(default)]
    from_ms: u64,
    until_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExpectSpec {
    max_gap_ms: Option<u64>,
    conflicts_resolved: Option<u64>,
    min_control_retransmits: Option<u64>,
    /// "host.metric" = lower bound.
    #[serde(default)]
    at_least: BTreeMap<Spanned<String>, u64>,
    /// "host.metric" = upper bound.
    #[serde(default)]
    at_most: BTreeMap<Spanned<String>, u64>,
}

/// Turns byte offsets into line numbers and builds errors.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// An `[[event]]` with `attack = "..."`.
    fn attack(
        &self,
        e: &EventSpec,
        host_names: &BTreeMap<String, usize>,
        hosts: &[Host],
    ) -> Result<Attack, ScenarioError> {
        let a = e.attack.as_ref().expect("an attack event");
        let kind = a.get_ref().as_str();
        let need = |f: &Option<Spanned<String>>, what: &str| -> Result<usize, ScenarioError> {
            match f {
                Some(n) => self.lookup(host_names, "host", n),
                None => self.err(a.span(), format!("a {kind} attack needs `{what}` (a host)")),
            }
        };
        let by = need(&e.by, "by")?;
        let target = need(&e.target, "target")?;
        if by == target {
            return self.err(a.span(), "an attacker does not attack itself");
        }
        if !hosts[target].roam {
            return self.err(
                a.span(),
                format!("the target \"{}\" does not run roam", hosts[target].name),
            );
        }
        let attack = match kind {
            "forge" => Attack::Forge {
                by,
                target,
                of: need(&e.of, "of")?,
            },
            "tamper" => Attack::Tamper {
                by,
                target,
                of: need(&e.of, "of")?,
            },
            "replay" => {
                let Some(m) = &e.message else {
                    return self.err(
                        a.span(),
                        "a replay attack needs `message` (e.g. \"connection-update\")",
                    );
                };
                let wanted = m.get_ref().as_str();
                let Some(t) = roam_wire::MessageType::ALL
                    .iter()
                    .find(|t| t.name().to_lowercase().replace(' ', "-") == wanted)
                else {
                    let known: Vec<String> = roam_wire::MessageType::ALL
                        .iter()
                        .map(|t| t.name().to_lowercase().replace(' ', "-"))
                        .collect();
                    return self.err(
                        m.span(),
                        format!("unknown message type \"{wanted}\": one of {}", known.join(", ")),
                    );
                };
                Attack::Replay {
                    by,
                    target,
                    of: need(&e.of, "of")?,
                    message: *t as u8,
                }
            }
            "redirect" => {
                let victim = need(&e.victim, "victim")?;
                if !hosts[by].roam {
                    return self.err(a.span(), "a redirect is a malicious peer's: `by` must run roam");
                }
                if victim == by || victim == target {
                    return self.err(a.span(), "the victim is a third host");
                }
                Attack::Redirect { by, target, victim }
            }
            "flood" => {
                let count = match &e.count {
                    Some(c) if (1..=1_000_000).contains(c.get_ref()) => *c.get_ref(),
                    Some(c) => return self.err(c.span(), "count must be 1..=1000000"),
                    None => return self.err(a.span(), "a flood attack needs `count`"),
                };
                let over = Duration::from_millis(e.over_ms.unwrap_or(1000).max(1));
                Attack::Flood {
                    by,
                    target,
                    count,
                    over,
                }
            }
            other => {
                return self.err(
                    a.span(),
                    format!("unknown attack \"{other}\": forge, tamper, replay, redirect or flood"),
                );
            }
        };
        Ok(attack)
    }

    /// `"host.metric" = n` entries of an expectation.
    fn metric_bounds(
        &self,
        bounds: &BTreeMap<Spanned<String>, u64>,
        host_names: &BTreeMap<String, usize>,
    ) -> Result<BTreeMap<(usize, String), u64>, ScenarioError> {
        let metrics = metric_names();
        let mut out = BTreeMap::new();
        for (key, n) in bounds {
            let Some((host, metric)) = key.get_ref().split_once('.') else {
                return self.err(key.span(), format!("\"{}\" is not host.metric", key.get_ref()));
            };
            let Some(h) = host_names.get(host) else {
                return self.err(key.span(), format!("unknown host \"{host}\""));
            };
            if !metrics.contains(metric) {
                return self.err(
                    key.span(),
                    format!("unknown metric \"{metric}\" (a counter, received_bytes or received_packets)"),
                );
            }
            out.insert((*h, metric.to_string()), *n);
        }
        Ok(out)
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn err<T>(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> Result<T, ScenarioError> {
        Err(ScenarioError {
            origin: self.origin.to_string(),
            line: Some(self.line_of(span.start)),
            message: message.into(),
        })
    }

    fn lookup(
        &self,
        names: &BTreeMap<String, usize>,
        what: &str,
        name: &Spanned<String>,
    ) -> Result<usize, ScenarioError> {
        match names.get(name.get_ref()) {
            Some(i) => Ok(*i),
            None => self.err(name.span(), format!("unknown {what} \"{}\"", name.get_ref())),
        }
    }

    fn link(
        &self,
        spec: &LinkSpec<'_>,
        default_latency_ms: f64,
        default_mbps: f64,
    ) -> Result<LinkParams, ScenarioError> {
        let prob = |v: &Option<Spanned<Num>>, what: &str| -> Result<f64, ScenarioError> {
            match v {
                None => Ok(0.0),
                Some(p) if (0.0..=1.0).contains(&p.get_ref().get()) => Ok(p.get_ref().get()),
                Some(p) => self.err(
                    p.span(),
                    format!("{what} must be between 0 and 1, not {}", p.get_ref().get()),
                ),
            }
        };
        let positive = |v: &Option<Spanned<Num>>,
                        what: &str,
                        default: f64,
                        allow_zero: bool|
         -> Result<f64, ScenarioError> {
            match v {
                None => Ok(default),
                Some(x)
                    if x.get_ref().get().is_finite()
                        && (x.get_ref().get() > 0.0 || (allow_zero && x.get_ref().get() == 0.0)) =>
                {
                    Ok(x.get_ref().get())
                }
                Some(x) => self.err(
                    x.span(),
                    format!("{what} must be a positive number, not {}", x.get_ref().get()),
                ),
            }
        };
        let latency_ms = positive(spec.latency_ms, "latency_ms", default_latency_ms, true)?;
        let mbps = positive(spec.bandwidth_mbps, "bandwidth_mbps", default_mbps, false)?;
        let queue_ms = positive(spec.queue_ms, "queue_ms", 25.0, false)?;
        Ok(LinkParams {
            latency: Duration::from_secs_f64(latency_ms / 1e3),
            rate_bps: (mbps * 1e6) as u64,
            loss: prob(spec.loss, "loss")?,
            reorder: prob(spec.reorder, "reorder")?,
            duplicate: prob(spec.duplicate, "duplicate")?,
            queue: Duration::from_secs_f64(queue_ms / 1e3),
        })
    }
}

fn names<'a>(
    src: &Source<'_>,
    what: &str,
    items: impl Iterator<Item = &'a Spanned<String>>,
) -> Result<BTreeMap<String, usize>, ScenarioError> {
    let mut m = BTreeMap::new();
    for (i, n) in items.enumerate() {
        if n.get_ref().is_empty() {
            return src.err(n.span(), format!("a {what} needs a name"));
        }
        if m.insert(n.get_ref().clone(), i).is_some() {
            return src.err(n.span(), format!("two {what}s are named \"{}\"", n.get_ref()));
        }
    }
    Ok(m)
}

impl Scenario {
    /// Parses and validates a scenario. `origin` names the file in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let src = Source { origin, text };
        let spec: FileSpec = toml::from_str(text).map_err(|e| ScenarioError {
            origin: origin.to_string(),
            line: e.span().map(|s| src.line_of(s.start)),
            message: e.message().to_string(),
        })?;

        let router_names = names(&src, "router", spec.routers.iter().map(|r| &r.name))?;
        let subnet_names = names(&src, "subnet", spec.subnets.iter().map(|s| &s.name))?;
        let host_names = names(&src, "host", spec.hosts.iter().map(|h| &h.name))?;
        let flow_names = names(
            &src,
            "flow",
            spec.tcp
                .iter()
                .map(|t| &t.name)
                .chain(spec.udp.iter().map(|u| &u.name)),
        )?;
        if spec.subnets.len() > 200 {
            return src.err(0..0, "at most 200 subnets");
        }

        let mut subnets = Vec::new();
        for s in &spec.subnets {
            subnets.push(Subnet {
                name: s.name.get_ref().clone(),
                router: src.lookup(&router_names, "router", &s.router)?,
                link: src.link(&link_spec!(s), 1.0, 1000.0)?,
                ingress_filter: s.ingress_filter,
            });
        }
        let mut core_links = Vec::new();
        for c in &spec.core_links {
            let [a, b] = c.between.get_ref();
            let (a, b) = (
                src.lookup(&router_names, "router", a)?,
                src.lookup(&router_names, "router", b)?,
            );
            if a == b {
                return src.err(c.between.span(), "a core link joins two different routers");
            }
            core_links.push(CoreLink {
                a,
                b,
                link: src.link(&link_spec!(c), 8.0, 100.0)?,
            });
        }
        let mut hosts = Vec::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            let id = match &h.id {
                Some(id) if matches!(*id.get_ref(), 0 | 1 | 255) => {
                    return src.err(id.span(), "host id must be 2..=254 (1 is the router)");
                }
                Some(id) => *id.get_ref(),
                None => 10 + i as u8,
            };
            hosts.push(Host {
                name: h.name.get_ref().clone(),
                subnet: h
                    .subnet
                    .as_ref()
                    .map(|s| src.lookup(&subnet_names, "subnet", s))
                    .transpose()?,
                id,
                roam: h.roam && !h.silent,
                silent: h.silent,
                move_message: h.move_message,
                rekey_after: match &h.rekey_after_ms {
                    None => None,
                    Some(ms) if *ms.get_ref() >= 100 => Some(Duration::from_millis(*ms.get_ref())),
                    Some(ms) => return src.err(ms.span(), "rekey_after_ms must be at least 100"),
                },
                trusts: None,
            });
        }
        for (h, spec) in hosts.iter_mut().zip(&spec.hosts) {
            if let Some(t) = &spec.trusts {
                for name in t {
                    src.lookup(&host_names, "host", name)?;
                }
                h.trusts = Some(t.iter().map(|n| n.get_ref().clone()).collect());
            }
        }
        // Two hosts on one subnet with one address would make delivery ambiguous.
        for (i, h) in hosts.iter().enumerate() {
            for (j, o) in hosts.iter().enumerate().skip(i + 1) {
                if h.subnet.is_some() && h.subnet == o.subnet && h.id == o.id {
                    return src.err(
                        spec.hosts[j].name.span(),
                        format!("hosts \"{}\" and \"{}\" share an address", h.name, o.name),
                    );
                }
            }
        }

        let mut tcp = Vec::new();
        for t in &spec.tcp {
            let client = src.lookup(&host_names, "host", &t.client)?;
            let server = src.lookup(&host_names, "host", &t.server)?;
            if client == server {
                return src.err(t.server.span(), "a flow joins two different hosts");
            }
            let start = Duration::from_millis(t.start_ms);
            let mut phases = Vec::new();
            if t.bytes > 0 {
                phases.push(Phase {
                    at: start,
                    from: Side::Client,
                    bytes: t.bytes,
                });
            }
            if t.reply_bytes > 0 {
                phases.push(Phase {
                    at: start,
                    from: Side::Server,
                    bytes: t.reply_bytes,
                });
            }
            for p in &t.phases {
                if p.at_ms < t.start_ms {
                    return src.err(
                        t.name.span(),
                        format!("phase at {} ms is before the flow starts", p.at_ms),
                    );
                }
                phases.push(Phase {
                    at: Duration::from_millis(p.at_ms),
                    from: p.from,
                    bytes: p.bytes,
                });
            }
            if phases.is_empty() {
                return src.err(t.name.span(), "a TCP flow needs bytes, reply_bytes or a phase");
            }
            let buffer = match &t.window_kb {
                None => crate::apps::TCP_BUFFER,
                Some(w) if (8..=16384).contains(w.get_ref()) => *w.get_ref() as usize * 1024,
                Some(w) => {
                    return src.err(
                        w.span(),
                        format!("window_kb must be 8..=16384, not {}", w.get_ref()),
                    );
                }
            };
            tcp.push(TcpFlow {
                name: t.name.get_ref().clone(),
                client,
                server,
                port: t.port,
                client_port: t.client_port,
                start,
                phases,
                buffer,
            });
        }
        let mut udp = Vec::new();
        for u in &spec.udp {
            let sender = src.lookup(&host_names, "host", &u.sender)?;
            let receiver = src.lookup(&host_names, "host", &u.receiver)?;
            if sender == receiver {
                return src.err(u.receiver.span(), "a flow joins two different hosts");
            }
            if *u.bytes.get_ref() == 0 {
                return src.err(u.bytes.span(), "a UDP flow needs bytes > 0");
            }
            udp.push(UdpFlow {
                name: u.name.get_ref().clone(),
                sender,
                receiver,
                port: u.port,
                sender_port: u.sender_port,
                start: Duration::from_millis(u.start_ms),
                bytes: *u.bytes.get_ref(),
            });
        }

        let mut events = Vec::new();
        for e in &spec.events {
            let anchor = [&e.move_host, &e.attach, &e.detach, &e.restart, &e.attack]
                .into_iter()
                .flatten()
                .map(|s| s.span())
                .next()
                .or_else(|| e.flow.as_ref().map(|f| f.span()))
                .unwrap_or(0..0);
            let trigger = match (e.at_ms, &e.flow, e.received_bytes) {
                (Some(ms), None, None) => Trigger::At(Duration::from_millis(ms)),
                (None, Some(f), Some(b)) => {
                    src.lookup(&flow_names, "flow", f)?;
                    Trigger::Received {
                        flow: f.get_ref().clone(),
                        bytes: b,
                    }
                }
                _ => return src.err(anchor, "an event needs either at_ms, or flow and received_bytes"),
            };
            let kinds = [&e.move_host, &e.attach, &e.detach, &e.restart, &e.attack]
                .iter()
                .filter(|k| k.is_some())
                .count();
            if kinds != 1 {
                return src.err(
                    anchor,
                    "an event does exactly one of move, attach, detach, restart or attack",
                );
            }
            let action = match (&e.move_host, &e.attach, &e.detach) {
                _ if e.restart.is_some() => {
                    let h = e.restart.as_ref().expect("checked");
                    let host = src.lookup(&host_names, "host", h)?;
                    if !hosts[host].roam {
                        return src.err(h.span(), "only a roam host has a daemon to restart");
                    }
                    Action::Restart { host }
                }
                _ if e.attack.is_some() => Action::Attack(src.attack(e, &host_names, &hosts)?),
                (Some(h), None, None) => {
                    let Some(to) = &e.to else {
                        return src.err(h.span(), "a move needs `to`, the subnet moved to");
                    };
                    Action::Move {
                        host: src.lookup(&host_names, "host", h)?,
                        to: src.lookup(&subnet_names, "subnet", to)?,
                        id: e.id,
                        dhcp_delay: Duration::from_millis(e.dhcp_delay_ms),
                    }
                }
                (None, Some(h), None) => {
                    let Some(s) = &e.subnet else {
                        return src.err(h.span(), "an attach needs `subnet`");
                    };
                    Action::Attach {
                        host: src.lookup(&host_names, "host", h)?,
                        subnet: src.lookup(&subnet_names, "subnet", s)?,
                        id: e.id,
                    }
                }
                (None, None, Some(h)) => Action::Detach {
                    host: src.lookup(&host_names, "host", h)?,
                },
                _ => unreachable!("exactly one kind, checked above"),
            };
            if matches!(e.id, Some(0 | 1 | 255)) {
                return src.err(anchor, "host id must be 2..=254 (1 is the router)");
            }
            events.push(Event { trigger, action });
        }

        let mut losses = Vec::new();
        for l in &spec.losses {
            let p = l.probability.get_ref().get();
            if !(0.0..=1.0).contains(&p) {
                return src.err(
                    l.probability.span(),
                    format!("probability must be between 0 and 1, not {p}"),
                );
            }
            losses.push(Loss {
                hosts: l
                    .hosts
                    .iter()
                    .map(|h| src.lookup(&host_names, "host", h))
                    .collect::<Result<_, _>>()?,
                traffic: l.traffic,
                probability: p,
                from: Duration::from_millis(l.from_ms),
                until: l.until_ms.map(Duration::from_millis).unwrap_or(Duration::MAX),
            });
        }

        Ok(Scenario {
            name: spec.name,
            description: spec.description.trim().to_string(),
            duration: Duration::from_millis(spec.duration_ms),
            families: spec.families.unwrap_or_else(|| Family::BOTH.to_vec()),
            routers: spec.routers.into_iter().map(|r| r.name.into_inner()).collect(),
            subnets,
            core_links,
            hosts,
            tcp,
            udp,
            events,
            losses,
            expect: Expect {
                max_gap: spec.expect.max_gap_ms.map(Duration::from_millis),
                conflicts_resolved: spec.expect.conflicts_resolved,
                min_control_retransmits: spec.expect.min_control_retransmits,
                at_least: src.metric_bounds(&spec.expect.at_least, &host_names)?,
                at_most: src.metric_bounds(&spec.expect.at_most, &host_names)?,
            },
        })
    }

    pub fn host_index(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
[[router]]
name = "r"
[[subnet]]
name = "n1"
router = "r"
[[host]]
name = "a"
subnet = "n1"
[[host]]
name = "b"
subnet = "n1"
[[tcp]]
name = "f"
client = "a"
server = "b"
port = 1
client_port = 2
bytes = 10
"#;

    #[test]
    fn a_valid_scenario_parses() {
        let s = Scenario::from_toml(OK, "ok.toml").unwrap();
        assert_eq!(s.hosts[1].id, 11);
        assert_eq!(s.families, Family::BOTH.to_vec());
    }

    fn error_of(text: &str) -> ScenarioError {
        Scenario::from_toml(text, "bad.toml").unwrap_err()
    }

    #[test]
    fn an_unknown_name_is_refused_with_its_line() {
        let text = OK.replace("server = \"b\"", "server = \"nobody\"");
        let e = error_of(&text);
        assert_eq!(e.line, Some(17), "{e}");
        assert!(e.message.contains("unknown host \"nobody\""), "{e}");
        assert!(e.to_string().starts_with("bad.toml:17: "), "{e}");
    }

    #[test]
    fn a_syntax_error_is_refused_with_its_line() {
        let e = error_of(&OK.replace("port = 1\n", "port = = 1\n"));
        assert_eq!(e.line, Some(18), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let e = error_of(&OK.replace("[[host]]\nname = \"b\"", "[[host]]\nnmae = \"b\""));
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.message.contains("nmae"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_line() {
        let e = error_of(&OK.replace("router = \"r\"\n", "router = \"r\"\nloss = 1.5\n"));
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("between 0 and 1"), "{e}");
        let e = error_of(&OK.replace(
            "name = \"b\"\nsubnet = \"n1\"",
            "name = \"b\"\nsubnet = \"n1\"\nid = 1",
        ));
        assert!(e.message.contains("2..=254"), "{e}");
    }

    #[test]
    fn duplicate_names_and_shared_addresses_are_refused() {
        let e = error_of(&OK.replace("name = \"b\"", "name = \"a\""));
        assert!(e.message.contains("two hosts are named \"a\""), "{e}");
        let e = error_of(&OK.replace(
            "name = \"b\"\nsubnet = \"n1\"",
            "name = \"b\"\nsubnet = \"n1\"\nid = 10",
        ));
        assert!(e.message.contains("share an address"), "{e}");
    }

    #[test]
    fn an_event_must_say_when_and_what() {
        let e = error_of(&format!("{OK}\n[[event]]\nmove = \"a\"\nto = \"n1\"\n"));
        assert!(e.message.contains("at_ms"), "{e}");
        let e = error_of(&format!("{OK}\n[[event]]\nat_ms = 5\nmove = \"a\"\n"));
        assert!(e.message.contains("needs `to`"), "{e}");
        let e = error_of(&format!(
            "{OK}\n[[event]]\nat_ms = 5\nmove = \"a\"\nto = \"n1\"\nrestart = \"b\"\n"
        ));
        assert!(e.message.contains("exactly one"), "{e}");
    }

    #[test]
    fn attacks_and_expectations_are_checked_with_their_line() {
        let attack = |body: &str| error_of(&format!("{OK}\n[[event]]\nat_ms = 5\n{body}\n"));
        let e = attack("attack = \"nuke\"\nby = \"a\"\ntarget = \"b\"");
        assert!(e.message.contains("unknown attack \"nuke\""), "{e}");
        assert_eq!(e.line, Some(24), "{e}");
        let e = attack("attack = \"forge\"\ntarget = \"b\"");
        assert!(e.message.contains("needs `by`"), "{e}");
        let e = attack("attack = \"forge\"\nby = \"a\"\ntarget = \"a\"\nof = \"b\"");
        assert!(e.message.contains("itself"), "{e}");
        let e = attack("attack = \"replay\"\nby = \"a\"\ntarget = \"b\"\nof = \"a\"\nmessage = \"hello\"");
        assert!(e.message.contains("unknown message type \"hello\""), "{e}");
        assert!(e.message.contains("connection-update"), "{e}");
        let e = attack("attack = \"flood\"\nby = \"a\"\ntarget = \"b\"\ncount = 0");
        assert!(e.message.contains("count must be"), "{e}");
        let e = error_of(&format!(
            "{OK}\n[expect]\nat_least = {{ \"b.no_such_counter\" = 1 }}\n"
        ));
        assert!(e.message.contains("unknown metric"), "{e}");
        let e = error_of(&format!(
            "{OK}\n[expect]\nat_most = {{ \"nobody.received_bytes\" = 1 }}\n"
        ));
        assert!(e.message.contains("unknown host \"nobody\""), "{e}");
        let ok = Scenario::from_toml(
            &format!(
                "{OK}\n[[event]]\nat_ms = 5\nattack = \"replay\"\nby = \"a\"\ntarget = \"b\"\nof = \"a\"\nmessage = \"handshake-init\"\n[expect]\nat_most = {{ \"b.drop_replay\" = 3, \"a.received_bytes\" = 9 }}\n"
            ),
            "ok.toml",
        )
        .unwrap();
        assert_eq!(ok.expect.at_most.len(), 2);
        assert!(matches!(
            ok.events[0].action,
            Action::Attack(Attack::Replay { message: 0x40, .. })
        ));
    }
}
