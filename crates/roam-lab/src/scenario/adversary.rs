//! Strangers on the control port, and strangers at the far end of a connection.
//!
//! - `control-garbage`: a third host on the path (the router R) sends A's and B's roamd
//!   malformed datagrams, well-formed sealed messages it cannot have sealed, handshake
//!   messages with garbage in them, and genuine control datagrams recorded on B's link,
//!   replayed or reflected. Each datagram is built by hand from docs/PROTOCOL.md (the
//!   lab links no roam crate, so this tests the specification as much as the daemon)
//!   and has the one counter it must land in. The run checks that every counter rose by
//!   exactly what was sent, that nothing was accepted, and that peers, flows and the
//!   kernel's translation table are as they were; then A moves again, which must work.
//! - `peer-without-roam`: B runs no roamd, like any server on the Internet. A's
//!   handshake to it goes unanswered, so A takes B for a host without roam (seed 000
//!   FIG. 21, step 2112: "the remote peer is flagged as not VC enhanced, and no further
//!   virtual connectivity messages are sent"), leaves the flow alone and counts it. The
//!   flow breaks at the move, as plain TCP does (that is expected, and reported as
//!   such), and a new connection after the move works.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use etherparse::{SlicedPacket, TransportSlice};
use serde_json::Value;

use super::{Run, StreamReport, check};
use crate::capture::Protocol;
use crate::netns::{LabError, Ns, NsThread};
use crate::sys::{self, PacketOptions, PacketSocket};
use crate::topology::{ADDRESSES, B_IF, DOWN, LinkId, Subnet};
use crate::traffic::{Pattern, TcpSink, TcpSource};

// ---- the wire, from docs/PROTOCOL.md ----

/// "Common header (24 bytes; seed 001 FIG. 5)".
const HEADER_LEN: usize = 24;
const VERSION: u8 = 1;
/// Header Flags bit 0: everything between the header and the authentication extension
/// is ciphertext.
const PROTECTED: u8 = 0x01;
/// The authentication extension as it ends every sealed message: type 1, flags 0,
/// length 20, then SPI (4) and tag (16).
const AUTH_PREFIX: [u8; 4] = [0x01, 0x00, 0x00, 0x14];
const AUTH_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Message types ("Message types").
const CONNECTION_UPDATE: u8 = 5;
const TERMINATION: u8 = 13;
const PATH_CHALLENGE: u8 = 15;
const HANDSHAKE_INIT: u8 = 0x40;
const HANDSHAKE_RESPONSE: u8 = 0x41;
const HANDSHAKE_FINISH: u8 = 0x42;
const COOKIE_REPLY: u8 = 0x43;

/// Extension types ("Extensions").
const EXT_NOISE: u8 = 8;
const EXT_SENDER_INDEX: u8 = 9;
const EXT_RECEIVER_INDEX: u8 = 10;
const EXT_COOKIE: u8 = 11;

/// Handshake Inits and Finishes a responder takes from one source address: 10 a second,
/// bursts of 20 (docs/PROTOCOL.md, "Handshakes"). The attack stays under the burst, so
/// that every datagram reaches the check it is meant for rather than the rate limit.
const HANDSHAKE_BURST: usize = 20;

/// A header for a message of `total` bytes.
fn header(kind: u8, flags: u8, sequence: u16, total: usize, sender: [u8; 6], replay: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(total.max(HEADER_LEN));
    h.extend_from_slice(&[VERSION, kind, 0, flags]);
    h.extend_from_slice(&sequence.to_be_bytes());
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&sender);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&replay.to_be_bytes());
    h
}

/// One extension: type, flags (0), length, body.
fn tlv(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut t = vec![kind, 0];
    t.extend_from_slice(&(body.len() as u16).to_be_bytes());
    t.extend_from_slice(body);
    t
}

/// A message in clear (the handshake framing): the header, then `extensions`.
fn clear(kind: u8, sender: [u8; 6], sequence: u16, extensions: &[Vec<u8>]) -> Vec<u8> {
    let total = HEADER_LEN + extensions.iter().map(Vec::len).sum::<usize>();
    // The Replay Protect ID of a handshake message carries timestamps; any value will do.
    let mut m = header(kind, 0, sequence, total, sender, 1 << 32);
    for e in extensions {
        m.extend_from_slice(e);
    }
    m
}

/// A sealed message R cannot have sealed: `body` bytes of noise where the ciphertext
/// goes, then the authentication extension with `spi` and a random tag.
fn forged_sealed(
    kind: u8,
    sender: [u8; 6],
    replay: u64,
    spi: u32,
    body: usize,
    rng: &mut Pattern,
) -> Vec<u8> {
    let total = HEADER_LEN + body + AUTH_LEN;
    let mut m = header(kind, PROTECTED, 7, total, sender, replay);
    let mut noise = vec![0u8; body];
    rng.fill(&mut noise);
    m.extend_from_slice(&noise);
    m.extend_from_slice(&AUTH_PREFIX);
    m.extend_from_slice(&spi.to_be_bytes());
    let mut tag = [0u8; TAG_LEN];
    rng.fill(&mut tag);
    m.extend_from_slice(&tag);
    m
}

/// A control message as the codec frames it, read just far enough to classify and
/// replay it.
struct Framed<'a> {
    kind: u8,
    sealed: bool,
    bytes: &'a [u8],
}

impl<'a> Framed<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Framed<'a>> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([bytes[6], bytes[7]]));
        (total == bytes.len()).then_some(Framed {
            kind: bytes[1],
            sealed: bytes[3] & PROTECTED != 0,
            bytes,
        })
    }

    /// The receiver's session index, in clear in every sealed message.
    fn spi(&self) -> Option<u32> {
        let at = self.bytes.len().checked_sub(AUTH_LEN)?;
        (self.sealed && at >= HEADER_LEN && self.bytes[at..at + 4] == AUTH_PREFIX)
            .then(|| u32::from_be_bytes(self.bytes[at + 4..at + 8].try_into().expect("4 bytes")))
    }

    /// A u32 extension (Sender or Receiver Index) of a message in clear.
    fn index(&self, kind: u8) -> Option<u32> {
        if self.sealed {
            return None;
        }
        let mut rest = &self.bytes[HEADER_LEN..];
        while rest.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let body = rest.get(4..4 + len)?;
            if rest[0] == kind && len == 4 {
                return Some(u32::from_be_bytes(body.try_into().expect("4 bytes")));
            }
            rest = &rest[4 + len..];
        }
        None
    }

    /// The same message with another Replay Protect ID. The header is associated data
    /// of the AEAD, so a sealed message changed so no longer verifies.
    fn with_replay_id(&self, replay: u64) -> Vec<u8> {
        let mut m = self.bytes.to_vec();
        m[16..24].copy_from_slice(&replay.to_be_bytes());
        m
    }
}

