//! ICMP errors about moved flows reach their sockets through the nftables data plane's
//! relay (roam_linux::icmp): a "port unreachable" crosses both hosts' relays (Y's stack
//! sends it about what it received, X's socket gets ECONNREFUSED), and a "fragmentation
//! needed"/"packet too big" about a moved flow's current tuple lowers the path MTU of the
//! socket of its original tuple (RFC 1191, RFC 8201). Each has its reference without the
//! relay, where the error reaches no socket.

mod common_nft;
mod support;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common_nft::*;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4};
use roam_linux::nft::NftDataPlane;
use roam_linux::nudge::NUDGE_MARK;
use socket2::{Domain, SockAddr, Socket, Type};

/// Two hosts with nftables planes (relays on or off) and a UDP flow X -> Y that X moved
/// (the old path cut); `None` without network namespaces.
fn moved_udp_flow(a: Addrs, relay: bool) -> Option<(TwoPlanes<NftDataPlane>, UdpFlow)> {
    if !netns_available() {
        return None;
    }
    let mut t = TwoPlanes::on(Lab::new(a), |ns, _| ns.plane_with_relay(relay));
    let u = UdpFlow::open(&t.lab, 41000);
    t.move_x(u.original, u.current, OldPath::Cut);
    Some((t, u))
}

/// X's UDP flow moves; Y closes its socket; X's next datagram draws a port unreachable
/// from Y's stack, about the original tuple Y's socket had. With the relays, Y's turns it
/// into one about the current tuple, to X's current address, and X's turns that back:
/// X's connected socket reports ECONNREFUSED. Without them it is lost on the way.
fn port_unreachable_reaches_the_moved_socket(a: Addrs, relay: bool) {
    let Some((t, u)) = moved_udp_flow(a, relay) else {
        return;
    };
    u.exchange(u.original.local, || {
        format!("X: {:?}, Y: {:?}", t.px.counters(), t.py.counters())
    });
    let UdpFlow { ux, uy, .. } = u;
    drop(uy);
    ux.connect(a_y(a)).unwrap();
    ux.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    ux.send(b"anyone there?").unwrap();
    let mut buf = [0u8; 64];
    let got = ux.recv(&mut buf).map(|_| ()).map_err(|e| e.kind());
    let (cx, cy) = (t.px.local_counters().icmp, t.py.local_counters().icmp);
    if relay {
        assert_eq!(got, Err(ErrorKind::ConnectionRefused), "X: {cx:?}, Y: {cy:?}");
        assert_eq!(cy.translated, 1, "Y relays its own error: {cy:?}");
        assert_eq!(cx.translated, 1, "X relays the arriving one: {cx:?}");
        assert_eq!(
            cx.malformed + cy.malformed + cx.inject_errors + cy.inject_errors,
            0
        );
    } else {
        assert!(
            matches!(got, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "without the relay the error must not reach the socket: {got:?}"
        );
    }
}

fn a_y(a: Addrs) -> SocketAddr {
    sa(a.y, 5353)
}

#[test]
fn port_unreachable_about_a_moved_udp_flow_reaches_its_socket_over_ipv4() {
    port_unreachable_reaches_the_moved_socket(V4, true);
}

#[test]
fn port_unreachable_about_a_moved_udp_flow_reaches_its_socket_over_ipv6() {
    port_unreachable_reaches_the_moved_socket(V6, true);
}

#[test]
fn without_the_relay_the_port_unreachable_is_lost() {
    port_unreachable_reaches_the_moved_socket(V4, false);
}

/// An ICMP error as a router on the new path would send it to X's current address,
/// about a datagram of the flow's current tuple: "fragmentation needed" (IPv4) or
/// "packet too big" (IPv6) with an MTU of 1280.
fn too_big(a: Addrs, current_local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let payload = [0x5au8; 64];
    let mut quote = Vec::new();
    let mut out = Vec::new();
    match (a.y, current_local.ip(), remote.ip()) {
        (IpAddr::V4(from), IpAddr::V4(s), IpAddr::V4(d)) => {
            PacketBuilder::ipv4(s.octets(), d.octets(), 64)
                .udp(current_local.port(), remote.port())
                .write(&mut quote, &payload)
                .unwrap();
            PacketBuilder::ipv4(from.octets(), s.octets(), 64)
                .icmpv4(Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
                ))
                .write(&mut out, &quote)
                .unwrap();
        }
        (IpAddr::V6(from), IpAddr::V6(s), IpAddr::V6(d)) => {
            PacketBuilder::ipv6(s.octets(), d.octets(), 64)
                .udp(current_local.port(), remote.port())
                .write(&mut quote, &payload)
                .unwrap();
            PacketBuilder::ipv6(from.octets(), s.octets(), 64)
                .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                .write(&mut out, &quote)
                .unwrap();
        }
        _ => panic!("mixed families"),
    }
    out
}

/// The path MTU the kernel has for a connected socket (`IP_MTU`, `IPV6_MTU`).
fn path_mtu(s: &UdpSocket, v6: bool) -> i32 {
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    // SAFETY: a valid socket and a c_int-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt MTU: {}", std::io::Error::last_os_error());
    mtu
}

fn too_big_lowers_the_moved_sockets_path_mtu(a: Addrs, relay: bool) {
    let Some((t, u)) = moved_udp_flow(a, relay) else {
        return;
    };
    u.ux.connect(u.original.remote).unwrap();
    let v6 = a.y.is_ipv6();
    assert_eq!(path_mtu(&u.ux, v6), 1500, "veth MTU before");
    // Sent from Y's namespace through a marked raw socket: roam's own chains there let
    // it pass as it is (it is not Y's stack speaking about Y's flow).
    let err = too_big(a, u.current.local, u.current.remote);
    let to = u.current.local.ip();
    t.lab.y.run(move || {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(
            domain,
            Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        s.set_mark(NUDGE_MARK).unwrap();
        s.send_to(&err, &SockAddr::from(SocketAddr::new(to, 0))).unwrap();
    });
    let expect = if relay { 1280 } else { 1500 };
    let mut mtu = 0;
    for _ in 0..40 {
        mtu = path_mtu(&u.ux, v6);
        if mtu == expect && (!relay || t.px.local_counters().icmp.translated == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !relay {
        // Give a wrongly delivered error time to act before judging its absence.
        std::thread::sleep(Duration::from_millis(300));
        mtu = path_mtu(&u.ux, v6);
    }
    let c = t.px.local_counters().icmp;
    assert_eq!(mtu, expect, "path MTU of the original socket; X's relay: {c:?}");
    if relay {
        assert_eq!(c.translated, 1, "{c:?}");
    }
}

#[test]
fn fragmentation_needed_about_a_moved_flow_lowers_its_path_mtu_over_ipv4() {
    too_big_lowers_the_moved_sockets_path_mtu(V4, true);
}

#[test]
fn packet_too_big_about_a_moved_flow_lowers_its_path_mtu_over_ipv6() {
    too_big_lowers_the_moved_sockets_path_mtu(V6, true);
}

#[test]
fn without_the_relay_the_path_mtu_stays() {
    too_big_lowers_the_moved_sockets_path_mtu(V4, false);
}
