//! The endpoint driven with a fake clock: hosts joined by an in-memory network whose
//! latency and loss the test sets. The clock jumps to the next delivery or timeout;
//! a bounded `drive` catches livelock.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use roam_wire::{
    Capabilities, Extension, Frame, Header, Message, MessageType, Migration, NodeId, ProtoFlags, SessionKey,
};

use super::*;
use crate::security::{StaticKey, Trust};
use crate::translate::{FlowMapping, Protocol, TableChange, Tuple};

/// Host `i`'s key (deterministic).
fn key(i: usize) -> StaticKey {
    StaticKey::from_bytes([i as u8 + 1; 32])
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Host {
    ep: Endpoint,
    /// The data plane, as the commands left it.
    table: BTreeMap<Tuple, FlowMapping>,
    /// (flow, fast retransmit) of every nudge.
    nudges: Vec<(Tuple, bool)>,
    resends: Vec<Tuple>,
    /// Addresses the data plane is told to budget (return routability).
    unvalidated: std::collections::BTreeSet<IpAddr>,
    /// Every return-routability command (`Unvalidated`, `Validated`, `Unreachable`), in order.
    limits: Vec<DataPlaneCommand>,
    events: Vec<Event>,
}

impl Host {
    fn drain(&mut self, out: &mut Vec<(Instant, Transmit)>, at: Instant) {
        while let Some(c) = self.ep.poll_dataplane() {
            match c {
                DataPlaneCommand::Table(TableChange::InstallFlow(m)) => {
                    self.table.insert(m.original, m);
                }
                DataPlaneCommand::Table(TableChange::RemoveFlow { original }) => {
                    self.table.remove(&original);
                }
                DataPlaneCommand::Table(other) => panic!("unexpected {other:?}"),
                DataPlaneCommand::Nudge {
                    original,
                    fast_retransmit,
                } => self.nudges.push((original, fast_retransmit)),
                DataPlaneCommand::Resend { original } => self.resends.push(original),
                DataPlaneCommand::Unvalidated { remote, .. } => {
                    self.limits.push(c);
                    self.unvalidated.insert(remote);
                }
                DataPlaneCommand::Validated { remote } | DataPlaneCommand::Unreachable { remote } => {
                    self.limits.push(c);
                    self.unvalidated.remove(&remote);
                }
            }
        }
        while let Some(t) = self.ep.poll_transmit() {
            out.push((at, t));
        }
        while let Some(e) = self.ep.poll_event() {
            self.events.push(e);
        }
    }
}

struct Net {
    now: Instant,
    hosts: Vec<Host>,
    /// Which host answers at each address.
    owner: BTreeMap<IpAddr, usize>,
    in_flight: Vec<(Instant, Transmit)>,
    latency: Duration,
    /// Decides, per datagram (in send order), whether it is lost.
    lose: Box<dyn FnMut(&Transmit) -> bool>,
    delivered: Vec<Transmit>,
}

impl Net {
    fn new(n: usize) -> Net {
        Net::with_config(n, |_, _| {})
    }

    /// `n` hosts, host `i`'s configuration changed by `tune(i, ...)`.
    fn with_config(n: usize, tune: impl Fn(usize, &mut Config)) -> Net {
        let hosts = (0..n)
            .map(|i| {
                // Every host trusts every other's key.
                let trust = Trust::keys((0..n).map(|j| (key(j).public(), format!("host{j}"))));
                let mut cfg = Config::new(key(i), trust);
                tune(i, &mut cfg);
                Host {
                    ep: Endpoint::new(cfg, Box::new(ChaCha8Rng::seed_from_u64(i as u64))),
                    table: BTreeMap::new(),
                    nudges: Vec::new(),
                    resends: Vec::new(),
                    unvalidated: Default::default(),
                    limits: Vec::new(),
                    events: Vec::new(),
                }
            })
            .collect();
        Net {
            now: Instant::from_millis(1),
            hosts,
            owner: BTreeMap::new(),
            in_flight: Vec::new(),
            latency: Duration::from_millis(10),
            lose: Box::new(|_| false),
            delivered: Vec::new(),
        }
    }

    fn input(&mut self, h: usize, input: Input<'_>) {
        let now = self.now;
        self.hosts[h].ep.handle(now, input);
        let mut out = Vec::new();
        self.hosts[h].drain(&mut out, now);
        self.send(out);
    }

    fn send(&mut self, out: Vec<(Instant, Transmit)>) {
        for (at, t) in out {
            if !(self.lose)(&t) {
                self.in_flight.push((at + self.latency, t));
            }
        }
    }

    fn add_address(&mut self, h: usize, a: &str) {
        self.owner.insert(ip(a), h);
        self.input(h, Input::AddressAdded(ip(a)));
    }

    fn remove_address(&mut self, h: usize, a: &str) {
        self.owner.remove(&ip(a));
        self.input(h, Input::AddressRemoved(ip(a)));
    }

    /// Runs until nothing is in flight and no timer is due before `until`.
    fn drive_until(&mut self, until: Instant) {
        for _ in 0..10_000 {
            let next_packet = self.in_flight.iter().map(|(t, _)| *t).min();
            let next_timer = self.hosts.iter().filter_map(|h| h.ep.poll_timeout()).min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                return;
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let i = self.in_flight.iter().position(|(t, _)| *t == next).unwrap();
                let (_, t) = self.in_flight.remove(i);
                self.delivered.push(t.clone());
                if let Some(&h) = self.owner.get(&t.dst.ip()) {
                    self.input(
                        h,
                        Input::Datagram {
                            local: t.dst,
                            remote: t.src,
                            payload: &t.payload,
                        },
                    );
                }
            } else {
                for h in 0..self.hosts.len() {
                    if self.hosts[h].ep.poll_timeout().is_some_and(|t| t <= self.now) {
                        self.input(h, Input::Timeout);
                    }
                }
            }
        }
        panic!("livelock: 10000 steps without quiescing");
    }

    /// Lets `d` of virtual time pass, handling whatever happens meanwhile.
    fn sleep(&mut self, d: Duration) {
        let until = self.now + d;
        self.drive_until(until);
        self.now = self.now.max(until);
    }

    /// Runs until things settle: 20 s of virtual time at most (sessions always have a
    /// timer, their renewal, two minutes out).
    fn drive(&mut self) {
        self.drive_until(self.now + Duration::from_secs(20));
    }

    /// Whether host `h` has no update or termination waiting for an answer.
    fn nothing_pending(&self, h: usize) -> bool {
        self.ep(h)
            .peers
            .values()
            .all(|p| p.update.is_none() && p.termination.is_none())
    }

    fn ep(&self, h: usize) -> &Endpoint {
        &self.hosts[h].ep
    }
}

/// A Connection Update from `sender` carrying one migration.
fn update(sender: NodeId, seq: u16, m: Migration) -> Message {
    Message::new(Header::new(MessageType::ConnectionUpdate, sender, seq, 0)).with(Extension::Migration(m))
}

