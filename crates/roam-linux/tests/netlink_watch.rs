//! The address/link/route watcher, in a fresh network namespace: every change made
//! there comes out as the right typed event, in order, within a bounded time; roam's
//! own retained addresses are flagged and never usable.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use roam_linux::netlink::{self, Family, LocalAddress, NetEvent, NetWatcher, Retained, Scope};
use support::{Netns, netns_available, veth};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(5);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The addresses and devices this test changes: events about anything else (IPv6
/// link-local addresses appearing, lo, routes when not asked for) are skipped.
fn relevant(e: &NetEvent) -> bool {
    let ours = |a: &LocalAddress| {
        let s = a.addr.to_string();
        s.starts_with("10.9.") || s.starts_with("10.8.") || s.starts_with("fd09:") || s.starts_with("fd08:")
    };
    match e {
        NetEvent::AddressAdded(a) | NetEvent::AddressRemoved(a) | NetEvent::AddressDeprecated(a) => ours(a),
        NetEvent::AddressChanged { after, .. } => ours(after),
        NetEvent::LinkUp { ifname, .. } | NetEvent::LinkDown { ifname, .. } => {
            ifname == "w0" || ifname == "w1"
        }
        NetEvent::RouteChanged { .. } => false,
    }
}

/// The next relevant event, within [`STEP`].
async fn next_relevant(w: &mut NetWatcher) -> NetEvent {
    timeout(STEP, async {
        loop {
            let e = w.next().await.expect("watcher");
            if relevant(&e) {
                return e;
            }
        }
    })
    .await
    .expect("no relevant event in time")
}

/// Skip events until one satisfies `pred` (a route change, which the test cannot
/// separate from the kernel's own).
async fn until(w: &mut NetWatcher, what: &str, pred: impl Fn(&NetEvent) -> bool) -> NetEvent {
    timeout(STEP, async {
        loop {
            let e = w.next().await.expect("watcher");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} in time"))
}

#[track_caller]
fn added(e: &NetEvent, addr: &str) -> LocalAddress {
    match e {
        NetEvent::AddressAdded(a) if a.addr == ip(addr) => a.clone(),
        other => panic!("expected AddressAdded({addr}), got {other:?}"),
    }
}

#[track_caller]
fn removed(e: &NetEvent, addr: &str) -> LocalAddress {
    match e {
        NetEvent::AddressRemoved(a) if a.addr == ip(addr) => a.clone(),
        other => panic!("expected AddressRemoved({addr}), got {other:?}"),
    }
}

#[test]
fn watcher_reports_addresses_links_and_routes_in_order() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new();
    // Both ends of a veth pair in the one namespace: each end's carrier follows the
    // other's admin state.
    ns.ip("link add w0 type veth peer name w1");

    ns.block_on(|| async {
        let mut w = NetWatcher::new().await.expect("watcher");
        // The initial state: lo's addresses, none usable.
        let initial = w.addresses();
        assert!(
            initial
                .iter()
                .any(|a| a.addr == ip("127.0.0.1") && a.ifname == "lo")
        );
        assert!(initial.iter().all(|a| !a.usable()), "{initial:?}");
        assert!(w.usable_addresses().is_empty());

        // Links: w0 up alone has no carrier (not running), then w1 up brings both up.
        // Carrier changes go through the kernel's linkwatch, so the two LinkUp events
        // may come in either order.
        ns.ip("link set w0 up");
        ns.ip("link set w1 up");
        let mut up = vec![];
        for _ in 0..2 {
            match next_relevant(&mut w).await {
                NetEvent::LinkUp { ifname, ifindex } => {
                    assert!(w.link_up(ifindex));
                    up.push(ifname)
                }
                other => panic!("expected LinkUp, got {other:?}"),
            }
        }
        up.sort();
        assert_eq!(up, ["w0", "w1"]);

        // Addresses, in order.
        ns.ip("addr add 10.9.0.1/24 dev w0");
        let a = added(&next_relevant(&mut w).await, "10.9.0.1");
        assert_eq!(
            (a.prefix_len, a.ifname.as_str(), a.scope),
            (24, "w0", Scope::Universe)
        );
        assert!(
            a.usable() && !a.deprecated && !a.tentative && !a.roam_owned,
            "{a:?}"
        );

        ns.ip("addr add fd09::1/64 dev w0 nodad");
        let a = added(&next_relevant(&mut w).await, "fd09::1");
        assert!(a.usable(), "{a:?}");

        // With DAD: tentative first, then changed to usable when DAD completes.
        ns.ip("addr add fd09::2/64 dev w0");
        let a = added(&next_relevant(&mut w).await, "fd09::2");
        assert!(a.tentative && !a.usable(), "{a:?}");
        match next_relevant(&mut w).await {
            NetEvent::AddressChanged { before, after } => {
                assert_eq!(after.addr, ip("fd09::2"));
                assert!(
                    before.tentative && !after.tentative && after.usable(),
                    "{after:?}"
                );
            }
            other => panic!("expected DAD completion, got {other:?}"),
        }
        assert_eq!(
            w.usable_addresses(),
            [ip("10.9.0.1"), ip("fd09::1"), ip("fd09::2")]
                .into_iter()
                .collect()
        );

        // Deprecation (preferred lifetime set to 0), both families.
        ns.ip("addr change 10.9.0.1/24 dev w0 preferred_lft 0");
        match next_relevant(&mut w).await {
            NetEvent::AddressDeprecated(a) if a.addr == ip("10.9.0.1") => {
                assert!(a.deprecated && !a.usable())
            }
            other => panic!("expected AddressDeprecated(10.9.0.1), got {other:?}"),
        }
        ns.ip("addr change fd09::1/64 dev w0 preferred_lft 0");
        match next_relevant(&mut w).await {
            NetEvent::AddressDeprecated(a) if a.addr == ip("fd09::1") => assert!(!a.usable()),
            other => panic!("expected AddressDeprecated(fd09::1), got {other:?}"),
        }

        // roam's own retained addresses: reported, flagged, never usable.
        for addr in ["10.8.0.1", "fd08::1"] {
            assert_eq!(netlink::retain_address(ip(addr)).await.unwrap(), Retained::Added);
            let a = added(&next_relevant(&mut w).await, addr);
            assert!(a.roam_owned && a.deprecated && !a.usable(), "{a:?}");
            assert_eq!(a.ifname, "lo");
            assert_eq!(a.prefix_len, if a.addr.is_ipv4() { 32 } else { 128 });
        }
        // An administrator's host address on lo is not roam's.
        ns.ip("addr add 10.8.0.9/32 dev lo");
        let a = added(&next_relevant(&mut w).await, "10.8.0.9");
        assert!(!a.roam_owned && a.on_loopback && !a.usable(), "{a:?}");
        assert!(!w.usable_addresses().contains(&ip("10.8.0.1")));
        for addr in ["10.8.0.1", "fd08::1"] {
            assert!(netlink::release_address(ip(addr)).await.unwrap());
            let a = removed(&next_relevant(&mut w).await, addr);
            assert!(a.roam_owned);
        }

        // Removals, in order.
        ns.ip("addr del 10.9.0.1/24 dev w0");
        removed(&next_relevant(&mut w).await, "10.9.0.1");
        ns.ip("addr del fd09::1/64 dev w0");
        removed(&next_relevant(&mut w).await, "fd09::1");

        // Routes of either family, default or not.
        ns.ip("route add blackhole 10.77.0.0/16");
        until(&mut w, "IPv4 RouteChanged", |e| {
            *e == NetEvent::RouteChanged {
                family: Family::V4,
                default: false,
            }
        })
        .await;
        ns.ip("-6 route add blackhole fd77::/64");
        until(&mut w, "IPv6 RouteChanged", |e| {
            *e == NetEvent::RouteChanged {
                family: Family::V6,
                default: false,
            }
        })
        .await;
        ns.ip("route add blackhole default metric 999");
        until(&mut w, "IPv4 default RouteChanged", |e| {
            *e == NetEvent::RouteChanged {
                family: Family::V4,
                default: true,
            }
        })
        .await;

        // w1 down: w1 is admin down, w0 loses its carrier: both stop running. (Carrier
        // changes go through linkwatch: either order.) fd09::2 on w0 may or may not
        // change meanwhile, depending on how the kernel treats carrier loss; it must not
        // be reported as anything but changed or removed.
        ns.ip("link set w1 down");
        let mut down = vec![];
        let mut fd09_2_gone = false;
        while down.len() < 2 {
            match next_relevant(&mut w).await {
                NetEvent::LinkDown { ifname, ifindex } => {
                    assert!(!w.link_up(ifindex));
                    down.push(ifname)
                }
                NetEvent::AddressRemoved(a) if a.addr == ip("fd09::2") => fd09_2_gone = true,
                NetEvent::AddressChanged { after, .. } if after.addr == ip("fd09::2") => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // A device's addresses go with it.
        ns.ip("link del w0");
        while !fd09_2_gone {
            match next_relevant(&mut w).await {
                NetEvent::AddressRemoved(a) if a.addr == ip("fd09::2") => fd09_2_gone = true,
                NetEvent::AddressChanged { after, .. } if after.addr == ip("fd09::2") => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        down.sort();
        assert_eq!(down, ["w0", "w1"]);
        assert!(w.usable_addresses().is_empty(), "{:?}", w.usable_addresses());
    });
}

#[test]
fn dump_addresses_sees_both_families() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "w0", &ns, "w1");
    ns.ip("addr add 10.9.1.1/24 dev w0");
    ns.ip("addr add fd09:1::1/64 dev w0 nodad");
    ns.ip("addr add 169.254.3.3/16 dev w1");
    let addrs = ns.block_on(|| async { netlink::dump_addresses().await.unwrap() });
    let find = |s: &str| {
        addrs
            .iter()
            .find(|a| a.addr == ip(s))
            .unwrap_or_else(|| panic!("{s} missing: {addrs:?}"))
    };
    assert!(find("10.9.1.1").usable());
    assert!(find("fd09:1::1").usable());
    assert!(!find("169.254.3.3").usable(), "IPv4 link-local");
    assert!(!find("127.0.0.1").usable());
    assert!(!find("::1").usable());
    // The kernel adds fe80:: to w0 (tentative or not, never usable).
    assert!(addrs.iter().any(|a| a.ifname == "w0"
        && matches!(a.addr, IpAddr::V6(v) if v.is_unicast_link_local())
        && !a.usable()));
}

/// Lost notifications are recovered by a re-dump: the differences come out as events,
/// and the notifications still queued then repeat nothing.
#[test]
fn resync_reports_differences_once() {
    if !netns_available() {
        return;
    }
    let ns = Netns::new();
    veth(&ns, "w0", &ns, "w1");
    ns.ip("addr add 10.9.2.1/24 dev w0");
    ns.block_on(|| async {
        let mut w = NetWatcher::new().await.expect("watcher");
        // Changes the watcher has not read yet, then a forced re-dump before it does.
        // Another subnet: deleting a primary address also deletes the secondaries of
        // its subnet (promote_secondaries is off by default).
        ns.ip("addr add 10.9.3.2/24 dev w0");
        ns.ip("addr del 10.9.2.1/24 dev w0");
        w.resync();
        let mut seen = vec![];
        // Collect for a while: the re-dump's events, then whatever the queued
        // notifications add (they must add nothing about our addresses).
        let _ = timeout(Duration::from_millis(1500), async {
            loop {
                let e = w.next().await.expect("watcher");
                if relevant(&e) {
                    seen.push(e);
                }
            }
        })
        .await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        removed(&seen[0], "10.9.2.1");
        added(&seen[1], "10.9.3.2");
    });
}
