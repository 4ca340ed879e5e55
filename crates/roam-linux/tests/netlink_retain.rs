//! Keeping a moved host's old address for its existing sockets (MISSION.md, hard parts;
//! seed 003's deprecated address), both families, in two namespaces joined by a veth:
//!
//! A (the mover) has OLD on its veth and a TCP connection bound to OLD with B. A's
//! address changes the way a move does: OLD is retained on `lo`, deleted from the veth,
//! NEW is added to the same veth with a default route via B. Then (a) the existing
//! connection keeps working in both directions, and (b) new connections and connected
//! UDP sockets from A pick NEW, never the retained OLD.
//!
//! B routes OLD via A's NEW: without roam's translation this stands in for the network
//! still delivering the old address to A (the data plane's job in production).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use roam_linux::netlink::{self, Retained};
use socket2::{Domain, Socket, Type};
use support::{Netns, netns_available, veth};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Plan {
    /// ip(8) family flag.
    ipf: &'static str,
    plen: u8,
    host: u8,
    a_old: &'static str,
    a_new: &'static str,
    b_old: &'static str,
    b_new: &'static str,
    /// An address on A's lo that an administrator put there.
    foreign: &'static str,
    nodad: &'static str,
}

const V4: Plan = Plan {
    ipf: "-4",
    plen: 24,
    host: 32,
    a_old: "10.41.0.1",
    a_new: "10.42.0.1",
    b_old: "10.41.0.2",
    b_new: "10.42.0.2",
    foreign: "10.43.0.1",
    nodad: "",
};