fn migration(original: &str, new: &str, peer: &str) -> Migration {
    Migration::new(ProtoFlags::TCP, sa(original), sa(new), sa(peer)).unwrap()
}

impl Net {
    /// Seals `msg` as host `from` would for host `to`, with its real session.
    fn seal_as(&mut self, from: usize, to: usize, msg: Message) -> Vec<u8> {
        let peer = self.ep(to).node_id();
        let ep = &mut self.hosts[from].ep;
        let index = ep.peers[&peer].session.expect("a session");
        ep.sessions.get_mut(&index).unwrap().seal(msg).unwrap()
    }

    /// What a sealed datagram for host `h` says (without disturbing its replay window).
    fn read_as(&self, h: usize, bytes: &[u8]) -> Message {
        let f = Frame::parse(bytes).unwrap();
        self.ep(h).sessions[&f.spi().unwrap()].decrypt(&f).unwrap()
    }

    /// Hands host `h` a datagram as if from `remote`.
    fn deliver(&mut self, h: usize, local: &str, remote: &str, payload: &[u8]) {
        self.input(
            h,
            Input::Datagram {
                local: sa(local),
                remote: sa(remote),
                payload,
            },
        );
    }

    /// The first datagram of type `t` delivered so far.
    fn first_delivered(&self, t: MessageType) -> Transmit {
        self.delivered
            .iter()
            .find(|d| d.payload[1] == t as u8)
            .expect("delivered")
            .clone()
    }

    /// Host `h` moves: the new address comes, the old one goes (as DHCP does).
    fn move_host(&mut self, h: usize, from: &str, to: &str) {
        self.add_address(h, to);
        self.remove_address(h, from);
    }
}

fn tcp(local: &str, remote: &str) -> Tuple {
    Tuple::new(Protocol::Tcp, sa(local), sa(remote))
}

/// A (10.0.1.2) and B (10.0.9.2) with one TCP flow between them, registered.
fn pair_with_flow() -> (Net, Tuple) {
    register_pair(Net::new(2))
}

/// `pair_with_flow` on the two hosts of `net`.
fn register_pair(mut net: Net) -> (Net, Tuple) {
    net.add_address(0, "10.0.1.2");
    net.add_address(1, "10.0.9.2");
    let a_flow = tcp("10.0.1.2:40000", "10.0.9.2:5001");
    net.input(0, Input::FlowOpened(a_flow));
    net.input(1, Input::FlowOpened(a_flow.reversed()));
    net.drive();
    (net, a_flow)
}

/// `pair_with_flow`, after A moved from 10.0.1.2 to 10.0.2.7 and both settled.
fn moved_pair() -> (Net, Tuple) {
    let (mut net, flow) = pair_with_flow();
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    (net, flow)
}

/// Seed 000 ¶0067: after A moved, a third host now at A's old address uses A's old
/// port towards B, whose data plane reports the conflict. The newcomer's tuple at B.
fn ingress_clash(net: &mut Net, a_flow: Tuple) -> Tuple {
    let clash = a_flow.reversed();
    net.input(
        1,
        Input::Conflict {
            direction: ConflictDirection::Ingress,
            tuple: clash,
        },
    );
    clash
}

#[test]
fn a_new_flow_registers_both_hosts_with_each_other() {
    let (net, flow) = pair_with_flow();
    let a = net.ep(0);
    let b = net.ep(1);
    assert_eq!(a.flow(&flow).unwrap().peer, FlowPeer::Peer(b.node_id()));
    assert_eq!(
        b.flow(&flow.reversed()).unwrap().peer,
        FlowPeer::Peer(a.node_id())
    );
    let pb = a.peer(b.node_id()).unwrap();
    assert_eq!(pb.control, sa("10.0.9.2:4791"));
    assert_eq!(
        pb.srtt,
        Some(Duration::from_millis(20)),
        "one round trip measured"
    );
    assert!(!pb.behind_nat);
    assert_eq!(
        a.counters().drop_unexpected_reply + b.counters().drop_unexpected_reply,
        0
    );
    assert!(
        net.hosts[0].table.is_empty(),
        "nothing to translate before a move"
    );
}

#[test]
fn each_host_announces_whether_its_data_plane_holds_packets() {
    // A's plane drops held packets (the kernel's), B's queues them (TUN, simulator).
    let (net, _) = register_pair(Net::with_config(2, |i, c| c.holds_packets = i == 1));
    let (a, b) = (net.ep(0), net.ep(1));
    let a_at_b = b.peer(a.node_id()).unwrap().capabilities;
    let b_at_a = a.peer(b.node_id()).unwrap().capabilities;
    assert_eq!(a_at_b, Capabilities::MOBILE, "A does not hold packets");
    assert_eq!(b_at_a, Capabilities::MOBILE | Capabilities::HOLDS_PACKETS);
}

#[test]
fn a_move_is_announced_confirmed_and_installed_on_both_hosts() {
    let (mut net, flow) = pair_with_flow();

    net.move_host(0, "10.0.1.2", "10.0.2.7");
    // The mover holds the flow until the peer confirms (seed 001 FIG. 3 step 305).
    let held = net.hosts[0].table[&flow];
    assert!(held.hold);
    assert_eq!(held.current.local, sa("10.0.2.7:40000"));
    net.drive();
    let a = &net.hosts[0];
    let b = &net.hosts[1];
    assert_eq!(
        a.table[&flow],
        FlowMapping {
            original: flow,
            current: tcp("10.0.2.7:40000", "10.0.9.2:5001"),
            hold: false
        }
    );
    let b_orig = flow.reversed();
    assert_eq!(b.table[&b_orig].current, tcp("10.0.9.2:5001", "10.0.2.7:40000"));
    assert!(!b.table[&b_orig].hold);
    // Both ends send their current ACK once the path is confirmed; the outage was one
    // round trip, far below a retransmission timeout: no duplicate-ACK burst.
    assert_eq!(a.nudges, vec![(flow, false)]);
    assert_eq!(b.nudges, vec![(b_orig, false)]);
    // The peer resends what it sent the mover's old address.
    assert_eq!(b.resends, vec![b_orig]);
    assert!(a.resends.is_empty());
    let completed = a
        .events
        .iter()
        .find_map(|e| match e {
            Event::MoveCompleted {
                elapsed,
                flows,
                retransmits,
                ..
            } => Some((*elapsed, *flows, *retransmits)),
            _ => None,
        })
        .expect("move completed");
    assert_eq!(
        completed,
        (Duration::from_millis(20), 1, 0),
        "one round trip, no retransmission"
    );
    assert_eq!(a.ep.counters().flows_moved, 1);
    assert_eq!(b.ep.counters().migrations_applied, 1);
    // The peer now knows the mover at its new address only.
    let pa = b.ep.peer(a.ep.node_id()).unwrap();
    assert_eq!(pa.control.ip(), ip("10.0.2.7"));
    assert!(!pa.addrs.contains(&ip("10.0.1.2")));
}

