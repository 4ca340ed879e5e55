//! Local addresses, links and routes over rtnetlink, and keeping a moved flow's original
//! address usable by the stack for existing sockets only.
//!
//! - [`dump_addresses`]: every IPv4 and IPv6 address of this network namespace.
//! - [`NetWatcher`]: subscribes to the address, link and route multicast groups *before*
//!   it dumps links and addresses, keeps the resulting state, and turns every later
//!   kernel notification into a typed [`NetEvent`] by comparing it with that state (so
//!   a notification that only repeats what the dump already showed yields nothing, and
//!   lost notifications are recovered by a fresh dump).
//! - [`retain_address`] / [`release_address`]: MISSION.md's first hard part. Once an
//!   address is deleted from its interface Linux will not send from it, so a socket bound
//!   to it dies. roam keeps the old address as a host address (/32, /128) on `lo`,
//!   deprecated (preferred lifetime 0: RFC 6724 rule 3 for IPv6, and on IPv4 an address
//!   on `lo` is only chosen when the outgoing interface has none), without DAD and
//!   without a prefix route. Existing sockets keep sending from it (Linux is a weak-host
//!   stack: a local address on any interface is a valid source and destination); new
//!   connections pick the new address. Such addresses carry roam's address protocol
//!   ([`ROAM_ADDRESS_PROTO`], `IFA_PROTO`, Linux ≥ 6.1) and on IPv4 the label
//!   [`ROAM_LABEL`], so they are recognised after a restart and by the watcher
//!   ([`LocalAddress::roam_owned`]) and never reported as usable.
//! - [`set_sysctl`] / [`set_arp_announce`]: MISSION.md: the mover's ARP requests must
//!   not carry the old address as sender (`arp_announce=2` on the new link).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags, RouteMessage, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup};
use tracing::{debug, info, warn};

/// The `IFA_PROTO` value roam puts on the addresses it retains on `lo`. The kernel uses
/// 1 to 3 for its own addresses (loopback, router advertisement, link-local); any other
/// value is the creator's, kept and reported verbatim. 0x72 is ASCII `r`.
pub const ROAM_ADDRESS_PROTO: u8 = 0x72;

/// The label of an IPv4 address roam retains on `lo`. IPv4 labels are at most 15 bytes
/// (IFNAMSIZ - 1); iproute2 requires them to start with the device name, so the
/// conventional alias form `lo:<tag>` keeps `ip addr` output readable.
pub const ROAM_LABEL: &str = "lo:roam";

/// The kernel's "infinite" address lifetime (INFINITY_LIFE_TIME).
const INFINITE_LIFETIME: u32 = u32::MAX;

/// The routing table of local and broadcast routes: the kernel rewrites it on every
/// address change, which says nothing about reachability.
const RT_TABLE_LOCAL: u32 = 255;

/// Receive buffer for the watcher's multicast socket. Notifications are not flow
/// controlled: a burst larger than the buffer is lost (the watcher then re-dumps), so
/// make bursts of a few thousand messages fit.
const WATCHER_RCVBUF: usize = 4 << 20;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink route socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink request failed: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("the netlink connection closed")]
    ConnectionClosed,
    #[error("this network namespace has no loopback interface")]
    NoLoopback,
    #[error("{addr} cannot be retained on lo: {reason}")]
    NotRetainable { addr: IpAddr, reason: &'static str },
    #[error("invalid sysctl path component {0:?}")]
    InvalidSysctl(String),
    #[error("cannot write sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Address scope (`ifa_scope`), as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Other(u8),
}

