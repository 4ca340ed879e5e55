//! Applications on the simulated hosts. They are ordinary socket programs: they know
//! nothing of roam, keep their sockets across moves, and digest (SHA-256) every byte
//! they send and receive, so a run proves the stream arrived whole.

use std::collections::BTreeMap;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use crate::scenario::{Phase, Side, TcpFlow, UdpFlow};
use roam_core::Instant;

/// Socket buffers: about 1.5 times the bandwidth-delay product of the scenarios
/// (100 Mbit/s x 20 ms = 250 kB). Larger than the BDP, so the window does not limit
/// goodput; small enough that a sender never queues more than the bottleneck buffer
/// holds. smoltcp's Reno recovers one loss per episode and then waits out a 1 s RTO, so
/// a sender that overfills the queue would turn every congestion episode into a stall
/// that has nothing to do with moves.
pub const TCP_BUFFER: usize = 384 * 1024;
const CHUNK: usize = 64 * 1024;

/// A deterministic pseudo-random byte stream (the data a sender sends).
struct Stream {
    rng: ChaCha8Rng,
    buf: Vec<u8>,
    at: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            rng: ChaCha8Rng::seed_from_u64(seed),
            buf: Vec::new(),
            at: 0,
        }
    }
    /// The next `max` (or fewer) bytes not yet consumed.
    fn peek(&mut self, max: usize) -> &[u8] {
        if self.at == self.buf.len() {
            self.buf.resize(CHUNK, 0);
            self.rng.fill_bytes(&mut self.buf);
            self.at = 0;
        }
        let end = (self.at + max).min(self.buf.len());
        &self.buf[self.at..end]
    }
    fn consume(&mut self, n: usize) {
        self.at += n;
    }
}

/// One direction's record at the receiving end.
#[derive(Default)]
pub struct Receipt {
    pub bytes: u64,
    hash: Sha256,
    /// (time, bytes) of every read: the goodput timeline and the handover gap.
    pub reads: Vec<(Instant, u64)>,
}

impl Receipt {
    fn take(&mut self, now: Instant, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.hash.update(data);
        self.reads.push((now, data.len() as u64));
    }
    pub fn digest(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }
}

/// One direction's record at the sending end.
pub struct Emission {
    pub bytes: u64,
    hash: Sha256,
    stream: Stream,
}

impl Emission {
    fn new(seed: u64) -> Emission {
        Emission {
            bytes: 0,
            hash: Sha256::new(),
            stream: Stream::new(seed),
        }
    }
    pub fn digest(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }
}

/// What an application step needs to know about its host and the time.
#[derive(Clone, Copy, Debug)]
pub struct StepContext {
    pub now: Instant,
    /// Since the run began.
    pub elapsed: Duration,
    /// The server's current address (for a client about to connect).
    pub server_addr: Option<IpAddress>,
    /// This host's current address.
    pub local_addr: Option<IpAddress>,
}

/// One end of a TCP session.
pub struct TcpEnd {
    pub host: usize,
    pub handle: Option<SocketHandle>,
    pub sent: Emission,
    pub received: Receipt,
    closed: bool,
}

/// A TCP session with phases of bulk transfer in either direction.
pub struct TcpApp {
    pub spec: TcpFlow,
    /// `ends[0]` is the client, `ends[1]` the server.
    pub ends: [TcpEnd; 2],
    pub connected_at: Option<Instant>,
    pub finished_at: Option<Instant>,
    pub failed: Option<String>,
}