#[test]
fn lost_updates_are_retransmitted_with_exponential_backoff() {
    let (mut net, flow) = pair_with_flow();
    // Lose the first three Connection Updates.
    let mut lost = 0;
    net.lose = Box::new(move |t| {
        let is_cu = t.payload.get(1) == Some(&(MessageType::ConnectionUpdate as u8));
        if is_cu && lost < 3 {
            lost += 1;
            true
        } else {
            false
        }
    });
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    let a = &net.hosts[0];
    assert!(!a.table[&flow].hold, "confirmed in the end");
    let (elapsed, retransmits) = a
        .events
        .iter()
        .find_map(|e| match e {
            Event::MoveCompleted {
                elapsed, retransmits, ..
            } => Some((*elapsed, *retransmits)),
            _ => None,
        })
        .unwrap();
    assert_eq!(retransmits, 3);
    // RTO 3 * 20 ms = 60 ms, doubling: 60 + 120 + 240, then a 20 ms round trip.
    assert_eq!(elapsed, Duration::from_millis(60 + 120 + 240 + 20));
    assert_eq!(a.ep.counters().retransmits, 3);
}

#[test]
fn an_unanswered_move_fails_after_bounded_attempts_and_releases_the_hold() {
    let (mut net, flow) = pair_with_flow();
    net.lose = Box::new(|t| t.payload.get(1) == Some(&(MessageType::ConnectionUpdate as u8)));
    let t0 = net.now;
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    let a = &net.hosts[0];
    let attempts = a.ep.config().max_update_attempts;
    assert_eq!(a.ep.counters().retransmits, u64::from(attempts - 1));
    assert!(
        a.events
            .iter()
            .any(|e| matches!(e, Event::MoveFailed { flows, .. } if flows == &vec![flow]))
    );
    assert!(
        !a.table[&flow].hold,
        "a failed move does not hold the flow forever"
    );
    assert_eq!(a.ep.counters().flows_move_failed, 1);
    assert!(net.now - t0 < Duration::from_secs(30), "bounded in time");
    assert!(net.nothing_pending(0), "nothing left to retry");
}

#[test]
fn a_duplicated_update_is_acknowledged_again_and_changes_nothing() {
    let (mut net, _) = moved_pair();
    let cu = net.first_delivered(MessageType::ConnectionUpdate);
    let b_table = net.hosts[1].table.clone();
    let applied = net.ep(1).counters().migrations_applied;
    // The same update again under a fresh nonce: a retransmission.
    let msg = net.read_as(1, &cu.payload);
    let payload = net.seal_as(0, 1, msg);
    net.input(
        1,
        Input::Datagram {
            local: cu.dst,
            remote: cu.src,
            payload: &payload,
        },
    );
    assert_eq!(net.hosts[1].table, b_table);
    assert_eq!(net.ep(1).counters().migrations_applied, applied);
    let acks = net
        .in_flight
        .iter()
        .filter(|(_, t)| t.payload[1] == MessageType::ConnectionUpdateAck as u8);
    assert_eq!(
        acks.count(),
        1,
        "answered again: the first answer may have been lost"
    );
}

#[test]
fn a_replayed_message_is_dropped_and_counted() {
    let (mut net, _) = moved_pair();
    let cu = net.first_delivered(MessageType::ConnectionUpdate);
    let before = net.hosts[1].table.clone();
    net.input(
        1,
        Input::Datagram {
            local: cu.dst,
            remote: sa("10.66.0.1:4791"),
            payload: &cu.payload,
        },
    );
    assert_eq!(net.ep(1).counters().drop_replay, 1);
    assert_eq!(net.hosts[1].table, before);
    assert!(net.in_flight.is_empty(), "no answer to a replay");
}

#[test]
fn malformed_and_unauthenticated_datagrams_are_counted_and_change_nothing() {
    let (mut net, _) = pair_with_flow();
    let before_flows: Vec<Flow> = net.ep(1).flows().cloned().collect();
    let local = sa("10.0.9.2:4791");
    let remote = sa("10.66.0.1:4791");
    for junk in [
        &b""[..],
        b"\x01",
        &[0xff; 64],
        &[
            1, 5, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ],
    ] {
        net.input(
            1,
            Input::Datagram {
                local,
                remote,
                payload: junk,
            },
        );
    }
    // A well-formed update for B's real session with A, sealed under a key the forger
    // made up: an off-path attacker who saw the session index.
    let spi = net.ep(1).peers[&net.ep(0).node_id()].session.unwrap();
    let m = migration("10.0.1.2:40000", "10.66.0.1:40000", "10.0.9.2:5001");
    let forged = update(net.ep(0).node_id(), 99, m)
        .seal(spi, &SessionKey::new([9; 32]))
        .unwrap();
    net.deliver(1, "10.0.9.2:4791", "10.66.0.1:4791", &forged);
    let c = net.ep(1).counters();
    assert_eq!(c.drop_malformed, 4);
    assert_eq!(c.drop_bad_auth, 1);
    assert!(net.hosts[1].table.is_empty());
    let after: Vec<Flow> = net.ep(1).flows().cloned().collect();
    assert_eq!(format!("{before_flows:?}"), format!("{after:?}"));
    assert!(net.in_flight.is_empty());
}

#[test]
fn an_update_from_an_unknown_sender_is_dropped() {
    let (mut net, _) = pair_with_flow();
    let m = migration("10.0.1.2:40000", "10.66.0.1:40000", "10.0.9.2:5001");
    let msg = update(NodeId::new(0xBAD).unwrap(), 1, m)
        .seal(0xdead_beef, &SessionKey::new([1; 32]))
        .unwrap();
    net.deliver(1, "10.0.9.2:4791", "10.66.0.1:4791", &msg);
    assert_eq!(net.ep(1).counters().drop_unknown_session, 1);
    assert!(net.hosts[1].table.is_empty());
}

#[test]
fn a_peer_cannot_move_a_flow_it_does_not_share() {
    let (mut net, _) = pair_with_flow();
    // A claims a flow B has with someone else.
    net.input(1, Input::FlowOpened(tcp("10.0.9.2:22", "10.0.5.5:33333")));
    let m = migration("10.0.5.5:33333", "10.0.1.2:33333", "10.0.9.2:22");
    let msg = update(net.ep(0).node_id(), 500, m);
    let msg = net.seal_as(0, 1, msg);
    net.deliver(1, "10.0.9.2:4791", "10.0.1.2:4791", &msg);
    assert_eq!(net.ep(1).counters().migrations_unknown_flow, 1);
    assert!(net.hosts[1].table.is_empty());
}