impl From<AddressScope> for Scope {
    fn from(s: AddressScope) -> Scope {
        match s {
            AddressScope::Universe => Scope::Universe,
            AddressScope::Site => Scope::Site,
            AddressScope::Link => Scope::Link,
            AddressScope::Host => Scope::Host,
            AddressScope::Nowhere => Scope::Nowhere,
            AddressScope::Other(n) => Scope::Other(n),
            // The enum is non-exhaustive; anything new is reported by its number.
            other => Scope::Other(u8::from(other)),
        }
    }
}

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// One address of this namespace, as `ip addr` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub ifindex: u32,
    /// The device's name (not the IPv4 label); empty if the device was not known.
    pub ifname: String,
    pub scope: Scope,
    /// `IFA_F_DEPRECATED`, or a preferred lifetime of 0: never chosen as the source of
    /// new connections, still valid for existing ones.
    pub deprecated: bool,
    /// `IFA_F_TENTATIVE`: IPv6 duplicate address detection has not finished; the address
    /// cannot be used yet.
    pub tentative: bool,
    /// `IFA_F_DADFAILED`: another host has the address; it will never be usable.
    pub dad_failed: bool,
    /// One of roam's retained addresses on `lo` (see [`retain_address`]).
    pub roam_owned: bool,
    /// The device is a loopback device (IFF_LOOPBACK). Addresses there are reachable
    /// from elsewhere only if something routes them (anycast service addresses, roam's
    /// retained ones), so flows never move to them.
    pub on_loopback: bool,
}

impl LocalAddress {
    /// Whether flows may move to this address: it is this host's, reachable beyond the
    /// link, and the kernel would use it as a source for new connections. Loopback,
    /// link-local (fe80::/10, 169.254/16), unspecified and multicast addresses, tentative
    /// or duplicate ones, deprecated ones, addresses on a loopback device and roam's own
    /// retained ones are not.
    pub fn usable(&self) -> bool {
        if self.tentative || self.dad_failed || self.deprecated || self.roam_owned || self.on_loopback {
            return false;
        }
        if matches!(self.scope, Scope::Host | Scope::Link | Scope::Nowhere) {
            return false;
        }
        match self.addr {
            IpAddr::V4(a) => {
                !(a.is_loopback() || a.is_link_local() || a.is_unspecified() || a.is_multicast())
            }
            IpAddr::V6(a) => {
                let mapped = a.to_ipv4_mapped().is_some();
                !(a.is_loopback()
                    || a.is_unicast_link_local()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || mapped)
            }
        }
    }

    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The identity of an address in the kernel: one address and prefix per device.
    fn key(&self) -> AddrKey {
        (self.ifindex, self.addr, self.prefix_len)
    }
}

type AddrKey = (u32, IpAddr, u8);

/// A change the watcher saw, in the order the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A new address (check [`LocalAddress::usable`]: a new IPv6 address is usually
    /// tentative at first, and roam's own retained addresses are reported too, flagged).
    AddressAdded(LocalAddress),
    /// An address stopped being preferred (preferred lifetime ran out or was set to 0).
    /// Existing sockets keep it; flows should move.
    AddressDeprecated(LocalAddress),
    /// An address's flags changed otherwise (typically DAD finished, so it became
    /// usable; or it stopped being deprecated).
    AddressChanged {
        before: LocalAddress,
        after: LocalAddress,
    },
    /// An address is gone (deleted, its device went away, or IPv6 flushed it when the
    /// device went down).
    AddressRemoved(LocalAddress),
    /// A device became administratively up and operational (IFF_UP and IFF_RUNNING).
    LinkUp { ifindex: u32, ifname: String },
    /// A device stopped being up and operational, or was deleted. Its IPv4 addresses
    /// may still be listed, but nothing can be sent through it.
    LinkDown { ifindex: u32, ifname: String },
    /// A route of the family was added or removed (the local table and cached routes
    /// are left out); `default`: a default route (prefix length 0). Also sent after the
    /// watcher had to re-dump (as a default route's: anything may have changed).
    RouteChanged { family: Family, default: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkState {
    name: String,
    up: bool,
    loopback: bool,
}

/// Run `f` with a fresh rtnetlink connection, driving the connection in the same task
/// (no task is spawned, so nothing outlives the call).
async fn with_handle<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
    tokio::select! {
        r = f(handle) => r,
        () = conn => Err(Error::ConnectionClosed),
    }
}

