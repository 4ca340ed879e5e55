//! Attackers, for the security scenarios (docs/SECURITY.md): what an on-path observer
//! captures, and what off-path attackers, on-path attackers and malicious peers send.
//! An attacker puts packets straight on its access link; its own stack (if any) never
//! sees them. Its source addresses are its own, or spoofed within its subnet (the
//! routers' ingress filtering, BCP 38, stops anything else).

use std::net::{IpAddr, SocketAddr};

use rand_core::RngCore;
use roam_core::FlowPeer;
use roam_core::translate::Protocol;
use roam_wire::{
    DEFAULT_CONTROL_PORT, Extension, Header, Message, MessageType, Migration, NodeId, Opaque, ProtoFlags,
    SessionKey,
};

use crate::net::udp_packet;
use crate::scenario::Attack;
use crate::sim::{Ev, Sim, node_id_for};

impl Sim<'_> {
    /// What an on-path attacker keeps of host `h`'s control datagrams.
    pub(crate) fn record_control(&mut self, h: usize, pkt: &[u8]) {
        let Ok(s) = etherparse::SlicedPacket::from_ip(pkt) else {
            return;
        };
        let Some(etherparse::TransportSlice::Udp(udp)) = &s.transport else {
            return;
        };
        if udp.source_port() != DEFAULT_CONTROL_PORT && udp.destination_port() != DEFAULT_CONTROL_PORT {
            return;
        }
        let Some((_, dst)) = roam_core::plane::ip_addrs(pkt) else {
            return;
        };
        let payload = udp.payload();
        let Some(&t) = payload.get(1) else { return };
        self.captured.insert((h, dst, t), (self.now, payload.to_vec()));
        // Header byte 3, bit 0: PROTECTED.
        if payload.get(3).is_some_and(|f| f & 1 == 1) {
            self.last_sealed.insert((h, dst), payload.to_vec());
        }
    }

    fn name(&self, h: usize) -> &str {
        &self.sc.hosts[h].name
    }

    /// Puts a control datagram on `by`'s link, from `src` to `target`'s control port.
    fn inject(&mut self, by: usize, src: IpAddr, target: IpAddr, payload: &[u8]) {
        let src = SocketAddr::new(src, DEFAULT_CONTROL_PORT);
        let dst = SocketAddr::new(target, DEFAULT_CONTROL_PORT);
        if let (Some(pkt), Some(link)) = (udp_packet(src, dst, payload), self.hosts[by].link) {
            self.transmit(link, 0, pkt);
        }
    }

    /// Carries out an attack now. One that cannot happen (a host not attached, nothing
    /// captured yet) is a failure of the scenario: a test that attacks nothing proves
    /// nothing.
    pub(crate) fn attack(&mut self, a: Attack) {
        let by = match &a {
            Attack::Forge { by, .. }
            | Attack::Tamper { by, .. }
            | Attack::Replay { by, .. }
            | Attack::Redirect { by, .. }
            | Attack::Flood { by, .. } => *by,
        };
        let (Some(me), Some(target)) = (self.hosts[by].addr, self.target_addr(&a)) else {
            self.failures.push(format!(
                "attack by {} at {}: attacker or target not attached",
                self.name(by),
                self.now
            ));
            return;
        };
        match a {
            Attack::Forge { by, target: t, of } => {
                // Off path: the flows are guessed right (the strongest such attacker),
                // the key and the session index are not.
                let mut msg = Message::new(Header::new(
                    MessageType::ConnectionUpdate,
                    node_id_for(self.name(of)),
                    self.rng.next_u32() as u16,
                    0,
                ));
                for m in self.migrations(of, t, me) {
                    msg = msg.with(Extension::Migration(m));
                }
                let mut key = [0u8; 32];
                self.rng.fill_bytes(&mut key);
                let spi = self.rng.next_u32();
                match msg.seal(spi, &SessionKey::new(key)) {
                    Ok(bytes) => {
                        self.note(
                            by,
                            format!(
                                "forges a Connection Update in {}'s name (a guessed key)",
                                self.name(of)
                            ),
                        );
                        self.inject(by, me, target, &bytes);
                    }
                    Err(e) => self.failures.push(format!("cannot forge: {e}")),
                }
            }
            Attack::Tamper { by, target: t, of } => {
                let Some(mut bytes) = self.last_sealed.get(&(of, target)).cloned() else {
                    self.failures.push(format!(
                        "tamper: {} sent {} nothing sealed yet",
                        self.name(of),
                        self.name(t)
                    ));
                    return;
                };
                // One bit of the ciphertext, and a counter the receiver has not seen
                // (else the replay window would stop it before the tag is checked).
                bytes[24] ^= 0x01;
                let counter = u64::from_be_bytes(bytes[16..24].try_into().expect("a header")) + 1000;
                bytes[16..24].copy_from_slice(&counter.to_be_bytes());
                self.note(
                    by,
                    format!(
                        "sends {}'s last sealed message to {} with one bit and its counter changed",
                        self.name(of),
                        self.name(t)
                    ),
                );
                self.inject(by, me, target, &bytes);
            }
            Attack::Replay {
                by,
                target: t,
                of,
                message,
            } => {
                let Some((at, bytes)) = self.captured.get(&(of, target, message)).cloned() else {
                    self.failures.push(format!(
                        "replay: {} sent {} no message of type {message} yet",
                        self.name(of),
                        self.name(t)
                    ));
                    return;
                };
                let kind = MessageType::from_u8(message).map(|t| t.name()).unwrap_or("?");
                self.note(
                    by,
                    format!(
                        "replays {}'s {kind} to {} (captured at {at}) from its own address",
                        self.name(of),
                        self.name(t)
                    ),
                );
                self.inject(by, me, target, &bytes);
            }
            Attack::Redirect {
                by,
                target: t,
                victim,
            } => {
                let Some(v) = self.hosts[victim].addr else {
                    self.failures
                        .push(format!("redirect: victim {} not attached", self.name(victim)));
                    return;
                };
                let tid = node_id_for(self.name(t));
                let migrations = self.migrations(by, t, v);
                let Some(ep) = self.hosts[by].agent.as_mut().map(|a| &mut a.endpoint) else {
                    return;
                };
                let (Some(seq), Some(control)) =
                    (ep.take_update_sequence(tid), ep.peer(tid).map(|p| p.control))
                else {
                    self.failures.push(format!(
                        "redirect: {} has no session with {}",
                        self.name(by),
                        self.name(t)
                    ));
                    return;
                };
                let mut msg = Message::new(Header::new(MessageType::ConnectionUpdate, ep.node_id(), seq, 0));
                for m in migrations {
                    msg = msg.with(Extension::Migration(m));
                }
                msg = msg.with(Extension::Opaque(Opaque::outage(0)));
                let Some(bytes) = ep.seal_for(tid, &msg) else {
                    return;
                };
                self.note(
                    by,
                    format!(
                        "(malicious) tells {} its flows moved to {} ({v})",
                        self.name(t),
                        self.name(victim)
                    ),
                );
                self.inject(by, me, control.ip(), &bytes);
            }
            Attack::Flood {
                by,
                target: t,
                count,
                over,
            } => {
                self.note(
                    by,
                    format!(
                        "floods {} with {count} Handshake Inits over {over:?}",
                        self.name(t)
                    ),
                );
                let subnet = self.hosts[by].subnet.unwrap_or(0);
                for i in 0..count {
                    // Spoofed sources across the attacker's subnet, random ports.
                    let src = self.family().addr(subnet, 2 + (i % 253) as u8);
                    let port = 1024 + (self.rng.next_u32() % 60000) as u16;
                    let id = NodeId::new(self.rng.next_u64() & NodeId::MAX).expect("48 bits");
                    let mut e = [0u8; 32];
                    self.rng.fill_bytes(&mut e);
                    let init = Message::new(Header::new(
                        MessageType::HandshakeInit,
                        id,
                        self.rng.next_u32() as u16,
                        0,
                    ))
                    .with(Extension::SenderIndex(self.rng.next_u32()))
                    .with(Extension::Noise(e.to_vec()));
                    let Ok(bytes) = init.encode_clear() else { continue };
                    let Some(pkt) = udp_packet(
                        SocketAddr::new(src, port),
                        SocketAddr::new(target, DEFAULT_CONTROL_PORT),
                        &bytes,
                    ) else {
                        continue;
                    };
                    let at = self.now + over.mul_f64(f64::from(i) / f64::from(count));
                    self.schedule(at, Ev::Inject { host: by, pkt });
                }
            }
        }
    }

    fn target_addr(&self, a: &Attack) -> Option<IpAddr> {
        let t = match a {
            Attack::Forge { target, .. }
            | Attack::Tamper { target, .. }
            | Attack::Replay { target, .. }
            | Attack::Redirect { target, .. }
            | Attack::Flood { target, .. } => *target,
        };
        self.hosts[t].addr
    }

    /// Migrations "moving" `of`'s flows with `peer` to `to` (same ports).
    fn migrations(&self, of: usize, peer: usize, to: IpAddr) -> Vec<Migration> {
        let pid = node_id_for(self.name(peer));
        let Some(ep) = self.hosts[of].agent.as_ref().map(|a| &a.endpoint) else {
            return Vec::new();
        };
        ep.flows()
            .filter(|f| f.peer == FlowPeer::Peer(pid))
            .filter_map(|f| {
                let proto = match f.original.protocol {
                    Protocol::Tcp => ProtoFlags::TCP,
                    Protocol::Udp => ProtoFlags::UDP,
                };
                Migration::new(
                    proto,
                    f.wire_key.local,
                    SocketAddr::new(to, f.wire_key.local.port()),
                    f.wire_key.remote,
                )
            })
            .collect()
    }
}