#[test]
fn two_quick_moves_end_at_the_second_address_on_both_hosts() {
    let (mut net, flow) = pair_with_flow();
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    // Second move 5 ms later, before the first update is even delivered.
    net.sleep(Duration::from_millis(5));
    net.move_host(0, "10.0.2.7", "10.0.3.9");
    net.drive();
    assert_eq!(net.hosts[0].table[&flow].current.local, sa("10.0.3.9:40000"));
    assert!(!net.hosts[0].table[&flow].hold);
    assert_eq!(
        net.hosts[1].table[&flow.reversed()].current.remote,
        sa("10.0.3.9:40000")
    );
    // The late first update must not undo the second: B applied, in order.
    assert_eq!(net.ep(0).counters().flows_moved, 1);
}

#[test]
fn an_old_update_overtaken_by_a_newer_one_is_not_applied() {
    let (mut net, flow) = pair_with_flow();
    // Make the first update slow: hold it back and deliver it after the second.
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    let first = net.in_flight.remove(0).1;
    net.move_host(0, "10.0.2.7", "10.0.3.9");
    net.drive();
    net.input(
        1,
        Input::Datagram {
            local: first.dst,
            remote: first.src,
            payload: &first.payload,
        },
    );
    assert_eq!(net.ep(1).counters().migrations_stale, 1);
    assert_eq!(
        net.hosts[1].table[&flow.reversed()].current.remote,
        sa("10.0.3.9:40000")
    );
}

#[test]
fn an_update_request_is_answered_with_a_connection_update() {
    let (mut net, flow) = moved_pair();
    let a_id = net.ep(0).node_id();
    let sent = net.delivered.len();
    net.input(
        1,
        Input::RequestUpdate {
            peer: a_id,
            at: sa("10.0.2.7:4791"),
        },
    );
    net.drive();
    let types: Vec<u8> = net.delivered[sent..].iter().map(|t| t.payload[1]).collect();
    assert_eq!(
        types,
        vec![
            MessageType::ConnectionUpdateRequest as u8,
            MessageType::ConnectionUpdate as u8,
            MessageType::ConnectionUpdateAck as u8
        ]
    );
    assert_eq!(net.ep(0).counters().update_requests_answered, 1);
    assert_eq!(
        net.hosts[1].table[&flow.reversed()].current.remote,
        sa("10.0.2.7:40000")
    );
}

#[test]
fn a_host_that_does_not_run_roam_is_left_alone() {
    let mut net = Net::new(2);
    net.add_address(0, "10.0.1.2");
    // Nobody answers at 10.0.9.2.
    let flow = tcp("10.0.1.2:40000", "10.0.9.2:80");
    net.input(0, Input::FlowOpened(flow));
    net.drive();
    let a = &net.hosts[0];
    assert_eq!(a.ep.flow(&flow).unwrap().peer, FlowPeer::NotRoam);
    assert!(a.events.contains(&Event::PeerNotCapable { addr: ip("10.0.9.2") }));
    assert_eq!(a.ep.counters().registrations_failed, 1);
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    assert!(
        net.hosts[0].table.is_empty(),
        "no translation for a flow nobody can move"
    );
    assert_eq!(net.ep(0).counters().flows_stranded, 1);
}

#[test]
fn each_move_message_kind_moves_the_flow() {
    for kind in [
        MoveMessage::ConnectionUpdate,
        MoveMessage::MigrationRequest,
        MoveMessage::AddressChange,
    ] {
        let mut net = Net::new(2);
        net.hosts[0].ep.config.move_message = kind;
        net.add_address(0, "10.0.1.2");
        net.add_address(1, "10.0.9.2");
        let flows = [
            tcp("10.0.1.2:40000", "10.0.9.2:5001"),
            Tuple::new(Protocol::Udp, sa("10.0.1.2:5353"), sa("10.0.9.2:53")),
        ];
        for f in flows {
            net.input(0, Input::FlowOpened(f));
            net.input(1, Input::FlowOpened(f.reversed()));
        }
        net.drive();
        net.move_host(0, "10.0.1.2", "10.0.2.7");
        net.drive();
        for f in flows {
            assert!(!net.hosts[0].table[&f].hold, "{kind:?}: {f}");
            assert_eq!(
                net.hosts[1].table[&f.reversed()].current.remote.ip(),
                ip("10.0.2.7"),
                "{kind:?}"
            );
        }
        assert_eq!(net.ep(0).counters().flows_moved, 2, "{kind:?}");
        assert_eq!(net.hosts[0].nudges.len(), 1, "only TCP flows are nudged");
        assert_eq!(net.hosts[1].resends.len(), 1, "only TCP flows are resent");
    }
}

#[test]
fn a_flow_waits_held_while_no_address_of_its_family_exists() {
    let (mut net, flow) = pair_with_flow();
    net.remove_address(0, "10.0.1.2");
    assert!(net.hosts[0].table[&flow].hold, "held while DHCP runs");
    net.sleep(Duration::from_millis(500));
    assert!(
        net.delivered
            .iter()
            .all(|t| t.payload[1] != MessageType::ConnectionUpdate as u8)
    );
    net.add_address(0, "10.0.2.7");
    net.drive();
    assert_eq!(net.hosts[0].table[&flow].current.local, sa("10.0.2.7:40000"));
    assert!(!net.hosts[0].table[&flow].hold);
}

#[test]
fn moving_back_to_the_original_address_removes_the_translation() {
    let (mut net, flow) = moved_pair();
    net.move_host(0, "10.0.2.7", "10.0.1.2");
    net.drive();
    assert!(!net.hosts[0].table.contains_key(&flow), "identity needs no entry");
    assert!(net.hosts[1].table.is_empty());
}

#[test]
fn an_ingress_conflict_gets_a_fresh_remote_port_and_an_egress_one_a_fresh_local_port() {
    let (mut net, flow) = moved_pair();
    let clash = ingress_clash(&mut net, flow);
    let remap = net.hosts[1]
        .table
        .values()
        .find(|m| m.current == clash)
        .copied()
        .expect("remap installed");
    assert_eq!(remap.original.local, clash.local);
    assert_eq!(remap.original.remote.ip(), clash.remote.ip());
    assert_ne!(remap.original.remote.port(), clash.remote.port());
    assert!(!remap.hold);
    assert_eq!(net.ep(1).counters().conflicts_resolved, 1);
    // Egress: A's stack opens a new flow whose tuple is the moved flow's current tuple.
    let moved_current = net.hosts[0].table[&flow].current;
    net.input(
        0,
        Input::Conflict {
            direction: ConflictDirection::Egress,
            tuple: moved_current,
        },
    );
    let e = net.hosts[0].table[&moved_current];
    assert_eq!(e.current.local.ip(), moved_current.local.ip());
    assert_ne!(e.current.local.port(), moved_current.local.port());
}

