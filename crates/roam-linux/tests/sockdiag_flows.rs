//! sock_diag in a namespace: dump_flows returns exactly the flows of every kind (TCP
//! established both ways, SYN_SENT, SYN_RECV, TIME_WAIT, connected UDP, an IPv6 socket talking
//! IPv4), both families, and none of the listeners, unconnected UDP sockets or
//! loopback connections; destroy aborts one.

mod support;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use roam_core::translate::{Protocol, Tuple};
use roam_linux::sockdiag::{self, FlowState, SocketFlow};
use socket2::{Domain, Socket, Type};
use support::{Netns, netns_available, veth, wait_for};

const LIMIT: Duration = Duration::from_secs(5);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp(s: &TcpStream) -> Tuple {
    Tuple::new(Protocol::Tcp, s.local_addr().unwrap(), s.peer_addr().unwrap())
}

fn udp(s: &UdpSocket) -> Tuple {
    Tuple::new(Protocol::Udp, s.local_addr().unwrap(), s.peer_addr().unwrap())
}

/// Accept connections forever; each is read to EOF and closed (so the other end's
/// active close completes into TIME_WAIT).
fn serve_until_eof(l: TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

fn flows_in(ns: &Netns) -> Vec<SocketFlow> {
    ns.run(|| sockdiag::dump_flows().expect("dump_flows"))
}

#[test]
fn dump_flows_lists_exactly_the_flows() {
    if !netns_available() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    veth(&a, "va", &b, "vb");
    a.ip("addr add 10.31.0.1/24 dev va");
    a.ip("addr add fd31::1/64 dev va nodad");
    b.ip("addr add 10.31.0.2/24 dev vb");
    b.ip("addr add fd31::2/64 dev vb nodad");

    // B's servers.
    let (b4, b6) = b.run(|| {
        (
            TcpListener::bind("10.31.0.2:9001").unwrap(),
            TcpListener::bind("[fd31::2]:9002").unwrap(),
        )
    });
    serve_until_eof(b4);
    serve_until_eof(b6);

    let mut expected: BTreeSet<(Tuple, FlowState)> = BTreeSet::new();
    let mut keep = Vec::<Box<dyn std::any::Any + Send>>::new();

    // Everything on A's side is created inside A.
    let made = a.run(|| {
        let mut exp = vec![];
        let mut keep = Vec::<Box<dyn std::any::Any + Send>>::new();

        // Not flows: listeners, unconnected UDP, loopback connections.
        let l4 = TcpListener::bind("10.31.0.1:8001").unwrap();
        let l6 = TcpListener::bind("[fd31::1]:8001").unwrap();
        keep.push(Box::new(UdpSocket::bind("10.31.0.1:8002").unwrap()));
        keep.push(Box::new(UdpSocket::bind("[fd31::1]:8002").unwrap()));
        for lo in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(lo).unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let s = l.accept().unwrap().0;
            keep.push(Box::new((l, c, s)));
        }

        // Outgoing TCP, both families, and an IPv6 dual-stack socket talking IPv4
        // (reported with IPv4-mapped addresses; must come out as an IPv4 flow).
        for dst in ["10.31.0.2:9001", "[fd31::2]:9002"] {
            let c = TcpStream::connect_timeout(&sa(dst), LIMIT).unwrap();
            exp.push((tcp(&c), FlowState::Established));
            keep.push(Box::new(c));
        }
        let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        s.set_only_v6(false).unwrap();
        s.connect_timeout(&sa("[::ffff:10.31.0.2]:9001").into(), LIMIT)
            .unwrap();
        let c = TcpStream::from(s);
        let mapped = tcp(&c);
        let as_v4 = |x: SocketAddr| match x.ip() {
            IpAddr::V6(v6) => SocketAddr::new(IpAddr::V4(v6.to_ipv4_mapped().unwrap()), x.port()),
            v4 => SocketAddr::new(v4, x.port()),
        };
        exp.push((
            Tuple::new(Protocol::Tcp, as_v4(mapped.local), as_v4(mapped.remote)),
            FlowState::Established,
        ));
        keep.push(Box::new(c));

        // SYN_SENT: nobody has .99, so the SYN waits for ARP/ND that never completes.
        for dst in ["10.31.0.99:9999", "[fd31::99]:9999"] {
            let dst = sa(dst);
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            match s.connect(&dst.into()) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                other => panic!("non-blocking connect to {dst}: {other:?}"),
            }
            let local = s.local_addr().unwrap().as_socket().unwrap();
            exp.push((Tuple::new(Protocol::Tcp, local, dst), FlowState::SynSent));
            keep.push(Box::new(s));
        }

        // Connected UDP, both families.
        for (src, dst) in [
            ("10.31.0.1:0", "10.31.0.2:9100"),
            ("[fd31::1]:0", "[fd31::2]:9100"),
        ] {
            let u = UdpSocket::bind(src).unwrap();
            u.connect(dst).unwrap();
            exp.push((udp(&u), FlowState::Established));
            keep.push(Box::new(u));
        }
        (l4, l6, exp, keep)
    });
    let (l4, l6, exp, k) = made;
    expected.extend(exp);
    keep.extend(k);

    // Incoming TCP, both families: B connects to A's listeners; A's accepted sockets
    // are flows (local = A's listening address).
    for (l, dst) in [(&l4, "10.31.0.1:8001"), (&l6, "[fd31::1]:8001")] {
        let c = b.run(|| TcpStream::connect_timeout(&sa(dst), LIMIT).unwrap());
        let (s, _) = l.accept().unwrap();
        expected.insert((tcp(&s), FlowState::Established));
        keep.push(Box::new((c, s)));
    }

    // SYN_RECV, both families: with TCP_DEFER_ACCEPT, A keeps a completed handshake
    // as a request socket (reported as SYN_RECV) until data arrives.
    for bind in ["10.31.0.1:8003", "[fd31::1]:8003"] {
        let l = a.run(|| {
            let addr = sa(bind);
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
            let secs: libc::c_int = 10;
            // SAFETY: a valid socket and a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&secs as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            s.bind(&addr.into()).unwrap();
            s.listen(8).unwrap();
            s
        });
        let c = b.run(|| TcpStream::connect_timeout(&sa(bind), LIMIT).unwrap());
        let t = tcp(&c).reversed();
        wait_for(LIMIT, "a SYN_RECV request socket", || {
            flows_in(&a)
                .iter()
                .any(|f| f.tuple == t && f.state == FlowState::SynRecv)
                .then_some(())
        });
        expected.insert((t, FlowState::SynRecv));
        keep.push(Box::new((l, c)));
    }

    // TIME_WAIT, both families: A closes first, B reads EOF and closes.
    let mut tw = vec![];
    for dst in ["10.31.0.2:9001", "[fd31::2]:9002"] {
        let c = a.run(|| TcpStream::connect_timeout(&sa(dst), LIMIT).unwrap());
        tw.push(tcp(&c));
        drop(c);
    }
    wait_for(LIMIT, "TIME_WAIT sockets", || {
        let f = flows_in(&a);
        tw.iter()
            .all(|t| f.iter().any(|x| x.tuple == *t && x.state == FlowState::TimeWait))
            .then_some(())
    });
    for t in tw {
        expected.insert((t, FlowState::TimeWait));
    }

    let flows = flows_in(&a);
    let got: BTreeSet<(Tuple, FlowState)> = flows.iter().map(|f| (f.tuple, f.state)).collect();
    assert_eq!(got.len(), flows.len(), "duplicates in {flows:#?}");
    assert_eq!(got, expected, "\n got: {got:#?}\nwant: {expected:#?}");
    for f in &flows {
        assert!(f.tuple.is_consistent(), "{f:?}");
        assert_eq!(f.uid, 0, "{f:?}");
        if matches!(f.state, FlowState::TimeWait | FlowState::SynRecv) {
            assert_eq!(f.inode, 0, "a TIME_WAIT or request socket has no file");
        } else {
            assert_ne!(f.inode, 0, "{f:?}");
            assert_ne!(f.cookie, 0, "{f:?}");
        }
    }
    drop(keep);

    // The async wrapper gives the same answer (here: an empty namespace has no flows).
    let empty = Netns::new();
    assert!(
        empty
            .block_on(|| async { sockdiag::dump_flows_async().await.unwrap() })
            .is_empty()
    );
}

