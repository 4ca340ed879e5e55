//! The control channel's UDP sockets: one per local address, bound to that address and
//! the control port.
//!
//! One socket per address (rather than one wildcard socket with IP_PKTINFO) makes the
//! source address of every reply exactly the one the endpoint chose, and tells the
//! endpoint which of its addresses a datagram came to (a handshake proves the address
//! the initiation went to; docs/PROTOCOL.md). Sockets are bound with IP_FREEBIND /
//! IPV6_FREEBIND so an address that is still tentative, or was just removed, never
//! makes a bind fail.
//!
//! A socket on an address of a real interface is also bound to that interface
//! (SO_BINDTODEVICE): a datagram from an address leaves by the link the address is on,
//! or not at all. When a host moves, the old link's default route can outlive its
//! address for a moment (IPv6 keeps a default route whose gateway is still on-link;
//! a DHCP client replaces it only after adding the new address), and an update sent
//! from the new address in that moment would leave by the old link, where the network
//! drops it (source filtering, BCP 38) and the endpoint waits for a retransmission
//! timeout. Bound to its interface, the send fails with "no route" instead, and the
//! daemon sends it again as soon as the routes change.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// A datagram that arrived on the control port.
#[derive(Debug)]
pub struct Received {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: Vec<u8>,
}

/// The largest control datagram roam reads (its messages are far smaller; anything
/// longer is truncated and then refused by the decoder).
const MAX_DATAGRAM: usize = 65_535;

struct Bound {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

/// The set of control sockets, kept in step with the host's addresses.
pub struct ControlSockets {
    port: u16,
    sockets: BTreeMap<IpAddr, Bound>,
    tx: mpsc::Sender<Received>,
}

impl ControlSockets {
    /// Sockets deliver what they read to `tx`.
    pub fn new(port: u16, tx: mpsc::Sender<Received>) -> ControlSockets {
        ControlSockets {
            port,
            sockets: BTreeMap::new(),
            tx,
        }
    }

    /// Makes sure a socket is bound on `addr` (idempotent); `device`: the interface
    /// the address is on, if it is a real one (not `lo`), to bind the socket to.
    pub fn open(&mut self, addr: IpAddr, device: Option<&str>) -> io::Result<()> {
        if self.sockets.contains_key(&addr) {
            return Ok(());
        }
        let local = SocketAddr::new(addr, self.port);
        let socket = Arc::new(bind(local, device)?);
        let reader = tokio::spawn(read_loop(socket.clone(), local, self.tx.clone()));
        debug!(%local, ?device, "control socket open");
        self.sockets.insert(addr, Bound { socket, reader });
        Ok(())
    }

    /// Closes the socket on `addr`, if any.
    pub fn close(&mut self, addr: IpAddr) {
        if let Some(b) = self.sockets.remove(&addr) {
            b.reader.abort();
            debug!(%addr, "control socket closed");
        }
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.sockets.keys().copied()
    }

    /// Sends `payload` from `src` (opening a socket there, bound to no interface, if
    /// the endpoint chose an address that has none yet). Never blocks: a full socket buffer drops the datagram,
    /// as the network would, and the endpoint's retransmission covers it.
    pub fn send(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> io::Result<()> {
        self.open(src.ip(), None)?;
        let socket = &self.sockets[&src.ip()].socket;
        // Straight to the kernel: tokio's `try_send_to` refuses (WouldBlock) until its
        // reactor has seen the socket writable, which a socket opened a moment ago, as
        // on a new address, has not yet.
        socket2::SockRef::from(socket.as_ref())
            .send_to(payload, &dst.into())
            .map(|_| ())
    }
}

impl Drop for ControlSockets {
    fn drop(&mut self) {
        for b in self.sockets.values() {
            b.reader.abort();
        }
    }
}

fn bind(local: SocketAddr, device: Option<&str>) -> io::Result<UdpSocket> {
    let domain = if local.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv4() {
        s.set_freebind_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    }
    // A restarted daemon must get its port back at once.
    s.set_reuse_address(true)?;
    if let Some(dev) = device.filter(|d| !d.is_empty()) {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    UdpSocket::from_std(s.into())
}

async fn read_loop(socket: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Received>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                let r = Received {
                    local,
                    remote,
                    payload: buf[..n].to_vec(),
                };
                if tx.send(r).await.is_err() {
                    return;
                }
            }
            // ICMP errors from earlier sends (port unreachable) surface here on Linux;
            // they say nothing about this socket.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                warn!(%local, "control socket read failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