#[test]
fn a_closed_translated_flow_is_terminated_at_the_peer() {
    let (mut net, flow) = moved_pair();
    net.input(0, Input::FlowClosed(flow));
    assert!(net.hosts[0].table.is_empty());
    net.drive();
    assert!(net.hosts[1].table.is_empty(), "the peer dropped its entry");
    assert_eq!(net.ep(1).counters().terminations_applied, 1);
    assert!(net.nothing_pending(0), "termination acknowledged");
}

#[test]
fn a_long_outage_makes_both_ends_trigger_a_fast_retransmit() {
    let (mut net, flow) = pair_with_flow();
    // DHCP takes 300 ms: longer than `nudge_after`, so the senders are likely in back-off.
    net.remove_address(0, "10.0.1.2");
    net.sleep(Duration::from_millis(300));
    net.add_address(0, "10.0.2.7");
    net.drive();
    assert_eq!(net.hosts[0].nudges, vec![(flow, true)]);
    assert_eq!(net.hosts[1].nudges, vec![(flow.reversed(), true)]);
    // The update told the peer how long the outage was.
    let cu = net.first_delivered(MessageType::ConnectionUpdate);
    assert_eq!(net.read_as(1, &cu.payload).outage_ms(), Some(300));
}

#[test]
fn sequence_numbers_compare_across_wraparound() {
    assert!(seq_newer(1, 0));
    assert!(seq_newer(0, 0xffff));
    assert!(!seq_newer(0xffff, 0));
    assert!(!seq_newer(5, 5));
}

// ---- found by review of the state machine: each fixed, each kept fixed ----

#[test]
fn an_update_naming_no_flow_does_not_give_the_peer_an_address() {
    let (mut net, _) = pair_with_flow();
    let a_id = net.ep(0).node_id();
    // A "moves" a flow B does not have to 10.0.5.5, a host that does not run roam.
    let m = Migration::new(
        ProtoFlags::TCP,
        sa("10.0.1.2:1"),
        sa("10.0.5.5:1"),
        sa("10.0.9.2:2"),
    )
    .unwrap();
    let msg = net.seal_as(0, 1, update(a_id, 700, m));
    net.deliver(1, "10.0.9.2:4791", "10.0.1.2:4791", &msg);
    assert_eq!(net.ep(1).counters().migrations_unknown_flow, 1);
    let pa = net.ep(1).peer(a_id).unwrap();
    assert!(!pa.addrs.contains(&ip("10.0.5.5")));
    assert!(
        pa.addrs.contains(&ip("10.0.1.2")),
        "the address A proved stays A's"
    );
    // B's application connects to 10.0.5.5: that flow is not A's, and A cannot move it.
    let victim = tcp("10.0.9.2:50000", "10.0.5.5:443");
    net.input(1, Input::FlowOpened(victim));
    assert_ne!(net.ep(1).flow(&victim).unwrap().peer, FlowPeer::Peer(a_id));
    let w = Migration::new(
        ProtoFlags::ALL,
        sa("10.0.5.5:0"),
        sa("10.0.1.2:0"),
        sa("0.0.0.0:0"),
    )
    .unwrap();
    let msg = net.seal_as(0, 1, update(a_id, 701, w));
    net.deliver(1, "10.0.9.2:4791", "10.0.1.2:4791", &msg);
    assert_eq!(
        net.ep(1).flow(&victim).unwrap().current.remote,
        sa("10.0.5.5:443")
    );
}

#[test]
fn hitting_the_message_limit_rekeys_once_without_spinning_the_timer() {
    let (mut net, _) = pair_with_flow();
    let b_id = net.ep(1).node_id();
    let limit = net.ep(0).config().rekey_after_messages;
    for s in net.hosts[0].ep.sessions.values_mut() {
        s.sent = limit - 1;
    }
    net.lose = Box::new(|_| true);
    // The next sealed message reaches the limit: a rekey is due at once.
    net.hosts[0].ep.request_update(net.now, b_id, sa("10.0.9.2:4791"));
    let now = net.now;
    assert!(net.ep(0).poll_timeout().is_some_and(|t| t <= now));
    net.input(0, Input::Timeout);
    assert!(
        net.ep(0).poll_timeout().is_some_and(|t| t > now),
        "once the rekey started, the timer looks ahead"
    );
    assert_eq!(
        net.ep(0)
            .initiating
            .values()
            .filter(|i| i.rekey_of == Some(b_id))
            .count(),
        1
    );
}

#[test]
fn a_termination_never_gives_two_flows_one_current_tuple() {
    let (mut net, flow) = moved_pair();
    // A third host at A's old address and port starts a flow to B: B remaps it.
    let clash = ingress_clash(&mut net, flow);
    net.input(0, Input::FlowClosed(flow));
    net.drive();
    let same = net.ep(1).flows().filter(|f| f.current == clash).count();
    assert!(same <= 1, "{same} flows share one current tuple");
}

#[test]
fn a_lost_termination_never_turns_into_one_for_every_flow() {
    let mut net = Net::new(2);
    net.add_address(0, "10.0.1.2");
    net.add_address(1, "10.0.9.2");
    let f1 = tcp("10.0.1.2:40000", "10.0.9.2:5001");
    let x = tcp("10.0.1.2:40001", "10.0.9.2:5001");
    for f in [f1, x] {
        net.input(0, Input::FlowOpened(f));
        net.input(1, Input::FlowOpened(f.reversed()));
    }
    net.drive();
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    assert_eq!(net.hosts[1].table.len(), 2);
    let mut lost = false;
    net.lose = Box::new(move |t| {
        if t.payload[1] == MessageType::Termination as u8 && !lost {
            lost = true;
            return true;
        }
        false
    });
    net.input(0, Input::FlowClosed(x));
    // The stack reports the same tuple again (a late packet), then it goes again.
    net.input(0, Input::FlowOpened(x));
    net.input(0, Input::FlowClosed(x));
    net.drive();
    assert!(
        net.hosts[1].table.contains_key(&f1.reversed()),
        "f1 still moved at B"
    );
    assert!(
        !net.hosts[1].table.contains_key(&x.reversed()),
        "x terminated at B"
    );
}

#[test]
fn an_update_request_from_an_unproven_address_does_not_move_control() {
    let (mut net, _) = pair_with_flow();
    let b_id = net.ep(1).node_id();
    let req = Message::new(Header::new(MessageType::ConnectionUpdateRequest, b_id, 9, 0));
    let msg = net.seal_as(1, 0, req);
    net.deliver(0, "10.0.1.2:4791", "10.66.0.1:4791", &msg);
    assert_eq!(net.ep(0).peer(b_id).unwrap().control, sa("10.0.9.2:4791"));
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    assert_eq!(net.ep(0).counters().flows_moved, 1);
    assert_eq!(net.ep(0).counters().budget_refusals, 0);
}