pub(crate) fn side_index(s: Side) -> usize {
    match s {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl TcpApp {
    pub fn new(spec: TcpFlow, seed: u64) -> TcpApp {
        let end = |host, k: u64| TcpEnd {
            host,
            handle: None,
            sent: Emission::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(k)),
            received: Receipt::default(),
            closed: false,
        };
        TcpApp {
            ends: [end(spec.client, 1), end(spec.server, 2)],
            spec,
            connected_at: None,
            finished_at: None,
            failed: None,
        }
    }

    /// Bytes end `k` must send over the whole session.
    pub fn total_from(&self, k: usize) -> u64 {
        self.spec
            .phases
            .iter()
            .filter(|p| side_index(p.from) == k)
            .map(|p| p.bytes)
            .sum()
    }

    fn allowed_from(&self, k: usize, elapsed: Duration) -> u64 {
        self.spec
            .demand(if k == 0 { Side::Client } else { Side::Server }, elapsed)
    }

    /// Times at which the hosts must wake to start phases.
    pub fn phase_times(&self) -> impl Iterator<Item = &Phase> {
        self.spec.phases.iter()
    }

    pub fn done(&self) -> bool {
        self.finished_at.is_some() || self.failed.is_some()
    }

    /// Creates the server's listening socket.
    pub fn listen(&mut self, sockets: &mut SocketSet<'static>) {
        let mut s = tcp_socket(self.spec.buffer);
        s.listen(IpListenEndpoint::from(self.spec.port))
            .expect("a fresh socket listens");
        self.ends[1].handle = Some(sockets.add(s));
    }

    /// Runs end `k` on its host. Returns whether it did anything.
    pub fn step(
        &mut self,
        k: usize,
        at: &StepContext,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
    ) -> bool {
        let StepContext {
            now,
            elapsed,
            server_addr,
            local_addr,
        } = *at;
        if self.done() {
            return false;
        }
        let mut progress = false;
        if k == 0 && self.ends[0].handle.is_none() {
            if elapsed < self.spec.start {
                return false;
            }
            let (Some(server), Some(local)) = (server_addr, local_addr) else {
                self.failed = Some("no address to connect from or to".into());
                return false;
            };
            let mut s = tcp_socket(self.spec.buffer);
            // Bind the current (not a deprecated) address explicitly, as a kernel's
            // source address selection does (RFC 6724 rule 3: avoid deprecated).
            let local_ep = IpListenEndpoint {
                addr: Some(local),
                port: self.spec.client_port,
            };
            if let Err(e) = s.connect(iface.context(), IpEndpoint::new(server, self.spec.port), local_ep) {
                self.failed = Some(format!("connect: {e}"));
                return false;
            }
            self.ends[0].handle = Some(sockets.add(s));
            progress = true;
        }
        let total_in = self.total_from(1 - k);
        let total_out = self.total_from(k);
        let allowed = self.allowed_from(k, elapsed);
        let all_started = self.spec.phases.iter().all(|p| p.at <= elapsed);
        let end = &mut self.ends[k];
        let Some(h) = end.handle else { return progress };
        let s = sockets.get_mut::<tcp::Socket>(h);
        if k == 0 && self.connected_at.is_none() && s.state() == tcp::State::Established {
            self.connected_at = Some(now);
        }
        let mut buf = [0u8; CHUNK];
        while s.can_recv() {
            match s.recv_slice(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    end.received.take(now, &buf[..n]);
                    progress = true;
                }
                Err(_) => break,
            }
        }
        while end.sent.bytes < allowed && s.can_send() {
            let want = (allowed - end.sent.bytes).min(CHUNK as u64) as usize;
            let chunk = end.sent.stream.peek(want);
            match s.send_slice(chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    end.sent.hash.update(&chunk[..n]);
                    end.sent.stream.consume(n);
                    end.sent.bytes += n as u64;
                    progress = true;
                }
            }
        }
        // Close once everything this end sends is queued and everything it expects
        // has arrived; the session is finished when both ends have closed.
        if !end.closed && all_started && end.sent.bytes == total_out && end.received.bytes >= total_in {
            s.close();
            end.closed = true;
            progress = true;
        }
        if matches!(s.state(), tcp::State::Closed) && self.connected_at.is_some() && !end.closed {
            self.failed = Some(format!(
                "connection closed by the network at {} ({} of {} bytes received)",
                now, end.received.bytes, total_in
            ));
        }
        if self.ends.iter().all(|e| e.closed) && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
        progress
    }
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    s.set_congestion_control(tcp::CongestionControl::Reno);
    s
}