const V6: Plan = Plan {
    ipf: "-6",
    plen: 64,
    host: 128,
    a_old: "fd41::1",
    a_new: "fd42::1",
    b_old: "fd41::2",
    b_new: "fd42::2",
    foreign: "fd43::1",
    nodad: "nodad",
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An echo server on `listener`: each connection gets its lines back.
fn serve_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(w, "{line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[track_caller]
fn echo(stream: &TcpStream, reader: &mut BufReader<TcpStream>, msg: &str) {
    writeln!(&*stream, "{msg}").expect("write");
    let mut line = String::new();
    reader.read_line(&mut line).expect("echo did not come back");
    assert_eq!(line.trim_end(), msg);
}

fn run(p: &Plan) {
    let a = Netns::new();
    let b = Netns::new();
    // Found here: right after a link comes up its IPv6 link-local address is tentative
    // (DAD, 1-2 s), and Linux sends a neighbour solicitation for the gateway from the
    // triggering packet's source only if that address is on the outgoing device; a
    // packet from the retained address (on lo) makes it use the link-local one, and
    // while that is tentative no solicitation is sent at all: the mover's old flows
    // stall until DAD ends. The test's link is fresh; a real one has usually been up
    // longer. No DAD on A's new devices keeps the test about retaining, and fast.
    a.run(|| netlink::set_sysctl(&["net", "ipv6", "conf", "default", "accept_dad"], "0").unwrap());
    veth(&a, "va", &b, "vb");
    a.ip(&format!("addr add {}/{} dev va {}", p.a_old, p.plen, p.nodad));
    b.ip(&format!("addr add {}/{} dev vb {}", p.b_old, p.plen, p.nodad));
    b.ip(&format!("addr add {}/{} dev vb {}", p.b_new, p.plen, p.nodad));

    // MISSION.md: the mover's ARP requests must carry its new address.
    if p.ipf == "-4" {
        let v = a.run(|| {
            netlink::set_arp_announce("va", 2).unwrap();
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/va/arp_announce").unwrap()
        });
        assert_eq!(v.trim(), "2");
        assert!(matches!(
            netlink::set_sysctl(&["net", "ipv4", "..", "x"], "1"),
            Err(netlink::Error::InvalidSysctl(_))
        ));
    }

    let port = 7000;
    let listener = b.run(|| TcpListener::bind(SocketAddr::new(ip(p.b_old), port)).unwrap());
    let listener_new = b.run(|| TcpListener::bind(SocketAddr::new(ip(p.b_new), port)).unwrap());
    serve_echo(listener);
    serve_echo(listener_new);

    // The application's connection, bound to OLD.
    let stream = a.run(|| {
        let s = Socket::new(
            Domain::for_address(SocketAddr::new(ip(p.a_old), 0)),
            Type::STREAM,
            None,
        )
        .unwrap();
        s.bind(&SocketAddr::new(ip(p.a_old), 0).into()).unwrap();
        s.connect_timeout(&SocketAddr::new(ip(p.b_old), port).into(), IO_TIMEOUT)
            .unwrap();
        TcpStream::from(s)
    });
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    echo(&stream, &mut reader, "before the move");

    // The move, the way the daemon does it: retain first, then the address changes.
    let retained = a.block_on(|| async { netlink::retain_address(ip(p.a_old)).await.unwrap() });
    assert_eq!(retained, Retained::Added);
    a.ip(&format!("addr del {}/{} dev va", p.a_old, p.plen));
    a.ip(&format!("addr add {}/{} dev va {}", p.a_new, p.plen, p.nodad));
    a.ip(&format!("{} route add default via {}", p.ipf, p.b_new));
    b.ip(&format!(
        "{} route add {}/{} via {}",
        p.ipf, p.a_old, p.host, p.a_new
    ));

    // (a) The existing connection still works, from OLD.
    echo(&stream, &mut reader, "after the move");
    echo(&stream, &mut reader, &"x".repeat(20_000));
    assert_eq!(stream.local_addr().unwrap().ip(), ip(p.a_old));

    // (b) New connections from A use NEW, to either of B's addresses.
    for dst in [p.b_old, p.b_new] {
        let (tcp_src, udp_src) = a.run(|| {
            let s = TcpStream::connect_timeout(&SocketAddr::new(ip(dst), port), IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("new connection to {dst}: {e}"));
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            echo(&s, &mut r, "new connection");
            let unspec: IpAddr = if p.ipf == "-4" { ip("0.0.0.0") } else { ip("::") };
            let u = UdpSocket::bind(SocketAddr::new(unspec, 0)).unwrap();
            u.connect(SocketAddr::new(ip(dst), 9)).unwrap();
            (s.local_addr().unwrap().ip(), u.local_addr().unwrap().ip())
        });
        assert_eq!(tcp_src, ip(p.a_new), "TCP source towards {dst}");
        assert_eq!(udp_src, ip(p.a_new), "UDP source towards {dst}");
    }

    // What the kernel reports: OLD on lo, roam's, deprecated, not usable; NEW usable.
    let addrs = a.block_on(|| async { netlink::dump_addresses().await.unwrap() });
    let old = addrs
        .iter()
        .find(|x| x.addr == ip(p.a_old))
        .expect("OLD retained");
    assert_eq!((old.ifname.as_str(), old.prefix_len), ("lo", p.host));
    assert!(
        old.roam_owned && old.deprecated && old.on_loopback && !old.usable(),
        "{old:?}"
    );
    let new = addrs.iter().find(|x| x.addr == ip(p.a_new)).expect("NEW");
    assert!(new.usable() && !new.roam_owned, "{new:?}");

    a.block_on(|| async {
        // Idempotent retain; the registry rebuilt from the kernel.
        assert_eq!(
            netlink::retain_address(ip(p.a_old)).await.unwrap(),
            Retained::AlreadyRetained
        );
        assert_eq!(netlink::retained_addresses().await.unwrap(), vec![ip(p.a_old)]);
        // Not retainable.
        let lo: IpAddr = if p.ipf == "-4" { ip("127.0.0.1") } else { ip("::1") };
        assert!(matches!(
            netlink::retain_address(lo).await,
            Err(netlink::Error::NotRetainable { .. })
        ));
    });

    // An administrator's host address on lo: reported as foreign, never released.
    a.ip(&format!("addr add {}/{} dev lo {}", p.foreign, p.host, p.nodad));
    a.block_on(|| async {
        assert_eq!(
            netlink::retain_address(ip(p.foreign)).await.unwrap(),
            Retained::Foreign
        );
        assert!(!netlink::release_address(ip(p.foreign)).await.unwrap());
        assert!(netlink::release_address(ip(p.a_old)).await.unwrap());
        assert!(!netlink::release_address(ip(p.a_old)).await.unwrap());
        let addrs = netlink::dump_addresses().await.unwrap();
        assert!(
            addrs.iter().any(|x| x.addr == ip(p.foreign)),
            "foreign address kept"
        );
        assert!(!addrs.iter().any(|x| x.addr == ip(p.a_old)), "OLD released");
        assert!(netlink::retained_addresses().await.unwrap().is_empty());
    });
}

#[test]
fn retained_ipv4_address_keeps_existing_connection_and_is_not_chosen() {
    if netns_available() {
        run(&V4);
    }
}

#[test]
fn retained_ipv6_address_keeps_existing_connection_and_is_not_chosen() {
    if netns_available() {
        run(&V6);
    }
}