#[test]
fn other_requests_do_not_make_a_later_update_look_stale() {
    let (mut net, flow) = moved_pair();
    let b_id = net.ep(1).node_id();
    // Many terminations, challenges and requests used sequence numbers meanwhile.
    let p = net.hosts[0].ep.peers.get_mut(&b_id).unwrap();
    p.next_seq = p.next_seq.wrapping_add(40000);
    net.move_host(0, "10.0.2.7", "10.0.3.9");
    net.drive();
    assert_eq!(net.ep(1).counters().migrations_stale, 0);
    assert_eq!(
        net.hosts[1].table[&flow.reversed()].current.remote,
        sa("10.0.3.9:40000")
    );
}

#[test]
fn a_flow_closed_mid_move_does_not_leave_an_empty_update() {
    let (mut net, flow) = pair_with_flow();
    net.lose = Box::new(|t| t.payload[1] == MessageType::ConnectionUpdate as u8);
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.input(0, Input::FlowClosed(flow));
    let b_id = net.ep(1).node_id();
    assert!(net.ep(0).peers[&b_id].update.is_none());
    net.drive();
    assert!(
        !net.hosts[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::MoveFailed { flows, .. } if flows.is_empty())),
        "no failure of nothing"
    );
}

#[test]
fn handshakes_that_cross_still_measure_the_round_trip_on_both_sides() {
    // Both hosts see the flow at once and each starts a handshake (pair_with_flow).
    let (net, _) = pair_with_flow();
    let (a, b) = (net.ep(0), net.ep(1));
    assert_eq!(a.peer(b.node_id()).unwrap().srtt, Some(Duration::from_millis(20)));
    assert_eq!(b.peer(a.node_id()).unwrap().srtt, Some(Duration::from_millis(20)));
}

#[test]
fn a_restored_entry_that_clashes_or_mixes_families_is_refused() {
    let (mut net, flow) = pair_with_flow();
    let other = tcp("10.0.1.2:40001", "10.0.9.2:5001");
    // Its current tuple is the live flow's.
    net.input(
        0,
        Input::Restore(FlowMapping {
            original: other,
            current: flow,
            hold: false,
        }),
    );
    // IPv4 original, IPv6 current.
    let v6 = Tuple::new(Protocol::Tcp, sa("[2001:db8::1]:40002"), sa("[2001:db8::2]:5001"));
    let mixed = tcp("10.0.1.2:40002", "10.0.9.2:5001");
    net.input(
        0,
        Input::Restore(FlowMapping {
            original: mixed,
            current: v6,
            hold: false,
        }),
    );
    assert!(net.ep(0).flow(&other).is_none());
    assert!(net.ep(0).flow(&mixed).is_none());
    assert_eq!(net.ep(0).counters().restore_refused, 2);
}

// ---- the peer's nudge waits until the mover has released its hold ----

/// The message types of the datagrams in flight, in the order they will arrive.
fn in_flight_types(net: &Net) -> Vec<MessageType> {
    let mut v: Vec<&(Instant, Transmit)> = net.in_flight.iter().collect();
    // Stable: datagrams due at the same time keep their send order, as `drive` does.
    v.sort_by_key(|(at, _)| *at);
    v.iter()
        .map(|(_, t)| MessageType::from_u8(t.payload[1]).expect("a known type"))
        .collect()
}

#[test]
fn the_peer_nudges_on_the_movers_answer_to_its_challenge_not_when_it_applies_the_move() {
    let (mut net, flow) = pair_with_flow();
    let b_flow = flow.reversed();
    let lat = net.latency;
    for (from, to, proven) in [
        ("10.0.1.2", "10.0.2.7", false),
        // Back to the address of the handshake: proven already, challenged all the same.
        ("10.0.2.7", "10.0.1.2", true),
    ] {
        let b_nudges = net.hosts[1].nudges.len();
        let b_limits = net.hosts[1].limits.len();
        let validated = net.ep(1).counters().paths_validated;
        let t0 = net.now;
        net.move_host(0, from, to);
        assert_eq!(in_flight_types(&net), vec![MessageType::ConnectionUpdate]);
        // B applies the move: its answer, then a challenge to the new address, and no
        // nudge yet (the mover still holds the flow: what it would send now is lost).
        net.drive_until(t0 + lat);
        let b = &net.hosts[1];
        assert_eq!(b.ep.flow(&b_flow).unwrap().current.remote.ip(), ip(to));
        assert_eq!(b.nudges.len(), b_nudges, "{to}: no nudge on applying the move");
        assert_eq!(
            in_flight_types(&net),
            vec![MessageType::ConnectionUpdateAck, MessageType::PathChallenge],
            "{to}: the answer goes first, so the mover answers the challenge once released"
        );
        // A releases on the answer, then echoes the challenge.
        net.drive_until(t0 + lat * 2);
        assert!(
            net.hosts[0].table.get(&flow).is_none_or(|m| !m.hold),
            "{to}: released"
        );
        assert_eq!(in_flight_types(&net), vec![MessageType::PathResponse]);
        assert_eq!(net.hosts[1].nudges.len(), b_nudges, "{to}: still no nudge");
        // The echo arrives: now B nudges.
        net.drive_until(t0 + lat * 3);
        let b = &net.hosts[1];
        assert_eq!(
            b.nudges[b_nudges..],
            [(b_flow, false)],
            "{to}: one nudge, on the echo"
        );
        // Only an address that had not proven itself was budgeted, and counts as validated.
        let limits = &b.limits[b_limits..];
        if proven {
            assert!(
                limits.is_empty(),
                "{to}: a proven address gets no budget: {limits:?}"
            );
            assert_eq!(net.ep(1).counters().paths_validated, validated);
        } else {
            assert_eq!(limits.len(), 2, "{to}: {limits:?}");
            assert!(matches!(limits[0], DataPlaneCommand::Unvalidated { remote, .. } if remote == ip(to)));
            assert_eq!(limits[1], DataPlaneCommand::Validated { remote: ip(to) });
            assert_eq!(net.ep(1).counters().paths_validated, validated + 1);
        }
        net.drive();
        assert_eq!(net.hosts[1].nudges.len(), b_nudges + 1, "{to}: nudged once");
    }
    assert_eq!(net.ep(1).counters().path_challenges, 2, "one challenge per move");
    assert_eq!(
        net.ep(1).counters().path_rechecks,
        1,
        "the move back is a recheck"
    );
    assert_eq!(net.ep(1).counters().path_rechecks_unanswered, 0);
}