// ---- recording genuine control datagrams ----

/// A control datagram seen on a link.
#[derive(Clone, Debug)]
struct Tapped {
    /// Sent by the namespace the tap is in (rather than received by it).
    outgoing: bool,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// Records, whole, every UDP datagram to or from the control port on one interface
/// (the run's capture keeps headers only).
struct ControlTap {
    stop: Arc<AtomicBool>,
    thread: NsThread<Result<Vec<Tapped>, LabError>>,
}

impl ControlTap {
    /// Datagrams kept at most (a handshake and a move take a dozen).
    const MAX: usize = 256;

    fn start(ns: &Ns, interface: &str, port: u16) -> Result<ControlTap, LabError> {
        let context = format!("control tap on {interface}");
        let options = PacketOptions {
            ignore_outgoing: false,
            timestamps: false,
            receive_buffer: 8 << 20,
        };
        // Bound to the interface of `ns` from here on, whichever thread reads it.
        let socket = ns
            .run(|| PacketSocket::open(interface, &options))?
            .map_err(|e| LabError::io(context.clone(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            ns.spawn_thread("control tap", move || {
                tap(&socket, port, &stop).map_err(|e| LabError::io(context, e))
            })?
        };
        Ok(ControlTap { stop, thread })
    }

    fn stop(self) -> Result<Vec<Tapped>, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join()?
    }
}

fn tap(socket: &PacketSocket, port: u16, stop: &AtomicBool) -> io::Result<Vec<Tapped>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [sys::pollfd(std::os::fd::AsRawFd::as_raw_fd(socket))];
        sys::poll(&mut fds, Duration::from_millis(20))?;
        while let Some(r) = socket.recv(&mut buf)? {
            let frame = &buf[..r.len.min(buf.len())];
            let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
                continue;
            };
            let Some(TransportSlice::Udp(udp)) = &packet.transport else {
                continue;
            };
            if udp.source_port() != port && udp.destination_port() != port {
                continue;
            }
            let (src, dst): (IpAddr, IpAddr) = match &packet.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => (
                    ip.header().source_addr().into(),
                    ip.header().destination_addr().into(),
                ),
                Some(etherparse::NetSlice::Ipv6(ip)) => (
                    ip.header().source_addr().into(),
                    ip.header().destination_addr().into(),
                ),
                _ => continue,
            };
            if kept.len() < ControlTap::MAX {
                kept.push(Tapped {
                    outgoing: r.pkttype == sys::PACKET_OUTGOING,
                    src: SocketAddr::new(src, udp.source_port()),
                    dst: SocketAddr::new(dst, udp.destination_port()),
                    payload: udp.payload().to_vec(),
                });
            }
        }
    }
    Ok(kept)
}

// ---- the attack ----

/// Where a datagram must end up in the target's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    /// `drop_malformed`: not a well-formed control message.
    Malformed,
    /// `drop_unknown_session`: sealed under a session index the target never gave.
    UnknownSession,
    /// `drop_bad_auth`: sealed under the target's real session, but the tag fails.
    BadAuth,
    /// `drop_replay`: a genuine sealed message the target already had.
    Replay,
    /// `drop_unexpected_reply`: the target's own message sent back to it.
    Reflected,
    /// `drop_bad_handshake`: a handshake message that does not verify or matches no
    /// handshake.
    BadHandshake,
    /// `handshakes_answered`: an Init whose ephemeral key is 32 random bytes. Noise XX's
    /// first message is an unauthenticated ephemeral key, so a responder cannot tell it
    /// from a real one: it answers (one Diffie-Hellman, rate limited per source) and
    /// forgets the handshake when no valid Finish comes.
    Answered,
    /// A genuine handshake message replayed: an Init is answered as above, a Response or
    /// Finish of a handshake that is over counts as `handshake_duplicates` (or
    /// `drop_bad_handshake` once forgotten). Never a session.
    HandshakeReplay,
}

impl Expect {
    fn counter(self) -> &'static str {
        match self {
            Expect::Malformed => "drop_malformed",
            Expect::UnknownSession => "drop_unknown_session",
            Expect::BadAuth => "drop_bad_auth",
            Expect::Replay => "drop_replay",
            Expect::Reflected => "drop_unexpected_reply",
            Expect::BadHandshake => "drop_bad_handshake",
            Expect::Answered => "handshakes_answered",
            Expect::HandshakeReplay => "handshakes_answered + handshake_duplicates + drop_bad_handshake",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Expect::Malformed => "malformed",
            Expect::UnknownSession => "forged under an unknown session",
            Expect::BadAuth => "forged or altered under its real session",
            Expect::Replay => "genuine, replayed",
            Expect::Reflected => "its own, reflected",
            Expect::BadHandshake => "garbage handshake messages",
            Expect::Answered => "handshake Init(s) with a random ephemeral key",
            Expect::HandshakeReplay => "genuine handshake messages, replayed",
        }
    }
}

struct Probe {
    what: &'static str,
    payload: Vec<u8>,
    expect: Expect,
}

#[derive(Default)]
struct Probes(Vec<Probe>);

impl Probes {
    fn add(&mut self, what: &'static str, payload: Vec<u8>, expect: Expect) {
        self.0.push(Probe {
            what,
            payload,
            expect,
        });
    }
}

/// Everything R sends one host.
struct Target {
    host: &'static str,
    /// The host's control socket.
    to: SocketAddr,
    /// R's address on the host's side.
    from: IpAddr,
    probes: Vec<Probe>,
    /// The Sender Index of the Init with a random ephemeral key: the target answers it,
    /// and R then sends a garbage Finish for that handshake.
    answered_init: u32,
    sender: [u8; 6],
}

impl Target {
    fn handshake_messages(&self) -> usize {
        // Plus the Finish sent after the answer.
        1 + self
            .probes
            .iter()
            .filter(|p| matches!(p.payload.get(1), Some(&HANDSHAKE_INIT | &HANDSHAKE_FINISH)))
            .filter(|p| p.payload.len() >= HEADER_LEN && p.payload[3] & PROTECTED == 0)
            .count()
    }
}

/// What R sent one host and what came back.
#[derive(Debug, Default)]
struct Sent {
    by_expect: BTreeMap<Expect, u64>,
    datagrams: u64,
    /// Handshake Responses the host sent R.
    responses: u64,
    /// The garbage Finish for the answered Init went out.
    finished_answered: bool,
}

fn random_u32(rng: &mut Pattern, avoid: &BTreeSet<u32>) -> u32 {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b);
        let v = u32::from_be_bytes(b);
        if !avoid.contains(&v) {
            return v;
        }
    }
}

fn random_sender(rng: &mut Pattern, avoid: &[[u8; 6]]) -> [u8; 6] {
    loop {
        let mut b = [0u8; 6];
        rng.fill(&mut b);
        if !avoid.contains(&b) {
            return b;
        }
    }
}