/// Datagram payload size of the UDP transfer.
pub const UDP_PAYLOAD: usize = 1000;
const UDP_WINDOW: u64 = 64;
/// Retransmission timeout bounds; in between it is 2 SRTT + 10 ms, in the manner of
/// QUIC's probe timeout (RFC 9002 §6.2).
const UDP_MIN_RTO: Duration = Duration::from_millis(30);
const UDP_MAX_RTO: Duration = Duration::from_secs(1);
const UDP_INITIAL_RTO: Duration = Duration::from_millis(200);

/// A reliable transfer over UDP (sequence-numbered datagrams, cumulative ACKs, a
/// window, timeout retransmission, as TFTP or a QUIC-like application would do): it
/// checks that a UDP 4-tuple keeps working across a move.
pub struct UdpApp {
    pub spec: UdpFlow,
    data: Vec<u8>,
    pub sender: usize,
    pub receiver: usize,
    send_handle: Option<SocketHandle>,
    recv_handle: Option<SocketHandle>,
    dst: Option<IpEndpoint>,
    /// First unacknowledged datagram, next to send.
    base: u64,
    next: u64,
    deadline: Option<Instant>,
    /// First transmission time of each datagram in the window (Karn: retransmitted
    /// ones are removed and never sampled).
    sent_at: BTreeMap<u64, Instant>,
    /// Datagrams below this have been retransmitted at least once.
    retransmitted_below: u64,
    srtt: Option<Duration>,
    pub sent: Emission,
    pub received: Receipt,
    expected: u64,
    ahead: BTreeMap<u64, Vec<u8>>,
    pub retransmissions: u64,
    pub finished_at: Option<Instant>,
    pub failed: Option<String>,
}

impl UdpApp {
    pub fn new(spec: UdpFlow, seed: u64) -> UdpApp {
        let mut sent = Emission::new(seed ^ 0x5544_5000);
        let mut data = vec![0u8; spec.bytes as usize];
        sent.stream.rng.fill_bytes(&mut data);
        sent.hash.update(&data);
        sent.bytes = spec.bytes;
        UdpApp {
            sender: spec.sender,
            receiver: spec.receiver,
            spec,
            data,
            send_handle: None,
            recv_handle: None,
            dst: None,
            base: 0,
            next: 0,
            deadline: None,
            sent_at: BTreeMap::new(),
            retransmitted_below: 0,
            srtt: None,
            sent,
            received: Receipt::default(),
            expected: 0,
            ahead: BTreeMap::new(),
            retransmissions: 0,
            finished_at: None,
            failed: None,
        }
    }

    fn datagrams(&self) -> u64 {
        (self.data.len() as u64).div_ceil(UDP_PAYLOAD as u64)
    }

    fn chunk(&self, i: u64) -> &[u8] {
        let a = i as usize * UDP_PAYLOAD;
        &self.data[a..(a + UDP_PAYLOAD).min(self.data.len())]
    }

    pub fn done(&self) -> bool {
        self.finished_at.is_some() || self.failed.is_some()
    }