#[test]
fn the_mover_nudges_its_own_stack_a_settle_after_answering_the_peers_challenge() {
    let (mut net, flow) = pair_with_flow();
    let lat = net.latency;
    let settle = net.ep(0).config().nudge_settle;
    let t0 = net.now;
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    // The answer and the challenge reach A one latency after B applied the move: A
    // releases on the answer but does not nudge yet (B still budgets the new address,
    // and would drop the retransmission A's ACK asks of it) ...
    net.drive_until(t0 + lat * 2);
    assert!(net.hosts[0].table.get(&flow).is_some_and(|m| !m.hold), "released");
    assert_eq!(in_flight_types(&net), vec![MessageType::PathResponse]);
    assert!(net.hosts[0].nudges.is_empty(), "no nudge at the confirmation");
    // ... and nudges `settle` after its echo, when B has lifted the budget.
    net.drive_until(t0 + lat * 2 + (settle - Duration::from_millis(1)));
    assert!(net.hosts[0].nudges.is_empty(), "not before the settle time");
    net.drive_until(t0 + lat * 2 + settle);
    assert_eq!(
        net.hosts[0].nudges,
        vec![(flow, false)],
        "one nudge, after the settle time"
    );
    net.drive();
    assert_eq!(net.hosts[0].nudges.len(), 1, "nudged once");
}

#[test]
fn without_a_challenge_the_mover_still_nudges_one_timeout_after_the_confirmation() {
    let (mut net, flow) = pair_with_flow();
    net.lose = Box::new(|t| t.payload[1] == MessageType::PathChallenge as u8);
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    assert_eq!(net.hosts[0].nudges, vec![(flow, false)]);
}

#[test]
fn an_unanswered_check_of_a_proven_address_leaves_the_flows_there_without_a_nudge() {
    let (mut net, flow) = moved_pair();
    let b_flow = flow.reversed();
    // Back to the proven 10.0.1.2; every challenge from now on is lost.
    net.lose = Box::new(|t| t.payload[1] == MessageType::PathChallenge as u8);
    let b_limits = net.hosts[1].limits.len();
    let b_nudges = net.hosts[1].nudges.len();
    net.move_host(0, "10.0.2.7", "10.0.1.2");
    net.drive();
    let b = &net.hosts[1];
    let max = b.ep.config().max_path_challenges;
    assert_eq!(
        b.ep.counters().path_challenges,
        1 + u64::from(max),
        "retried, then given up"
    );
    assert_eq!(
        b.ep.flow(&b_flow).unwrap().current.remote,
        sa("10.0.1.2:40000"),
        "not reverted"
    );
    assert!(b.ep.flow(&b_flow).unwrap().nudge_deferred.is_none(), "forgotten");
    assert_eq!(b.nudges.len(), b_nudges, "no sign of a release: no nudge");
    assert_eq!(b.ep.counters().paths_failed, 0);
    assert_eq!(b.ep.counters().path_rechecks, 1);
    assert_eq!(b.ep.counters().path_rechecks_unanswered, 1, "counted");
    assert!(b.limits[b_limits..].is_empty(), "no budget, no Unreachable");
    assert!(!b.events.iter().any(|e| matches!(e, Event::PathFailed { .. })));
    assert!(
        b.ep.peer(net.ep(0).node_id())
            .unwrap()
            .is_validated(ip("10.0.1.2"))
    );
}

#[test]
fn an_unanswered_challenge_of_a_new_address_sends_the_flows_back() {
    let (mut net, flow) = pair_with_flow();
    let b_flow = flow.reversed();
    net.lose = Box::new(|t| t.payload[1] == MessageType::PathChallenge as u8);
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    let b = &net.hosts[1];
    assert_eq!(b.table.get(&b_flow), None, "back on its original tuple: no entry");
    assert_eq!(b.ep.flow(&b_flow).unwrap().current, b_flow);
    assert!(b.nudges.is_empty());
    assert_eq!(b.ep.counters().paths_failed, 1);
    assert_eq!(
        (
            b.ep.counters().path_rechecks,
            b.ep.counters().path_rechecks_unanswered
        ),
        (0, 0),
        "a new address is no recheck"
    );
    assert_eq!(
        b.limits.last(),
        Some(&DataPlaneCommand::Unreachable {
            remote: ip("10.0.2.7")
        })
    );
}

#[test]
fn a_handshake_from_a_challenged_address_lifts_its_budget_and_the_challenge_goes_on() {
    let (mut net, flow) = pair_with_flow();
    let b_flow = flow.reversed();
    let b_id = net.ep(1).node_id();
    // B's first challenge to A's new address is lost; before B sends it again, A rekeys
    // from there (a restart would handshake from there too).
    let mut lost = false;
    net.lose = Box::new(move |t| {
        let challenge = t.payload[1] == MessageType::PathChallenge as u8;
        let lose = challenge && !lost;
        lost |= challenge;
        lose
    });
    let t0 = net.now;
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive_until(t0 + net.latency);
    assert!(net.hosts[1].unvalidated.contains(&ip("10.0.2.7")), "budgeted");
    net.hosts[0].ep.peers.get_mut(&b_id).unwrap().next_rekey = net.now;
    net.input(0, Input::Timeout);
    net.drive();
    let b = &net.hosts[1];
    assert_eq!(b.ep.counters().sessions_rekeyed, 1, "a new session");
    // The handshake proved the address: its budget is lifted, and what B sent to the
    // old address goes again.
    assert_eq!(b.limits.len(), 2, "{:?}", b.limits);
    assert!(matches!(b.limits[0], DataPlaneCommand::Unvalidated { remote, .. } if remote == ip("10.0.2.7")));
    assert_eq!(
        b.limits[1],
        DataPlaneCommand::Validated {
            remote: ip("10.0.2.7")
        }
    );
    assert!(b.unvalidated.is_empty());
    assert_eq!(b.resends, [b_flow]);
    // The challenge went on (sealed under the new session) and its answer let the
    // nudge go.
    assert_eq!(b.ep.counters().path_challenges, 2);
    assert_eq!(b.nudges.iter().map(|(f, _)| *f).collect::<Vec<_>>(), [b_flow]);
    let f = b.ep.flow(&b_flow).unwrap();
    assert_eq!(f.current.remote, sa("10.0.2.7:40000"));
    assert_eq!(
        (f.validating, f.nudge_deferred),
        (None, None),
        "nothing left waiting"
    );
}

#[test]
fn a_late_copy_of_a_lost_finish_is_no_round_trip_sample() {
    let mut net = Net::new(2);
    // The first Handshake Finish is lost: the responder gets the session from the copy
    // that goes with the initiator's next sealed message, a second later.
    let mut lost = false;
    net.lose = Box::new(move |t| {
        let fin = t.payload[1] == MessageType::HandshakeFinish as u8;
        let lose = fin && !lost;
        lost |= fin;
        lose
    });
    net.add_address(0, "10.0.1.2");
    net.add_address(1, "10.0.9.2");
    let flow = tcp("10.0.1.2:40000", "10.0.9.2:5001");
    // A alone sees the flow at first: one handshake, A's.
    net.input(0, Input::FlowOpened(flow));
    net.sleep(Duration::from_secs(1));
    net.input(1, Input::FlowOpened(flow.reversed()));
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    net.drive();
    let (a, b) = (net.ep(0), net.ep(1));
    assert!(
        a.peer(b.node_id()).is_some() && b.peer(a.node_id()).is_some(),
        "registered"
    );
    for (h, other) in [(a, b), (b, a)] {
        let srtt = h.peer(other.node_id()).unwrap().srtt;
        assert!(
            srtt.is_none_or(|s| s < Duration::from_millis(100)),
            "a 20 ms path measured as {srtt:?}"
        );
    }
    assert_eq!(
        net.ep(0).flow(&flow).unwrap().moving_since,
        None,
        "the move completed"
    );
}