/// A node identifier as the status prints it (12 hex digits) in header byte order.
fn node_bytes(status: &Value) -> Option<[u8; 6]> {
    let v = u64::from_str_radix(status["node"].as_str()?, 16).ok()?;
    v.to_be_bytes()[2..8].try_into().ok()
}

/// The probes for one host. `to_it`: genuine datagrams it received; `from_it`: genuine
/// datagrams it sent.
fn plan(
    host: &'static str,
    to: SocketAddr,
    from: IpAddr,
    ids: &[[u8; 6]],
    to_it: &[&Tapped],
    from_it: &[&Tapped],
    rng: &mut Pattern,
) -> Result<Target, LabError> {
    // Not the identifier of A or B: a message in the target's own name is dropped as a
    // reflection (`drop_unexpected_reply`), whatever else is wrong with it.
    let sender = random_sender(rng, ids);
    // Session indices R has seen on the wire for this host: the forgeries that must
    // find no session avoid them.
    let mut known: BTreeSet<u32> = BTreeSet::new();
    for t in to_it {
        if let Some(f) = Framed::parse(&t.payload) {
            known.extend(f.spi());
            known.extend(f.index(EXT_RECEIVER_INDEX));
        }
    }
    for t in from_it {
        if let Some(f) = Framed::parse(&t.payload) {
            known.extend(f.index(EXT_SENDER_INDEX));
        }
    }
    let genuine_sealed: Vec<Framed<'_>> = to_it
        .iter()
        .filter_map(|t| Framed::parse(&t.payload))
        .filter(|f| f.sealed && f.spi().is_some())
        .collect();
    let Some(first_sealed) = genuine_sealed.first() else {
        return Err(LabError::Invalid(format!(
            "no sealed control message to {host} was seen on B's link: nothing to replay"
        )));
    };
    let real_spi = first_sealed.spi().expect("filtered");
    let own_sealed = from_it
        .iter()
        .filter_map(|t| Framed::parse(&t.payload))
        .find(|f| f.sealed)
        .ok_or_else(|| LabError::Invalid(format!("no sealed control message from {host} was seen")))?;

    let mut probes = malformed(sender, real_spi, rng);
    probes.extend(unauthenticated(sender, &known, real_spi, first_sealed, rng));
    probes.extend(replayed(&genuine_sealed, &own_sealed, to_it));
    let (garbage, answered_init) = garbage_handshakes(sender, &known, rng);
    probes.extend(garbage);
    let target = Target {
        host,
        to,
        from,
        probes,
        answered_init,
        sender,
    };
    if target.handshake_messages() > HANDSHAKE_BURST {
        return Err(LabError::Invalid(format!(
            "the attack on {host} has {} handshake messages, over the rate limit's burst",
            target.handshake_messages()
        )));
    }
    Ok(target)
}