async fn dump_links(handle: &Handle) -> Result<BTreeMap<u32, LinkState>> {
    let msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    Ok(msgs
        .iter()
        .filter_map(|m| link_state(m).map(|s| (m.header.index, s)))
        .collect())
}

async fn dump_address_messages(handle: &Handle) -> Result<Vec<AddressMessage>> {
    Ok(handle.address().get().execute().try_collect().await?)
}

/// A link message's name and up state; `None` for messages that are not about a
/// device as a whole (bridge port notifications share the link group, family AF_BRIDGE).
fn link_state(m: &LinkMessage) -> Option<LinkState> {
    if m.header.interface_family != AddressFamily::Unspec {
        return None;
    }
    let name = m
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let f = m.header.flags;
    Some(LinkState {
        name,
        up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running),
        loopback: f.contains(LinkFlags::Loopback),
    })
}

/// The typed view of an address message; `None` if it carries no address or is not
/// IPv4/IPv6.
fn local_address(m: &AddressMessage, links: &BTreeMap<u32, LinkState>) -> Option<LocalAddress> {
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut flags = None;
    let mut preferred = None;
    let mut proto = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Label(l) => label = Some(l.as_str()),
            AddressAttribute::Flags(f) => flags = Some(*f),
            AddressAttribute::CacheInfo(ci) => preferred = Some(ci.ifa_preferred),
            AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
            _ => {}
        }
    }
    // IFA_LOCAL is this host's address; IFA_ADDRESS is the peer's on point-to-point
    // links and otherwise the same (IPv6 sends only IFA_ADDRESS unless there is a peer).
    let addr = local.or(address)?;
    // IFA_FLAGS has all 32 bits; the header's byte only the first eight.
    let flags = flags.unwrap_or_else(|| AddressFlags::from_bits_retain(m.header.flags.bits().into()));
    let ifindex = m.header.index;
    let link = links.get(&ifindex);
    let ifname = link.map(|l| l.name.clone()).unwrap_or_else(|| {
        // IPv4 carries its label, which starts with the device name.
        label
            .map(|l| l.split(':').next().unwrap_or(l).to_owned())
            .unwrap_or_default()
    });
    let roam_owned = proto == Some(ROAM_ADDRESS_PROTO) || label == Some(ROAM_LABEL);
    Some(LocalAddress {
        addr,
        prefix_len: m.header.prefix_len,
        ifindex,
        ifname,
        scope: m.header.scope.into(),
        deprecated: flags.contains(AddressFlags::Deprecated) || preferred == Some(0),
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
        roam_owned,
        // An unknown device is taken as not loopback: the loopback device exists from
        // the namespace's creation and the watcher always knows it.
        on_loopback: link.is_some_and(|l| l.loopback),
    })
}

/// Every IPv4 and IPv6 address of this network namespace.
pub async fn dump_addresses() -> Result<Vec<LocalAddress>> {
    with_handle(|handle| async move {
        let links = dump_links(&handle).await?;
        let msgs = dump_address_messages(&handle).await?;
        Ok(msgs.iter().filter_map(|m| local_address(m, &links)).collect())
    })
    .await
}

/// The addresses roam retained on `lo` (e.g. before a restart): rebuilt from the kernel,
/// which is the registry.
pub async fn retained_addresses() -> Result<Vec<IpAddr>> {
    Ok(dump_addresses()
        .await?
        .into_iter()
        .filter(|a| a.roam_owned)
        .map(|a| a.addr)
        .collect())
}

/// What [`retain_address`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retained {
    /// roam added the address to `lo`.
    Added,
    /// roam had already retained it.
    AlreadyRetained,
    /// `lo` already has the address as a host address, and it is not roam's (an
    /// administrator's). Existing sockets can use it; roam must not release it.
    Foreign,
}

fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn check_retainable(addr: IpAddr) -> Result<()> {
    let reason = match addr {
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("an IPv4-mapped IPv6 address"),
        a if a.is_unspecified() => Some("the unspecified address"),
        a if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a == Ipv4Addr::BROADCAST => Some("the broadcast address"),
        _ => None,
    };
    match reason {
        Some(reason) => Err(Error::NotRetainable { addr, reason }),
        None => Ok(()),
    }
}

fn loopback_index(m: &[LinkMessage]) -> Option<u32> {
    m.iter()
        .find(|l| {
            l.header.interface_family == AddressFamily::Unspec && l.header.flags.contains(LinkFlags::Loopback)
        })
        .map(|l| l.header.index)
}

/// The address message on `lo` for `addr` as a host address, if any.
async fn find_on_lo(handle: &Handle, addr: IpAddr) -> Result<(u32, Option<(AddressMessage, LocalAddress)>)> {
    let links_msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    let lo = loopback_index(&links_msgs).ok_or(Error::NoLoopback)?;
    let links: BTreeMap<u32, LinkState> = links_msgs
        .iter()
        .filter_map(|m| link_state(m).map(|s| (m.header.index, s)))
        .collect();
    let found = dump_address_messages(handle).await?.into_iter().find_map(|m| {
        let a = local_address(&m, &links)?;
        (a.ifindex == lo && a.addr == addr && a.prefix_len == host_prefix(addr)).then_some((m, a))
    });
    Ok((lo, found))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// Keep `addr` usable by existing sockets after it leaves its interface: add it to `lo`
/// as a /32 or /128, `nodad`, `noprefixroute`, preferred lifetime 0 (deprecated: never
/// chosen as the source of a new connection), valid forever, marked as roam's
/// ([`ROAM_ADDRESS_PROTO`]; IPv4 also labelled [`ROAM_LABEL`]). Idempotent.
///
/// Add it *before* the address leaves its interface where possible: in between, the
/// stack has no route for a socket bound to it and its TCP falls back to retransmission.
pub async fn retain_address(addr: IpAddr) -> Result<Retained> {
    check_retainable(addr)?;
    with_handle(|handle| async move {
        let (lo, found) = find_on_lo(&handle, addr).await?;
        if let Some((_, a)) = found {
            return Ok(if a.roam_owned {
                Retained::AlreadyRetained
            } else {
                Retained::Foreign
            });
        }
        let mut req = handle.address().add(lo, addr, host_prefix(addr));
        let msg = req.message_mut();
        msg.attributes.push(AddressAttribute::Flags(
            AddressFlags::Nodad | AddressFlags::Noprefixroute,
        ));
        let mut ci = CacheInfo::default();
        ci.ifa_preferred = 0;
        ci.ifa_valid = INFINITE_LIFETIME;
        msg.attributes.push(AddressAttribute::CacheInfo(ci));
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                ROAM_ADDRESS_PROTO,
            )));
        if addr.is_ipv4() {
            msg.attributes
                .push(AddressAttribute::Label(ROAM_LABEL.to_owned()));
        }
        match req.execute().await {
            Ok(()) => {
                info!(%addr, "retained on lo for existing sockets");
                Ok(Retained::Added)
            }
            // Someone added it between our dump and our request: look again.
            Err(e) if is_errno(&e, libc::EEXIST) => match find_on_lo(&handle, addr).await?.1 {
                Some((_, a)) if a.roam_owned => Ok(Retained::AlreadyRetained),
                Some(_) => Ok(Retained::Foreign),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Remove an address [`retain_address`] added. Returns whether one was removed; an
/// address on `lo` that is not roam's is left alone (false).
pub async fn release_address(addr: IpAddr) -> Result<bool> {
    with_handle(|handle| async move {
        match find_on_lo(&handle, addr).await?.1 {
            Some((msg, a)) if a.roam_owned => match handle.address().del(msg).execute().await {
                Ok(()) => {
                    info!(%addr, "released from lo");
                    Ok(true)
                }
                // Deleted by someone else meanwhile: the outcome is the same.
                Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) || is_errno(&e, libc::ENOENT) => Ok(false),
                Err(e) => Err(e.into()),
            },
            Some(_) => {
                debug!(%addr, "address on lo is not roam's: not released");
                Ok(false)
            }
            None => Ok(false),
        }
    })
    .await
}

/// Write `value` to `/proc/sys/<path...>`. Components are given separately, so device
/// names containing dots (VLANs: `eth0.100`) need no escaping.
pub fn set_sysctl(path: &[&str], value: &str) -> Result<()> {
    let mut p = PathBuf::from("/proc/sys");
    for c in path {
        if c.is_empty() || *c == "." || *c == ".." || c.contains('/') || c.contains('\0') {
            return Err(Error::InvalidSysctl((*c).to_owned()));
        }
        p.push(c);
    }
    std::fs::write(&p, value).map_err(|source| Error::Sysctl {
        path: p.clone(),
        source,
    })?;
    debug!(path = %p.display(), value, "sysctl set");
    Ok(())
}

/// `net.ipv4.conf.<ifname>.arp_announce = level`. Level 2 makes ARP requests sent on the
/// device carry one of the device's own addresses as sender, never a retained old
/// address (MISSION.md: a router with strict rp_filter ignores those).
pub fn set_arp_announce(ifname: &str, level: u8) -> Result<()> {
    set_sysctl(
        &["net", "ipv4", "conf", ifname, "arp_announce"],
        &level.to_string(),
    )
}

/// Watches addresses, links and routes. Create it with [`NetWatcher::new`], read the
/// initial state with [`NetWatcher::addresses`], then call [`NetWatcher::next`] for each
/// change. Every event is a difference with the state the watcher holds, so the initial
/// state plus the events is always the kernel's state.
pub struct NetWatcher {
    handle: Handle,
    messages: BoxStream<'static, (NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>,
    conn_task: tokio::task::JoinHandle<()>,
    links: BTreeMap<u32, LinkState>,
    addrs: BTreeMap<AddrKey, LocalAddress>,
    pending: VecDeque<NetEvent>,
    /// Notifications were lost (receive buffer overrun): re-dump before going on.
    /// Kept as a flag so a `next()` cancelled mid-dump retries it.
    resync: bool,
}

impl Drop for NetWatcher {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

impl NetWatcher {
    /// Subscribe to RTNLGRP_LINK, IPV4_IFADDR, IPV6_IFADDR, IPV4_ROUTE and IPV6_ROUTE,
    /// then dump links and addresses. Notifications that arrive during the dump are
    /// queued and compared with the dumped state, so none is lost and none repeats it.
    /// Must be called within a tokio runtime (the connection runs as a task).
    pub async fn new() -> Result<NetWatcher> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (mut conn, handle, messages) =
            rtnetlink::new_multicast_connection(&groups).map_err(Error::Socket)?;
        enlarge_rcvbuf(conn.socket_mut().socket_mut());
        let conn_task = tokio::spawn(conn);
        let mut w = NetWatcher {
            handle,
            messages: messages.boxed(),
            conn_task,
            links: BTreeMap::new(),
            addrs: BTreeMap::new(),
            pending: VecDeque::new(),
            resync: false,
        };
        let (links, addrs) = w.dump().await?;
        w.links = links;
        w.addrs = addrs;
        Ok(w)
    }

    async fn dump(&self) -> Result<(BTreeMap<u32, LinkState>, BTreeMap<AddrKey, LocalAddress>)> {
        let links = dump_links(&self.handle).await?;
        let addrs = dump_address_messages(&self.handle)
            .await?
            .iter()
            .filter_map(|m| local_address(m, &links))
            .map(|a| (a.key(), a))
            .collect();
        Ok((links, addrs))
    }

    /// Every address the watcher knows, as of the last event returned.
    pub fn addresses(&self) -> Vec<LocalAddress> {
        self.addrs.values().cloned().collect()
    }

    /// The addresses flows may move to now: [`LocalAddress::usable`] on a device that is
    /// up.
    pub fn usable_addresses(&self) -> BTreeSet<IpAddr> {
        self.addrs
            .values()
            .filter(|a| a.usable() && self.links.get(&a.ifindex).is_some_and(|l| l.up))
            .map(|a| a.addr)
            .collect()
    }

    /// Compare with a fresh dump on the next call to [`NetWatcher::next`] and report
    /// the differences as events (then two `RouteChanged`). The watcher does this by
    /// itself when the kernel says notifications were lost; a daemon may ask for it,
    /// e.g. after the host resumed from suspend.
    pub fn resync(&mut self) {
        self.resync = true;
    }

    /// Whether the device is known and up.
    pub fn link_up(&self, ifindex: u32) -> bool {
        self.links.get(&ifindex).is_some_and(|l| l.up)
    }

    /// The next change. Cancel-safe: no notification is lost if the future is dropped.
    pub async fn next(&mut self) -> Result<NetEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                debug!(event = ?e, "network event");
                return Ok(e);
            }
            if self.resync {
                let (links, addrs) = self.dump().await?;
                self.apply_snapshot(links, addrs);
                self.resync = false;
                continue;
            }
            let Some((msg, _)) = self.messages.next().await else {
                return Err(Error::ConnectionClosed);
            };
            self.handle_message(msg);
        }
    }

    fn handle_message(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) {
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => match m {
                RouteNetlinkMessage::NewLink(l) => self.on_new_link(&l),
                RouteNetlinkMessage::DelLink(l) => self.on_del_link(&l),
                RouteNetlinkMessage::NewAddress(a) => {
                    if let Some(a) = local_address(&a, &self.links) {
                        self.upsert_address(a);
                    }
                }
                RouteNetlinkMessage::DelAddress(a) => {
                    if let Some(a) = local_address(&a, &self.links) {
                        // Reported with the state we held (flags may differ in the
                        // deletion message). One we never held (added and removed
                        // before our dump) changes nothing we reported: no event.
                        if let Some(old) = self.addrs.remove(&a.key()) {
                            self.pending.push_back(NetEvent::AddressRemoved(old));
                        }
                    }
                }
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                    if let Some(family) = interesting_route(&r) {
                        let default = r.header.destination_prefix_length == 0;
                        self.pending.push_back(NetEvent::RouteChanged { family, default });
                    }
                }
                _ => {}
            },
            NetlinkPayload::Overrun(_) => {
                warn!("netlink notifications lost (receive buffer full): re-dumping");
                self.resync = true;
            }
            _ => {}
        }
    }

    fn on_new_link(&mut self, m: &LinkMessage) {
        let Some(new) = link_state(m) else { return };
        let ifindex = m.header.index;
        self.set_link(ifindex, new);
    }

    fn set_link(&mut self, ifindex: u32, new: LinkState) {
        let was_up = self.links.get(&ifindex).is_some_and(|l| l.up);
        if self.links.get(&ifindex).is_some_and(|l| l.name != new.name) {
            // A rename: the addresses keep their identity, only the name changes.
            for a in self.addrs.values_mut().filter(|a| a.ifindex == ifindex) {
                a.ifname.clone_from(&new.name);
            }
        }
        let ifname = new.name.clone();
        let up = new.up;
        self.links.insert(ifindex, new);
        match (was_up, up) {
            (false, true) => self.pending.push_back(NetEvent::LinkUp { ifindex, ifname }),
            (true, false) => self.pending.push_back(NetEvent::LinkDown { ifindex, ifname }),
            _ => {}
        }
    }

    fn on_del_link(&mut self, m: &LinkMessage) {
        if link_state(m).is_none() {
            return;
        }
        self.remove_link(m.header.index);
    }

    fn remove_link(&mut self, ifindex: u32) {
        let Some(old) = self.links.remove(&ifindex) else {
            return;
        };
        // The kernel normally reports each address's deletion before the device's;
        // whatever is left went with it.
        let gone: Vec<AddrKey> = self.addrs.keys().filter(|k| k.0 == ifindex).copied().collect();
        for k in gone {
            if let Some(a) = self.addrs.remove(&k) {
                self.pending.push_back(NetEvent::AddressRemoved(a));
            }
        }
        if old.up {
            self.pending.push_back(NetEvent::LinkDown {
                ifindex,
                ifname: old.name,
            });
        }
    }

    fn upsert_address(&mut self, a: LocalAddress) {
        let key = a.key();
        match self.addrs.insert(key, a.clone()) {
            None => self.pending.push_back(NetEvent::AddressAdded(a)),
            Some(before) if before == a => {}
            Some(before) if !before.deprecated && a.deprecated => {
                self.pending.push_back(NetEvent::AddressDeprecated(a))
            }
            Some(before) => self
                .pending
                .push_back(NetEvent::AddressChanged { before, after: a }),
        }
    }

    /// After lost notifications: turn the difference between what we held and a fresh
    /// dump into events, as if we had seen every notification.
    fn apply_snapshot(&mut self, links: BTreeMap<u32, LinkState>, addrs: BTreeMap<AddrKey, LocalAddress>) {
        let gone_links: Vec<u32> = self
            .links
            .keys()
            .filter(|i| !links.contains_key(i))
            .copied()
            .collect();
        for i in gone_links {
            self.remove_link(i);
        }
        for (i, l) in links {
            self.set_link(i, l);
        }
        let gone: Vec<AddrKey> = self
            .addrs
            .keys()
            .filter(|k| !addrs.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(a) = self.addrs.remove(&k) {
                self.pending.push_back(NetEvent::AddressRemoved(a));
            }
        }
        for (_, a) in addrs {
            self.upsert_address(a);
        }
        // Routes are not tracked: tell the daemon to look again.
        for family in [Family::V4, Family::V6] {
            self.pending.push_back(NetEvent::RouteChanged {
                family,
                default: true,
            });
        }
    }
}