/// A and B with `n` TCP flows between them (A's ports 20000 up), registered, moved
/// with `kind`.
fn pair_with_flows(n: u16, kind: MoveMessage) -> (Net, Vec<Tuple>) {
    let mut net = Net::with_config(2, |_, c| c.move_message = kind);
    net.add_address(0, "10.0.1.2");
    net.add_address(1, "10.0.9.2");
    let flows: Vec<Tuple> = (0..n)
        .map(|i| tcp(&format!("10.0.1.2:{}", 20000 + i), "10.0.9.2:5001"))
        .collect();
    for f in &flows {
        net.input(0, Input::FlowOpened(*f));
        net.input(1, Input::FlowOpened(f.reversed()));
    }
    net.drive();
    (net, flows)
}

#[test]
fn a_connection_update_of_thousands_of_flows_completes_one_round_trip_after_the_echo() {
    for kind in [MoveMessage::ConnectionUpdate, MoveMessage::MigrationRequest] {
        let (mut net, flows) = pair_with_flows(3000, kind);
        net.move_host(0, "10.0.1.2", "10.0.2.7");
        net.drive();
        let (a, b) = (&net.hosts[0], &net.hosts[1]);
        for f in &flows {
            let m = a.table[f];
            assert_eq!(
                (m.current.local.ip(), m.hold),
                (ip("10.0.2.7"), false),
                "{kind:?}"
            );
            assert_eq!(b.table[&f.reversed()].current.remote.ip(), ip("10.0.2.7"));
        }
        assert_eq!(a.ep.counters().flows_moved, 3000, "{kind:?}");
        assert_eq!(a.ep.counters().flows_move_failed, 0);
        // Some 100 datagrams of one update: one update to the rate limit.
        assert_eq!(b.ep.counters().drop_rate_limited, 0);
        // Only a dozen answers fit the new address's budget; the others waited for its
        // echo, and the one challenge was echoed (no token replaced per datagram).
        assert!(b.ep.counters().answers_deferred > 50, "{kind:?}");
        assert_eq!(b.ep.counters().budget_refusals, 0);
        assert_eq!(b.ep.counters().paths_validated, 1);
        assert_eq!(b.ep.counters().drop_unexpected_reply, 0);
        let completed = a.events.iter().find_map(|e| match e {
            Event::MoveCompleted {
                flows,
                elapsed,
                retransmits,
                ..
            } => Some((*flows, *elapsed, *retransmits)),
            _ => None,
        });
        // The answers that fit: one round trip; the rest: the challenge's round trip on
        // top. No retransmission.
        assert_eq!(completed, Some((3000, Duration::from_millis(40), 0)), "{kind:?}");
    }
}

#[test]
fn distinct_updates_beyond_the_burst_are_rate_limited_and_parts_of_one_only_as_far_as_its_flows_go() {
    let (mut net, flow) = pair_with_flow();
    let a_id = net.ep(0).node_id();
    let send = |net: &mut Net, seq: u16| {
        let m = update(
            a_id,
            seq,
            migration("10.0.1.2:40000", "10.0.1.2:40000", "10.0.9.2:5001"),
        );
        let payload = net.seal_as(0, 1, m);
        net.deliver(1, "10.0.9.2:4791", "10.0.1.2:4791", &payload);
    };
    // 300 different updates at one instant: the burst (twice 100 per second) passes.
    for seq in 1..=300 {
        send(&mut net, seq);
    }
    assert_eq!(net.ep(1).counters().drop_rate_limited, 100);
    // A second later (100 tokens back): 300 datagrams of one update. One flow is
    // shared, so a copy of the update is two datagrams at most, and the mover makes
    // 16 copies at most: 32 pass as its parts, the first and the rest take tokens.
    net.sleep(Duration::from_secs(1));
    for _ in 0..300 {
        send(&mut net, 400);
    }
    assert_eq!(net.ep(1).counters().drop_rate_limited, 100 + 300 - 1 - 32 - 99);
    assert!(
        !net.hosts[1].table.contains_key(&flow.reversed()),
        "nothing moved"
    );
}

#[test]
fn a_route_change_sends_the_outstanding_update_again_at_once_twice_at_most() {
    let (mut net, flow) = pair_with_flow();
    // The first update leaves by a route that is gone (lost).
    let mut lost = false;
    net.lose = Box::new(move |t| {
        let first_cu = !lost && t.payload.get(1) == Some(&(MessageType::ConnectionUpdate as u8));
        lost |= first_cu;
        first_cu
    });
    net.move_host(0, "10.0.1.2", "10.0.2.7");
    let cus = |net: &Net| {
        net.in_flight
            .iter()
            .filter(|(_, t)| t.payload[1] == MessageType::ConnectionUpdate as u8)
            .count()
    };
    assert_eq!(cus(&net), 0, "lost");
    net.sleep(Duration::from_millis(2));
    net.input(0, Input::RoutesChanged);
    assert_eq!(cus(&net), 1, "sent again at once");
    net.input(0, Input::RoutesChanged);
    net.input(0, Input::RoutesChanged);
    assert_eq!(cus(&net), 2, "twice at most");
    assert_eq!(net.ep(0).counters().route_resends, 2);
    net.drive();
    assert_eq!(net.hosts[0].table[&flow].current.local, sa("10.0.2.7:40000"));
    let completed = net.hosts[0].events.iter().find_map(|e| match e {
        Event::MoveCompleted {
            elapsed, retransmits, ..
        } => Some((*elapsed, *retransmits)),
        _ => None,
    });
    // A round trip after the route change, not a timeout; no back-off.
    assert_eq!(completed, Some((Duration::from_millis(22), 0)));
    let b = net.ep(1).node_id();
    assert_eq!(
        net.ep(0).peer(b).unwrap().srtt,
        Some(Duration::from_millis(20)),
        "an answer to one of two copies is no sample (Karn)"
    );
    // Both copies arrived and were answered: the second answer is a duplicate, not
    // an unexpected reply (which `roam status` lists among the drops).
    assert_eq!(net.ep(0).counters().duplicate_replies, 1);
    assert_eq!(net.ep(0).counters().drop_unexpected_reply, 0);
    // Nothing outstanding: a route change sends nothing.
    net.input(0, Input::RoutesChanged);
    assert!(net.in_flight.is_empty());
}