/// (a) Malformed: each refused by the codec before any key is looked at.
fn malformed(sender: [u8; 6], real_spi: u32, rng: &mut Pattern) -> Vec<Probe> {
    let mut probes = Probes::default();
    // docs/PROTOCOL.md gives the order: length, Version, Type, reserved bits, Total
    // Length, then the framing.
    let sealed_update = forged_sealed(CONNECTION_UPDATE, sender, 1 << 40, real_spi, 28, rng);
    probes.add("empty datagram", Vec::new(), Expect::Malformed);
    probes.add("one byte", vec![VERSION], Expect::Malformed);
    probes.add(
        "a header cut at 23 bytes",
        sealed_update[..23].to_vec(),
        Expect::Malformed,
    );
    let mut m = sealed_update.clone();
    m[0] = 2;
    probes.add("version 2", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[0] = 0;
    probes.add("version 0", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[1] = 0x20;
    probes.add("unknown type 0x20", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[1] = 0x44;
    probes.add("reserved type 0x44", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[3] |= 0x80;
    probes.add("reserved header flag set", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[15] = 1;
    probes.add("reserved header bytes not zero", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[6..8].copy_from_slice(&((sealed_update.len() + 4) as u16).to_be_bytes());
    probes.add("total length longer than the datagram", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m.truncate(sealed_update.len() - 1);
    probes.add("datagram shorter than its total length", m, Expect::Malformed);
    let mut m = sealed_update.clone();
    m[3] = 0;
    probes.add("a sealed type without PROTECTED", m, Expect::Malformed);
    let init = clear(
        HANDSHAKE_INIT,
        sender,
        9,
        &[tlv(EXT_SENDER_INDEX, &[0, 0, 0, 1]), tlv(EXT_NOISE, &[0x55; 32])],
    );
    let mut m = init.clone();
    m[3] = PROTECTED;
    probes.add("a handshake Init with PROTECTED", m, Expect::Malformed);
    let mut m = header(PATH_CHALLENGE, PROTECTED, 3, 40, sender, 1 << 40);
    m.resize(40, 0xaa);
    probes.add(
        "sealed, too short for the authentication extension",
        m,
        Expect::Malformed,
    );
    let mut m = sealed_update.clone();
    let at = m.len() - AUTH_LEN;
    m[at] = 0x02;
    probes.add("sealed, no authentication extension last", m, Expect::Malformed);
    for (i, len) in [17usize, 200, 1232].into_iter().enumerate() {
        let mut m = vec![0u8; len];
        rng.fill(&mut m);
        let what = ["17 random bytes", "200 random bytes", "1232 random bytes"][i];
        probes.add(what, m, Expect::Malformed);
    }
    // Messages in clear whose extensions break the rules: the codec refuses them after
    // the per-source rate limit (which they count against) and before any handshake
    // state.
    probes.add(
        "a handshake Init without its Noise extension",
        clear(HANDSHAKE_INIT, sender, 9, &[tlv(EXT_SENDER_INDEX, &[0, 0, 0, 2])]),
        Expect::Malformed,
    );
    probes.add(
        "a handshake Init with a 3-byte Sender Index",
        clear(
            HANDSHAKE_INIT,
            sender,
            9,
            &[tlv(EXT_SENDER_INDEX, &[0, 0, 3]), tlv(EXT_NOISE, &[0x55; 32])],
        ),
        Expect::Malformed,
    );
    probes.add(
        "a handshake Init with an unknown mandatory extension",
        clear(
            HANDSHAKE_INIT,
            sender,
            9,
            &[
                tlv(EXT_SENDER_INDEX, &[0, 0, 0, 4]),
                tlv(EXT_NOISE, &[0x55; 32]),
                tlv(50, &[1, 2]),
            ],
        ),
        Expect::Malformed,
    );
    let mut m = clear(HANDSHAKE_INIT, sender, 9, &[tlv(EXT_SENDER_INDEX, &[0, 0, 0, 5])]);
    m.extend_from_slice(&[EXT_NOISE, 0, 0, 40, 1, 2, 3, 4]);
    let total = m.len() as u16;
    m[6..8].copy_from_slice(&total.to_be_bytes());
    probes.add("a handshake Init whose extension overruns", m, Expect::Malformed);

    probes.0
}

/// (b) Well-formed but unauthenticated: sealed under a session index the target never
/// gave, or under its real one (`genuine`'s) with a tag that cannot verify.
fn unauthenticated(
    sender: [u8; 6],
    known: &BTreeSet<u32>,
    real_spi: u32,
    genuine: &Framed<'_>,
    rng: &mut Pattern,
) -> Vec<Probe> {
    let mut probes = Probes::default();
    for (kind, what) in [
        (CONNECTION_UPDATE, "a Connection Update under a made-up session"),
        (PATH_CHALLENGE, "a Path Challenge under a made-up session"),
        (TERMINATION, "a Termination under a made-up session"),
    ] {
        let spi = random_u32(rng, known);
        let m = forged_sealed(kind, sender, 1 << 40, spi, 28, rng);
        probes.add(what, m, Expect::UnknownSession);
    }
    // Under the real session index, with fresh nonces (the replay window is checked
    // first; a fresh nonce gets to the tag check).
    probes.add(
        "a Connection Update under its real session, random ciphertext and tag",
        forged_sealed(CONNECTION_UPDATE, sender, 1 << 40, real_spi, 28, rng),
        Expect::BadAuth,
    );
    probes.add(
        "a genuine message with a new Replay Protect ID",
        genuine.with_replay_id((1 << 40) + 1),
        Expect::BadAuth,
    );
    let mut m = genuine.with_replay_id((1 << 40) + 2);
    m[HEADER_LEN] ^= 0x01;
    probes.add(
        "a genuine message with one ciphertext bit flipped",
        m,
        Expect::BadAuth,
    );
    let mut m = genuine.with_replay_id((1 << 40) + 3);
    m[8..14].copy_from_slice(&sender);
    probes.add("a genuine message claiming another sender", m, Expect::BadAuth);
    let mut m = genuine.with_replay_id((1 << 40) + 4);
    let last = m.len() - 1;
    m[last] ^= 0x80;
    probes.add("a genuine message with its tag altered", m, Expect::BadAuth);

    probes.0
}

/// (c) Genuine datagrams recorded on B's link, sent again from R: those the target
/// received, and one it sent itself.
fn replayed(genuine_sealed: &[Framed<'_>], own_sealed: &Framed<'_>, to_it: &[&Tapped]) -> Vec<Probe> {
    let mut probes = Probes::default();
    let mut seen = BTreeSet::new();
    for f in genuine_sealed {
        if seen.insert(f.bytes.to_vec()) {
            probes.add(
                "a genuine sealed message, replayed",
                f.bytes.to_vec(),
                Expect::Replay,
            );
        }
    }
    probes.add(
        "its own sealed message, sent back to it",
        own_sealed.bytes.to_vec(),
        Expect::Reflected,
    );
    // Handshake messages: one of each distinct one (a retransmitted Init differs only in
    // its timestamps, and the second copy would count as a retransmission).
    let mut seen = BTreeSet::new();
    for f in to_it
        .iter()
        .filter_map(|t| Framed::parse(&t.payload))
        .filter(|f| !f.sealed)
    {
        if seen.insert((f.kind, f.bytes[HEADER_LEN..].to_vec())) {
            probes.add(
                "a genuine handshake message, replayed",
                f.bytes.to_vec(),
                Expect::HandshakeReplay,
            );
        }
    }

    probes.0
}

/// Handshake messages with garbage in them, and the Sender Index of the Init with a
/// random ephemeral key, which the target answers.
fn garbage_handshakes(sender: [u8; 6], known: &BTreeSet<u32>, rng: &mut Pattern) -> (Vec<Probe>, u32) {
    let mut probes = Probes::default();
    let short = random_u32(rng, known);
    probes.add(
        "a handshake Init with a 5-byte Noise message",
        clear(
            HANDSHAKE_INIT,
            sender,
            9,
            &[
                tlv(EXT_SENDER_INDEX, &short.to_be_bytes()),
                tlv(EXT_NOISE, &[1, 2, 3, 4, 5]),
            ],
        ),
        Expect::BadHandshake,
    );
    let answered_init = random_u32(rng, known);
    let mut e = [0u8; 32];
    rng.fill(&mut e);
    probes.add(
        "a handshake Init with a random ephemeral key",
        clear(
            HANDSHAKE_INIT,
            sender,
            10,
            &[
                tlv(EXT_SENDER_INDEX, &answered_init.to_be_bytes()),
                tlv(EXT_NOISE, &e),
            ],
        ),
        Expect::Answered,
    );
    let mut garbage = vec![0u8; 64];
    rng.fill(&mut garbage);
    for (kind, what) in [
        (HANDSHAKE_FINISH, "a handshake Finish for no handshake"),
        (HANDSHAKE_RESPONSE, "a handshake Response to no Init"),
        (COOKIE_REPLY, "a Cookie Reply to no Init"),
    ] {
        let index = random_u32(rng, known);
        let mut exts = vec![tlv(EXT_RECEIVER_INDEX, &index.to_be_bytes())];
        match kind {
            HANDSHAKE_RESPONSE => {
                let theirs = random_u32(rng, known);
                exts.insert(0, tlv(EXT_SENDER_INDEX, &theirs.to_be_bytes()));
                exts.push(tlv(EXT_NOISE, &garbage));
            }
            COOKIE_REPLY => exts.push(tlv(EXT_COOKIE, &garbage[..16])),
            _ => exts.push(tlv(EXT_NOISE, &garbage)),
        }
        probes.add(what, clear(kind, sender, 11, &exts), Expect::BadHandshake);
    }
    (probes.0, answered_init)
}

/// Sends every probe of `target` from R (the calling thread is in R's namespace), then
/// a garbage Finish for the handshake the target answered.
fn attack(target: &Target, rng: &mut Pattern) -> io::Result<Sent> {
    let socket = UdpSocket::bind(SocketAddr::new(target.from, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut sent = Sent::default();
    let mut answer: Option<u32> = None;
    let mut buf = [0u8; 2048];
    let mut receive = |sent: &mut Sent, answer: &mut Option<u32>| {
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            let Some(f) = Framed::parse(&buf[..n]) else {
                continue;
            };
            if f.kind == HANDSHAKE_RESPONSE {
                sent.responses += 1;
                if f.index(EXT_RECEIVER_INDEX) == Some(target.answered_init) {
                    *answer = f.index(EXT_SENDER_INDEX);
                }
            }
        }
    };
    for p in &target.probes {
        socket.send_to(&p.payload, target.to)?;
        sent.datagrams += 1;
        *sent.by_expect.entry(p.expect).or_default() += 1;
        // Paced: a burst would only measure the socket buffers.
        std::thread::sleep(Duration::from_millis(3));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while answer.is_none() && Instant::now() < deadline {
        receive(&mut sent, &mut answer);
    }
    if let Some(theirs) = answer {
        let mut noise = vec![0u8; 64];
        rng.fill(&mut noise);
        let fin = clear(
            HANDSHAKE_FINISH,
            target.sender,
            10,
            &[
                tlv(EXT_RECEIVER_INDEX, &theirs.to_be_bytes()),
                tlv(EXT_NOISE, &noise),
            ],
        );
        socket.send_to(&fin, target.to)?;
        sent.datagrams += 1;
        *sent.by_expect.entry(Expect::BadHandshake).or_default() += 1;
        sent.finished_answered = true;
    }
    // Answers to the replayed Inits, if still on their way.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        receive(&mut sent, &mut answer);
    }
    Ok(sent)
}

// ---- reading roamd and the kernel ----

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}

fn daemon_counter(status: &Value, name: &str) -> u64 {
    status["daemon"][name].as_u64().unwrap_or(0)
}

/// The parts of the status the attack must not change: each peer (its addresses,
/// control address, flows, last move) and each flow (its tuples, peer, state).
fn roam_state(status: &Value) -> Value {
    let peers: Vec<Value> = status["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    serde_json::json!({
                        "node": p["node"], "control": p["control"], "addresses": p["addresses"],
                        "flows": p["flows"], "last_move_at_s": p["last_move_at_s"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({ "peers": peers, "flows": status["flows"] })
}

/// What roam's data plane keeps in the kernel of `ns`, without what changes by itself.
///
/// - `nftables`: roam's table, without packet and byte counts, quota use, and elements
///   with a timeout (drain aliases of a move, which expire on their own). What is left
///   is the translation: every flow's chains and map entries.
/// - `tun`: the translation table is roamd's own (its status's flows, compared apart);
///   the kernel holds what steers the flows' packets through roamd: routing rules
///   (`ip rule`) and filters on every interface's ingress (`tc filter`). A drain alias
///   (a diversion that expires on its own) exists only once a flow has moved twice,
///   never at its first move.
fn kernel_state(ns: &Ns, data_plane: &str) -> Result<Value, LabError> {
    if data_plane == "nftables" {
        return nft_table(ns);
    }
    let mut state = serde_json::Map::new();
    for family in ["-4", "-6"] {
        let rules = ns.exec(&["ip", family, "rule", "list"])?.stdout;
        state.insert(format!("ip {family} rule"), rules.into());
    }
    for interface in interfaces(ns)? {
        let filters = ns
            .exec(&["tc", "filter", "show", "dev", &interface, "ingress"])?
            .stdout;
        state.insert(format!("tc filter {interface} ingress"), filters.into());
    }
    Ok(Value::Object(state))
}

fn nft_table(ns: &Ns) -> Result<Value, LabError> {
    let out = ns.exec(&["nft", "-j", "list", "table", "inet", "roam"])?;
    let mut v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| LabError::Invalid(format!("nft -j printed something else: {e}")))?;
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for k in ["packets", "bytes", "used", "expires", "metainfo"] {
                    o.remove(k);
                }
                if let Some(Value::Array(elems)) = o.get_mut("elem") {
                    elems.retain(|e| {
                        e.pointer("/0/elem/timeout").is_none() && e.pointer("/elem/timeout").is_none()
                    });
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    if let Some(Value::Array(items)) = v.get_mut("nftables") {
        items.retain(|i| i.as_object().is_some_and(|o| !o.is_empty()));
    }
    Ok(v)
}

/// The names of the interfaces in `ns`.
fn interfaces(ns: &Ns) -> Result<Vec<String>, LabError> {
    let out = ns.exec(&["ip", "-j", "link", "show"])?;
    let links: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| LabError::Invalid(format!("ip -j printed something else: {e}")))?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect())
}

/// Flow entries roam's data plane keeps in the kernel of `ns`: the map elements of
/// roam's nftables table (none if there is no table), or `ip rule`s other than the
/// kernel's own (the TUN plane routes each translated flow's original tuple by one).
pub(super) fn translation_entries(ns: &Ns, data_plane: &str) -> Result<usize, LabError> {
    if data_plane != "nftables" {
        return extra_rules(ns);
    }
    let out = ns.exec(&["nft", "-j", "list", "maps", "inet"])?;
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| LabError::Invalid(format!("nft -j printed something else: {e}")))?;
    Ok(v["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["map"]["table"] == "roam")
                .filter_map(|i| i["map"]["elem"].as_array().map(Vec::len))
                .sum()
        })
        .unwrap_or(0))
}

/// `ip rule`s in `ns`, both families, other than the kernel's own (lookup local, main,
/// default).
fn extra_rules(ns: &Ns) -> Result<usize, LabError> {
    let mut n = 0;
    for family in ["-4", "-6"] {
        let rules = ns.exec(&["ip", family, "rule", "list"])?.stdout;
        n += rules
            .lines()
            .filter(|l| {
                !["lookup local", "lookup main", "lookup default"]
                    .iter()
                    .any(|t| l.ends_with(t))
            })
            .count();
    }
    Ok(n)
}

/// Packets the data plane translated one `way` (`egress_translated`,
/// `ingress_translated`), from its counters in roamd's status: the kernel plane counts
/// packets and bytes, the TUN plane's packet logic packets.
fn translated_packets(status: &Value, way: &str) -> Option<u64> {
    let c = &status["data_plane_counters"];
    c[way]["packets"].as_u64().or_else(|| c["plane"][way].as_u64())
}

fn check_eq(run: &mut Run, what: String, expected: u64, observed: u64) {
    check(run, what, expected, observed, expected == observed);
}

// ---- control-garbage ----

/// The bulk stream is this many times the configured size: it has to outlast a move,
/// the attack and its snapshots, and a second move.
const STREAM_FACTOR: u64 = 3;

pub(super) fn control_garbage(run: &mut Run) -> Result<(), LabError> {
    if !run.options.roam {
        return Err(LabError::Invalid(
            "control-garbage needs roamd (drop --no-roam)".into(),
        ));
    }
    let family = run.family();
    let status_b = run
        .roamds
        .status("b")
        .ok_or_else(|| LabError::Invalid("no status from B".into()))?;
    let port = status_b["control_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| LabError::Invalid("B's status has no control port".into()))?;
    let tap = ControlTap::start(run.b(), B_IF, port)?;

    run.options.bytes *= STREAM_FACTOR;
    let (sink, source) = run.bulk(5005)?;
    run.wait_sessions()?;
    run.wait_sent(&source, 0.1)?;
    run.move_a()?;
    // The move's exchange is over (update, acknowledgment, B's challenge of A's new
    // address and its answer): from here on neither side has anything to say.
    run.roamds
        .wait_status("a", Duration::from_secs(10), |s| counter(s, "flows_moved") >= 1)?;
    run.roamds.wait_status("b", Duration::from_secs(10), |s| {
        counter(s, "migrations_applied") >= 1 && counter(s, "paths_validated") >= 1
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let captured = tap.stop()?;
    let quiet = SystemTime::now();
    let before = [
        run.roamds
            .wait_status_since("a", quiet, Duration::from_secs(5), |_| true)?,
        run.roamds
            .wait_status_since("b", quiet, Duration::from_secs(5), |_| true)?,
    ];
    let plane = run.options.data_plane.clone();
    let kernel_before = [kernel_state(run.a(), &plane)?, kernel_state(run.b(), &plane)?];

    // The attack plan, from what B's link carried.
    let ids: Vec<[u8; 6]> = before.iter().filter_map(node_bytes).collect();
    // Control datagrams between the two roamds only (control port to control port).
    let control = |t: &&Tapped| t.src.port() == port && t.dst.port() == port;
    let to_b: Vec<&Tapped> = captured.iter().filter(|t| !t.outgoing).filter(control).collect();
    let from_b: Vec<&Tapped> = captured.iter().filter(|t| t.outgoing).filter(control).collect();
    run.notes.push(format!(
        "recorded on B's link before the attack: {} control datagrams to B, {} from B",
        to_b.len(),
        from_b.len()
    ));
    let mut rng = Pattern::new(run.options.seed ^ 0xad0e_5a11);
    let a_addr = SocketAddr::new(run.topology.a_address(family), port);
    let b_addr = SocketAddr::new(run.topology.b_address(family), port);
    let r_on_a = match run.topology.a_subnet() {
        Subnet::One => ADDRESSES.router_subnet1.get(family),
        Subnet::Two => ADDRESSES.router_subnet2.get(family),
    };
    let r_on_b = ADDRESSES.router_b.get(family);
    let targets = [
        plan("a", a_addr, r_on_a, &ids, &from_b, &to_b, &mut rng)?,
        plan("b", b_addr, r_on_b, &ids, &to_b, &from_b, &mut rng)?,
    ];
    let a_link = if run.topology.a_subnet() == Subnet::One {
        LinkId::A1
    } else {
        LinkId::A2
    };
    let links = [a_link, LinkId::B];
    let queue_drops = |run: &Run| -> Vec<u64> {
        links
            .iter()
            .map(|l| run.topology.link(*l).counters(DOWN).dropped_queue)
            .collect()
    };
    for t in &targets {
        // What R sends, one line per datagram, next to roamd's logs.
        let listing: String = t
            .probes
            .iter()
            .map(|p| format!("{:?}\t{} bytes\t{}\n", p.expect, p.payload.len(), p.what))
            .collect();
        let _ = std::fs::write(run.dir.join(format!("attack-{}.txt", t.host)), listing);
    }
    let drops_before = queue_drops(run);
    let sent: Vec<Sent> = run
        .topology
        .router()
        .run(|| {
            targets
                .iter()
                .map(|t| attack(t, &mut rng))
                .collect::<io::Result<Vec<Sent>>>()
        })?
        .map_err(|e| LabError::io("sending from R", e))?;
    let attack_done = SystemTime::now();
    let drops_after = queue_drops(run);

    for (i, (target, sent)) in targets.iter().zip(&sent).enumerate() {
        let host = target.host;
        let was = &before[i];
        let expect = |e: Expect| sent.by_expect.get(&e).copied().unwrap_or(0);
        // Every datagram read (a genuine one would only add; none is due now).
        let received_before = daemon_counter(was, "datagrams_received");
        let now = run
            .roamds
            .wait_status_since(host, attack_done, Duration::from_secs(5), |s| {
                daemon_counter(s, "datagrams_received") >= received_before + sent.datagrams
            })
            .or_else(|_| {
                run.roamds
                    .wait_status_since(host, attack_done, Duration::from_secs(3), |_| true)
            })?;
        let delta = |name: &str| counter(&now, name).saturating_sub(counter(was, name));
        check_eq(
            run,
            format!("{host}: attack datagrams read by roamd"),
            sent.datagrams,
            daemon_counter(&now, "datagrams_received") - received_before,
        );
        for e in [
            Expect::Malformed,
            Expect::UnknownSession,
            Expect::BadAuth,
            Expect::Replay,
            Expect::Reflected,
        ] {
            check_eq(
                run,
                format!(
                    "{host}: {} ({} of them) -> {}",
                    e.describe(),
                    expect(e),
                    e.counter()
                ),
                expect(e),
                delta(e.counter()),
            );
        }
        let handshake =
            expect(Expect::BadHandshake) + expect(Expect::Answered) + expect(Expect::HandshakeReplay);
        let handled =
            delta("drop_bad_handshake") + delta("handshakes_answered") + delta("handshake_duplicates");
        check_eq(
            run,
            format!(
                "{host}: handshake messages ({} garbage, {} with a random key, {} replayed) -> answered + duplicates + drop_bad_handshake",
                expect(Expect::BadHandshake),
                expect(Expect::Answered),
                expect(Expect::HandshakeReplay)
            ),
            handshake,
            handled,
        );
        check(
            run,
            format!("{host}: garbage handshake messages -> drop_bad_handshake"),
            format!("at least {}", expect(Expect::BadHandshake)),
            delta("drop_bad_handshake"),
            delta("drop_bad_handshake") >= expect(Expect::BadHandshake),
        );
        check(
            run,
            format!("{host}: the Init with a random key was answered, and its garbage Finish dropped"),
            "a Response to R, then the Finish sent",
            format!(
                "{} Response(s) to R; Finish {}",
                sent.responses,
                if sent.finished_answered {
                    "sent"
                } else {
                    "not sent (no answer)"
                }
            ),
            sent.responses >= 1 && sent.finished_answered,
        );
        check_eq(
            run,
            format!("{host}: drop_rate_limited"),
            0,
            delta("drop_rate_limited"),
        );
        // Nothing the attacker sent was accepted, and no state moved.
        let unchanged = [
            "messages_accepted",
            "handshakes_completed",
            "peers_registered",
            "sessions_rekeyed",
            "migrations_applied",
            "migrations_refused",
            "migrations_unknown_flow",
            "migrations_stale",
            "flows_moved",
            "path_challenges",
            "paths_validated",
            "terminations_applied",
            "update_requests_answered",
            "drop_untrusted_key",
        ];
        let moved: Vec<String> = unchanged
            .iter()
            .filter(|c| delta(c) != 0)
            .map(|c| format!("{c} +{}", delta(c)))
            .collect();
        check(
            run,
            format!("{host}: nothing accepted ({})", unchanged.join(", ")),
            "all unchanged",
            if moved.is_empty() {
                "all unchanged".to_owned()
            } else {
                moved.join(", ")
            },
            moved.is_empty(),
        );
        let same = roam_state(was) == roam_state(&now);
        check(
            run,
            format!("{host}: peers and flows in roamd's status"),
            "unchanged",
            if same { "unchanged" } else { "changed" },
            same,
        );
        let ns = if host == "a" { run.a() } else { run.b() };
        let kernel = kernel_state(ns, &plane)?;
        let same = kernel == kernel_before[i];
        // Both kept next to roamd's logs (with --keep, or when the run fails).
        for (when, state) in [("before", &kernel_before[i]), ("after", &kernel)] {
            let _ = std::fs::write(
                run.dir.join(format!("kernel-{host}-{when}.json")),
                serde_json::to_string_pretty(state).unwrap_or_default(),
            );
        }
        check(
            run,
            format!(
                "{host}: the kernel's translation state ({})",
                if plane == "nftables" {
                    "nft, inet roam"
                } else {
                    "ip rules, tc ingress filters"
                }
            ),
            "unchanged",
            if same {
                "unchanged"
            } else {
                "changed (both kept in the logs directory)"
            },
            same,
        );
        let kinds: Vec<String> = sent
            .by_expect
            .iter()
            .map(|(e, n)| format!("{n} {}", e.describe()))
            .collect();
        run.notes.push(format!(
            "R ({}) sent {host}'s roamd at {} {} datagrams: {}; {host} answered {} handshake Init(s) with a Response (Noise XX's responder cannot tell a random ephemeral key from a real one: one Diffie-Hellman, rate limited per source, forgotten after 3 s)",
            target.from,
            target.to,
            sent.datagrams,
            kinds.join(", "),
            sent.responses
        ));
    }
    let queue: u64 = drops_after.iter().zip(&drops_before).map(|(a, b)| a - b).sum();
    if queue > 0 {
        run.notes.push(format!(
            "the links' queues dropped {queue} frame(s) during the attack (the bulk stream's; an attack datagram among them would show in the 'read by roamd' checks)"
        ));
    }

    // The move after the attack must work like the one before it.
    if source.sent() >= run.options.bytes {
        return Err(LabError::Invalid(
            "the stream had ended before the second move: too short for this machine".into(),
        ));
    }
    run.move_a()?;
    run.roamds
        .wait_status("a", Duration::from_secs(10), |s| counter(s, "flows_moved") >= 2)?;
    run.notes.push(format!(
        "the stream was {STREAM_FACTOR} times the configured size, to outlast the attack between the moves"
    ));
    run.finish_bulk("bulk a->b", sink, source)
}

// ---- peer-without-roam ----

pub(super) fn peer_without_roam(run: &mut Run) -> Result<(), LabError> {
    if !run.options.roam {
        return Err(LabError::Invalid(
            "peer-without-roam needs roamd on A (drop --no-roam)".into(),
        ));
    }
    let family = run.family();
    let status_a = run
        .roamds
        .status("a")
        .ok_or_else(|| LabError::Invalid("no status from A".into()))?;
    let port = status_a["control_port"].as_u64().unwrap_or(0);
    // B is an ordinary server: no roamd, nothing of roam in its kernel (no nftables
    // table, no routing rule), nothing on the control port.
    if !run.roamds.stop("b")? {
        return Err(LabError::Invalid("roamd on b did not stop on SIGTERM".into()));
    }
    // B is to look like a host that never ran roam: no status either.
    let _ = std::fs::remove_file(run.roamds.status_path("b"));
    let table = run
        .b()
        .exec(&["nft", "list", "tables"])?
        .stdout
        .contains("table inet roam");
    let rules = extra_rules(run.b())?;
    let sockets = run.b().exec(&["ss", "-H", "-u", "-l", "-n"])?.stdout;
    let listening = sockets.lines().any(|l| l.contains(&format!(":{port} ")));
    check(
        run,
        "b: runs no roam (roamd stopped before any connection)".into(),
        "no 'inet roam' table, no ip rule but the kernel's, nothing on the control port",
        format!(
            "{}, {rules} other ip rule(s), {}",
            if table { "a roam table" } else { "no roam table" },
            if listening {
                "a socket on the control port"
            } else {
                "no socket on the control port"
            }
        ),
        !table && rules == 0 && !listening,
    );

    // A connection that cannot survive the move: larger than it will ever get to send.
    let b = run.topology.b_address(family);
    let listen = SocketAddr::new(b, 5006);
    let doomed_bytes = run.options.bytes * 10;
    let sink = TcpSink::start(run.b(), listen, Duration::from_secs(60))?;
    let opened = Instant::now();
    let source = TcpSource::start(
        run.a(),
        listen,
        doomed_bytes,
        run.options.seed,
        Duration::from_secs(60),
    )?;
    run.measured = Some(listen);
    // Registration gives up after 5 unanswered Inits, 200 ms apart and doubling up to
    // 1 s (docs/PROTOCOL.md, "Handshakes"): 3.4 s after the first flow listing that
    // shows the connection.
    let given_up = SystemTime::now();
    let a_before = run
        .roamds
        .wait_status_since("a", given_up, Duration::from_secs(15), |s| {
            counter(s, "registrations_failed") >= 1
        })?;
    let registration = opened.elapsed();
    if source.sent() >= doomed_bytes {
        return Err(LabError::Invalid("the stream ended before the move".into()));
    }
    let flow = a_before["flows"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["original"]["remote"] == listen.to_string()))
        .cloned()
        .unwrap_or(Value::Null);
    let left_alone = flow["peer"]["state"] == "not_roam" && flow["current"] == flow["original"];
    check(
        run,
        "a: the flow to B once registration went unanswered".into(),
        "not_roam, current tuple = original",
        format!(
            "{}, current {} original {}",
            flow["peer"]["state"], flow["current"], flow["original"]
        ),
        left_alone,
    );
    let entries = translation_entries(run.a(), &run.options.data_plane)?;
    check_eq(
        run,
        "a: translation entries in the kernel before the move".into(),
        0,
        entries as u64,
    );

    let at_move = sink.received();
    run.move_a()?;
    run.roamds.wait_status("a", Duration::from_secs(10), |s| {
        counter(s, "flows_stranded") >= 1
    })?;
    // What was in flight at the move still arrives; then nothing can: A's packets leave
    // with the old address by the new link, and R (validating sources) drops them.
    std::thread::sleep(Duration::from_secs(1));
    let settled = sink.received();
    std::thread::sleep(Duration::from_secs(3));
    let stalled = sink.received();
    check(
        run,
        "the connection to B after the move (plain TCP, nothing to keep it)".into(),
        "no byte from 1 s to 4 s after the move",
        format!(
            "{} bytes in flight arrived, then {} more",
            settled.saturating_sub(at_move),
            stalled - settled
        ),
        stalled == settled,
    );
    let sent = source.stop()?;
    let got = sink.stop()?;
    let name = "bulk a->b, B without roam";
    run.streams.push(StreamReport::of(name, doomed_bytes, sent, got));
    run.expected_broken.push(name.to_owned());

    // A new connection after the move: from A's new address, no translation.
    let listen2 = SocketAddr::new(b, 5007);
    let sink2 = TcpSink::start(run.b(), listen2, Duration::from_secs(60))?;
    let source2 = TcpSource::start(
        run.a(),
        listen2,
        run.options.bytes,
        run.options.seed + 1,
        Duration::from_secs(60),
    )?;
    let sent2 = source2.join()?;
    let got2 = sink2.join()?;
    let new_address = run.topology.a_address(family);
    check(
        run,
        "b: where the new connection came from".into(),
        new_address,
        got2.peer.map_or("nowhere".into(), |p| p.ip().to_string()),
        got2.peer.is_some_and(|p| p.ip() == new_address),
    );
    run.streams.push(StreamReport::of(
        "new connection a->b after the move",
        run.options.bytes,
        sent2,
        got2,
    ));

    // What A's roamd counted.
    let done = SystemTime::now();
    let a = run
        .roamds
        .wait_status_since("a", done, Duration::from_secs(5), |_| true)?;
    for (name, expected) in [
        ("registrations_failed", 1),
        ("handshakes_failed", 1),
        // The first connection when registration gave up, the second on sight.
        ("flows_without_peer", 2),
        ("flows_stranded", 1),
        ("handshakes_completed", 0),
        ("peers_registered", 0),
        ("flows_moved", 0),
    ] {
        check_eq(run, format!("a: {name}"), expected, counter(&a, name));
    }
    check_eq(
        run,
        "a: peers".into(),
        0,
        a["peers"].as_array().map_or(0, Vec::len) as u64,
    );
    let translated: Option<u64> = ["egress_translated", "ingress_translated"]
        .iter()
        .map(|way| translated_packets(&a, way))
        .sum();
    check(
        run,
        "a: packets the data plane translated".into(),
        0,
        translated.map_or("no counters in the status".into(), |n| n.to_string()),
        translated == Some(0),
    );
    let events: Vec<&str> = a["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["what"].as_str()).collect())
        .unwrap_or_default();
    let not_capable = format!("no roam peer at {b}");
    check(
        run,
        "a: events".into(),
        format!("'{not_capable}', and the flow stranded"),
        events
            .iter()
            .filter(|e| e.contains("no roam peer") || e.contains("stranded"))
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
        events.iter().any(|e| e.contains(&not_capable))
            && events
                .iter()
                .any(|e| e.contains("stranded: the remote host does not run roam")),
    );
    // On B's wire: A's handshake Inits arrived, and B sent nothing back on the port.
    let records = run.capture.as_ref().map(|c| c.records()).unwrap_or_default();
    let control = SocketAddr::new(b, port as u16);
    let inits = records
        .iter()
        .filter(|r| r.protocol == Protocol::Udp && !r.outgoing && r.dst == control)
        .count() as u64;
    let answers = records
        .iter()
        .filter(|r| r.protocol == Protocol::Udp && r.outgoing && r.src == control)
        .count();
    check(
        run,
        "B's wire: A's registration attempts, and answers".into(),
        format!(
            "{} (A's messages_sent), none answered",
            counter(&a, "messages_sent")
        ),
        format!("{inits}, {answers} answered"),
        inits == counter(&a, "messages_sent") && inits > 0 && answers == 0,
    );
    run.notes.push(format!(
        "B ran no roamd; A's handshake went unanswered (5 Inits, 200 ms apart doubling to 1 s: 3.4 s by design), so A left the connection to B alone; A's status said so {:.1} s after the connection opened (flow listings every 200 ms, snapshots every second); the connection broke at the move as plain TCP does, and the new connection after it used {new_address} with no translation",
        registration.as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md, "Worked example": the datagram, byte for byte.
    const WORKED_EXAMPLE: &str = "01050001 0c22004c 00005a5a 00010000 00000000 00000005 \
        549ba41e 689508c0 3addde78 d13d6bd6 3591af26 205723d2 d3e3c217 \
        01000014 8f3a10c4 9e28eb6e 74eda30f 5fc5816a 92ebca29";

    fn worked_example() -> Vec<u8> {
        hex::decode(WORKED_EXAMPLE.split_whitespace().collect::<String>()).expect("hex")
    }

    #[test]
    fn headers_are_built_as_the_specification_lays_them_out() {
        let example = worked_example();
        let h = header(
            CONNECTION_UPDATE,
            PROTECTED,
            0x0c22,
            76,
            [0, 0, 0x5a, 0x5a, 0, 1],
            5,
        );
        assert_eq!(h, example[..HEADER_LEN]);
    }

    #[test]
    fn the_worked_example_is_read_as_a_sealed_message_for_its_spi() {
        let example = worked_example();
        let f = Framed::parse(&example).expect("well framed");
        assert_eq!((f.kind, f.sealed), (CONNECTION_UPDATE, true));
        assert_eq!(f.spi(), Some(0x8f3a_10c4));
        // A new Replay Protect ID changes only bytes 16..24.
        let moved = f.with_replay_id(6);
        assert_eq!(moved[..16], example[..16]);
        assert_eq!(moved[16..24], 6u64.to_be_bytes());
        assert_eq!(moved[24..], example[24..]);
        // A datagram whose Total Length is not its length is not framed.
        assert!(Framed::parse(&example[..75]).is_none());
    }

    #[test]
    fn forged_messages_have_the_sealed_layout_and_clear_ones_their_indices() {
        let mut rng = Pattern::new(1);
        let m = forged_sealed(PATH_CHALLENGE, [1; 6], 9, 0xdead_beef, 28, &mut rng);
        let f = Framed::parse(&m).expect("well framed");
        assert_eq!(
            (f.kind, f.sealed, f.spi()),
            (PATH_CHALLENGE, true, Some(0xdead_beef))
        );
        assert_eq!(m.len(), HEADER_LEN + 28 + AUTH_LEN);
        let init = clear(
            HANDSHAKE_INIT,
            [2; 6],
            3,
            &[
                tlv(EXT_SENDER_INDEX, &7u32.to_be_bytes()),
                tlv(EXT_NOISE, &[0; 32]),
            ],
        );
        let f = Framed::parse(&init).expect("well framed");
        assert_eq!((f.sealed, f.spi()), (false, None));
        assert_eq!(f.index(EXT_SENDER_INDEX), Some(7));
        assert_eq!(f.index(EXT_RECEIVER_INDEX), None);
    }
}