    /// The sender's retransmission deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn rto(&self) -> Duration {
        match self.srtt {
            Some(s) => (s * 2 + Duration::from_millis(10)).clamp(UDP_MIN_RTO, UDP_MAX_RTO),
            None => UDP_INITIAL_RTO,
        }
    }

    pub fn bind_receiver(&mut self, sockets: &mut SocketSet<'static>) {
        let mut s = udp_socket();
        s.bind(self.spec.port).expect("a fresh socket binds");
        self.recv_handle = Some(sockets.add(s));
    }

    pub fn step_receiver(&mut self, now: Instant, sockets: &mut SocketSet<'static>) -> bool {
        let Some(h) = self.recv_handle else { return false };
        let s = sockets.get_mut::<udp::Socket>(h);
        let mut progress = false;
        while let Ok((data, meta)) = s.recv() {
            progress = true;
            let Some((seq, payload)) = data.split_first_chunk::<8>() else {
                continue;
            };
            let seq = u64::from_be_bytes(*seq);
            if seq == self.expected {
                self.received.take(now, payload);
                self.expected += 1;
                while let Some(p) = self.ahead.remove(&self.expected) {
                    self.received.take(now, &p);
                    self.expected += 1;
                }
            } else if seq > self.expected && seq < self.expected + UDP_WINDOW {
                self.ahead.insert(seq, payload.to_vec());
            }
            // Answer from the address it was sent to, to the address it came from.
            let ack = self.expected.to_be_bytes();
            let reply = udp::UdpMetadata {
                endpoint: meta.endpoint,
                local_address: meta.local_address,
                meta: Default::default(),
            };
            let _ = s.send_slice(&ack, reply);
        }
        progress
    }

    pub fn step_sender(
        &mut self,
        now: Instant,
        elapsed: Duration,
        sockets: &mut SocketSet<'static>,
        receiver_addr: Option<IpAddress>,
        local_addr: Option<IpAddress>,
    ) -> bool {
        if self.done() || elapsed < self.spec.start {
            return false;
        }
        let mut progress = false;
        if self.send_handle.is_none() {
            let (Some(dst), Some(local)) = (receiver_addr, local_addr) else {
                self.failed = Some("no address to send from or to".into());
                return false;
            };
            let mut s = udp_socket();
            // Bound to its address like a connected UDP socket (the kernel fixes a
            // connected socket's source address at connect time): the flow keeps its
            // 4-tuple across the move, and roam must carry it.
            s.bind(IpListenEndpoint {
                addr: Some(local),
                port: self.spec.sender_port,
            })
            .expect("a fresh socket binds");
            self.send_handle = Some(sockets.add(s));
            self.dst = Some(IpEndpoint::new(dst, self.spec.port));
            progress = true;
        }
        let (Some(h), Some(dst)) = (self.send_handle, self.dst) else {
            return progress;
        };
        let total = self.datagrams();
        let s = sockets.get_mut::<udp::Socket>(h);
        while let Ok((data, _)) = s.recv() {
            if let Some(a) = data.first_chunk::<8>() {
                let acked = u64::from_be_bytes(*a);
                if acked > self.base {
                    if let Some(t) = self.sent_at.get(&(acked - 1)) {
                        let sample = now - *t;
                        self.srtt = Some(self.srtt.map_or(sample, |s| (s * 7 + sample) / 8));
                    }
                    self.sent_at = self.sent_at.split_off(&acked);
                    self.base = acked.min(total);
                    self.deadline = Some(now + self.rto());
                    progress = true;
                }
            }
        }
        if self.base >= total {
            self.finished_at = Some(now);
            self.deadline = None;
            return true;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            // Go back N: resend the window.
            self.retransmissions += self.next - self.base;
            self.retransmitted_below = self.next;
            self.next = self.base;
            self.sent_at.clear();
            self.deadline = Some(now + self.rto());
        }
        while self.next < total && self.next < self.base + UDP_WINDOW && s.can_send() {
            let mut dgram = self.next.to_be_bytes().to_vec();
            dgram.extend_from_slice(self.chunk(self.next));
            if s.send_slice(&dgram, dst).is_err() {
                break;
            }
            if self.next >= self.retransmitted_below {
                self.sent_at.insert(self.next, now);
            }
            self.next += 1;
            let rto = self.rto();
            self.deadline.get_or_insert(now + rto);
            progress = true;
        }
        progress
    }
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1100]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1100]),
    )
}