#[test]
fn destroy_aborts_the_socket() {
    if !netns_available() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    veth(&a, "va", &b, "vb");
    a.ip("addr add 10.32.0.1/24 dev va");
    a.ip("addr add fd32::1/64 dev va nodad");
    b.ip("addr add 10.32.0.2/24 dev vb");
    b.ip("addr add fd32::2/64 dev vb nodad");
    let (l4, l6) = b.run(|| {
        (
            TcpListener::bind("10.32.0.2:9001").unwrap(),
            TcpListener::bind("[fd32::2]:9001").unwrap(),
        )
    });
    for (l, dst) in [(l4, "10.32.0.2:9001"), (l6, "[fd32::2]:9001")] {
        let mut c = a.run(|| TcpStream::connect_timeout(&sa(dst), LIMIT).unwrap());
        let (mut peer, _) = l.accept().unwrap();
        let t = tcp(&c);
        let flow = *flows_in(&a).iter().find(|f| f.tuple == t).expect("flow listed");

        // A stale cookie names no socket: nothing is destroyed.
        let stale = SocketFlow {
            cookie: flow.cookie ^ 1,
            ..flow
        };
        assert!(matches!(
            a.run(|| sockdiag::destroy(&stale)),
            Err(sockdiag::Error::Kernel(libc::ENOENT))
        ));

        a.run(|| sockdiag::destroy(&flow)).expect("destroy");
        c.set_read_timeout(Some(LIMIT)).unwrap();
        let err = c.read(&mut [0u8; 16]).expect_err("aborted socket");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        // The peer got a RST.
        peer.set_read_timeout(Some(LIMIT)).unwrap();
        let r = peer.read(&mut [0u8; 16]);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset) || matches!(r, Ok(0)),
            "{r:?}"
        );
        let _ = peer.write_all(b"x");
        assert!(!flows_in(&a).iter().any(|f| f.tuple == t), "flow gone");
    }
}