/// Give the multicast socket [`WATCHER_RCVBUF`]. SO_RCVBUF is capped by
/// `net.core.rmem_max` (about 200 KiB by default); SO_RCVBUFFORCE is not, but needs
/// CAP_NET_ADMIN, which the daemon has. Not fatal: a smaller buffer only makes overruns
/// (and re-dumps) likelier.
fn enlarge_rcvbuf(sock: &rtnetlink::sys::Socket) {
    let size = libc::c_int::try_from(WATCHER_RCVBUF).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return;
    }
    debug!(error = %io::Error::last_os_error(), "SO_RCVBUFFORCE refused, trying SO_RCVBUF");
    if let Err(e) = sock.set_rx_buf_sz(WATCHER_RCVBUF) {
        warn!(error = %e, "cannot enlarge the netlink receive buffer");
    }
}

/// The family of a route change worth reporting: not the local table (local and
/// broadcast routes follow every address change), not cached clones, not local,
/// broadcast, anycast or multicast routes.
fn interesting_route(r: &RouteMessage) -> Option<Family> {
    let family = match r.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    // RTA_TABLE has the full 32-bit table id; the header's byte is 252 (RT_TABLE_COMPAT)
    // for ids above 255.
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table == RT_TABLE_LOCAL || r.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    if matches!(
        r.header.kind,
        RouteType::Local | RouteType::Broadcast | RouteType::Anycast | RouteType::Multicast
    ) {
        return None;
    }
    Some(family)
}
