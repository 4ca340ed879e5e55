//! The standard lab: a mover A with two access links, a fixed host B, a router R.
//!
//! ```text
//!  ns A          ns W (the wires, nothing else)          ns R
//!  a1 ──veth── w1h ══ link A1 ══ w1r ──veth── r1  10.201.1.1  fd00:201:1::1
//!  a2 ──veth── w2h ══ link A2 ══ w2r ──veth── r2  10.201.2.1  fd00:201:2::1
//!  ns B
//!  b1 ──veth── w3h ══ link B  ══ w3r ──veth── r3  10.201.3.1  fd00:201:3::1
//! ```
//!
//! Each link is a [`Link`] in W bridging its two ends. The emulated wires live in their own namespace W so that no
//! stack with addresses ever sees their ends: in R itself, R's ARP would answer for its
//! addresses on a wire end too (`arp_ignore=0` answers on any interface) and A would
//! learn a MAC that bypasses the emulator. W has IPv6 disabled and no addresses.
//!
//! Both families everywhere: subnet N is 10.201.N.0/24 and fd00:201:N::/64, R is `.1` /
//! `::1`, the host `.2` / `::2`. IPv6 addresses are added `nodad` and DAD, router
//! advertisements and autoconfiguration are off on the hosts: every address is usable at
//! once and nothing but the lab changes addresses or routes.
//!
//! The RTT is split evenly over the four link crossings of a round trip (A's access
//! link and B's, each way); every link direction runs at the full rate with a tail-drop
//! queue of one bandwidth-delay product (at least 64 KiB) unless told otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::link::{Direction, Link, LinkConfig, LinkHandle, Shape};
use crate::netns::{DEFAULT_COMMAND_TIMEOUT, Lab, LabError, Ns, lock, run_checked};

/// A's first access interface (think Wi-Fi).
pub const A_IF1: &str = "a1";
/// A's second access interface (think LTE).
pub const A_IF2: &str = "a2";
/// B's only interface.
pub const B_IF: &str = "b1";
/// R's interfaces on subnets 1, 2 and 3 (B's).
pub const R_IFS: [&str; 3] = ["r1", "r2", "r3"];

/// On every link the host end is the link's first end: `UP` carries frames from the host
/// towards the router.
pub const UP: Direction = Direction::Forward;
/// From the router towards the host.
pub const DOWN: Direction = Direction::Reverse;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

/// One host's addresses on one subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DualStack {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl DualStack {
    pub fn get(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4),
            Family::V6 => IpAddr::V6(self.v6),
        }
    }
}

const fn on_subnet(subnet: u8, host: u8) -> DualStack {
    DualStack {
        v4: Ipv4Addr::new(10, 201, subnet, host),
        v6: Ipv6Addr::new(0xfd00, 0x201, subnet as u16, 0, 0, 0, 0, host as u16),
    }
}

/// Every address of the standard topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// A on subnet 1 (`a1`), where it starts.
    pub a_subnet1: DualStack,
    /// A on subnet 2 (`a2`), after [`Topology::move_a`].
    pub a_subnet2: DualStack,
    pub b: DualStack,
    pub router_subnet1: DualStack,
    pub router_subnet2: DualStack,
    pub router_b: DualStack,
}

pub const ADDRESSES: Addresses = Addresses {
    a_subnet1: on_subnet(1, 2),
    a_subnet2: on_subnet(2, 2),
    b: on_subnet(3, 2),
    router_subnet1: on_subnet(1, 1),
    router_subnet2: on_subnet(2, 1),
    router_b: on_subnet(3, 1),
};

/// Prefix lengths of every lab subnet.
const PREFIX_V4: u8 = 24;
const PREFIX_V6: u8 = 64;

/// A's access subnets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subnet {
    One,
    Two,
}

impl Subnet {
    /// The subnet A is not on when it is on this one.
    pub fn other(self) -> Subnet {
        match self {
            Subnet::One => Subnet::Two,
            Subnet::Two => Subnet::One,
        }
    }

    /// A's interface on this subnet.
    pub fn interface(self) -> &'static str {
        match self {
            Subnet::One => A_IF1,
            Subnet::Two => A_IF2,
        }
    }

    /// A's addresses on this subnet.
    pub fn a(self) -> DualStack {
        match self {
            Subnet::One => ADDRESSES.a_subnet1,
            Subnet::Two => ADDRESSES.a_subnet2,
        }
    }

    /// R's addresses on this subnet (A's gateway there).
    pub fn router(self) -> DualStack {
        match self {
            Subnet::One => ADDRESSES.router_subnet1,
            Subnet::Two => ADDRESSES.router_subnet2,
        }
    }

    /// `ip -batch` lines that give A its addresses on this subnet (both families, no
    /// DAD: usable at once).
    pub fn add_addresses(self) -> String {
        let (a, dev) = (self.a(), self.interface());
        format!(
            "addr add {}/{PREFIX_V4} dev {dev}\naddr add {}/{PREFIX_V6} dev {dev} nodad\n",
            a.v4, a.v6
        )
    }

    /// `ip -batch` lines that take A's addresses on this subnet away.
    pub fn remove_addresses(self) -> String {
        let (a, dev) = (self.a(), self.interface());
        format!(
            "addr del {}/{PREFIX_V4} dev {dev}\naddr del {}/{PREFIX_V6} dev {dev}\n",
            a.v4, a.v6
        )
    }

    /// `ip -batch` lines that point A's default routes (both families) at R on this
    /// subnet.
    pub fn default_routes(self) -> String {
        let (gw, dev) = (self.router(), self.interface());
        format!(
            "route replace default via {} dev {dev}\nroute replace default via {} dev {dev}\n",
            gw.v4, gw.v6
        )
    }
}

/// The emulated links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkId {
    /// A's subnet-1 access link.
    A1,
    /// A's subnet-2 access link.
    A2,
    /// B's access link.
    B,
}

impl LinkId {
    pub const ALL: [LinkId; 3] = [LinkId::A1, LinkId::A2, LinkId::B];

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// Round-trip propagation time A↔B, split over the four link crossings.
    pub rtt: Duration,
    /// Every link direction's rate; 0 for unlimited.
    pub rate_bps: u64,
    /// Random loss on every link direction (so a round trip crosses it four times).
    pub loss: f64,
    /// Seeds the links' loss (each link and direction draws its own stream).
    pub seed: u64,
    /// Tail-drop queue per link direction; `None`: one bandwidth-delay product of the
    /// A↔B path, at least 64 KiB.
    pub queue_bytes: Option<usize>,
    /// R drops packets whose source does not belong to the subnet they arrive from
    /// (BCP 38), as access networks do and as the simulator's routers do: a packet sent
    /// from A's old address over its new link dies. IPv4 through strict `rp_filter`
    /// (which also makes R ignore ARP requests whose sender address is not on the
    /// link, see [`Topology::build`]), IPv6 through an nftables `fib` check. `false`:
    /// loose `rp_filter`, no IPv6 check.
    pub source_validation: bool,
    /// Namespace-name prefix of the lab (see [`Lab::with_prefix`]).
    pub prefix: String,
}

impl Default for TopologyOptions {
    fn default() -> TopologyOptions {
        TopologyOptions {
            rtt: Duration::from_millis(20),
            rate_bps: 100_000_000,
            loss: 0.0,
            seed: 1,
            queue_bytes: None,
            source_validation: true,
            prefix: crate::netns::DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl TopologyOptions {
    /// The shape each link direction starts with.
    pub fn shape(&self) -> Shape {
        let bdp = (u128::from(self.rate_bps) * self.rtt.as_nanos() / 8_000_000_000) as usize;
        Shape {
            delay: self.rtt / 4,
            rate_bps: self.rate_bps,
            queue_bytes: self.queue_bytes.unwrap_or(bdp.max(64 << 10)),
            loss: self.loss,
        }
    }
}

/// When each step of a move happened (wall clock, comparable with capture timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveTimes {
    pub from: Subnet,
    pub to: Subnet,
    pub started: SystemTime,
    /// The old subnet's addresses are gone (both families).
    pub old_removed: SystemTime,
    /// The new subnet's addresses are on the new interface.
    pub new_added: SystemTime,
    /// Both default routes point at R's address on the new subnet: the move is done.
    pub routes_replaced: SystemTime,
}

impl MoveTimes {
    /// How long the address change took, start to routes.
    pub fn duration(&self) -> Duration {
        self.routes_replaced
            .duration_since(self.started)
            .unwrap_or_default()
    }
}

/// The standard topology, running. Dropping it stops the links, then the lab deletes
/// the namespaces.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: the link threads hold sockets in W and go first.
    links: Vec<Link>,
    a: Ns,
    b: Ns,
    router: Ns,
    wires: Ns,
    a_subnet: Mutex<Subnet>,
    options: TopologyOptions,
    lab: Lab,
}

/// IPv6 on the hosts: no DAD (addresses usable at once), and no router advertisements
/// or autoconfiguration (only the lab changes addresses and routes). Set as defaults
/// before the interfaces exist so they inherit them, and on `all`.
const HOST_V6: [(&str, &str); 6] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.all.autoconf", "0"),
    ("net.ipv6.conf.default.autoconf", "0"),
];

impl Topology {
    /// Builds namespaces A, B, R and W, the veth pairs, addresses and routes, and starts
    /// the three links. A starts on subnet 1; `a2` is up with no address.
    pub fn build(options: TopologyOptions) -> Result<Topology, LabError> {
        let lab = Lab::with_prefix(&options.prefix)?;
        let a = lab.add_ns("a")?;
        let b = lab.add_ns("b")?;
        let router = lab.add_ns("r")?;
        let wires = lab.add_ns("w")?;

        // arp_announce=2 on A: when A sends from an address that is no longer on the
        // outgoing link (its old address kept for existing sockets, as roam does),
        // Linux by default puts that address in its ARP requests as the sender; R,
        // validating sources strictly, ignores such requests and A never learns R's
        // MAC on the new link. 2 makes A always announce the link's own address.
        let mut a_sysctls = HOST_V6.to_vec();
        a_sysctls.extend([
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.default.arp_announce", "2"),
        ]);
        a.sysctl(&a_sysctls)?;
        b.sysctl(&HOST_V6)?;
        let rp_filter = if options.source_validation { "1" } else { "2" };
        let mut r_sysctls = HOST_V6.to_vec();
        r_sysctls.extend([
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", rp_filter),
            ("net.ipv4.conf.default.rp_filter", rp_filter),
        ]);
        router.sysctl(&r_sysctls)?;
        wires.sysctl(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;

        let w = wires.name();
        a.ip_batch(&format!(
            "link add {A_IF1} type veth peer name w1h netns {w}\n\
             link add {A_IF2} type veth peer name w2h netns {w}\n"
        ))?;
        b.ip_batch(&format!("link add {B_IF} type veth peer name w3h netns {w}\n"))?;
        router.ip_batch(&format!(
            "link add r1 type veth peer name w1r netns {w}\n\
             link add r2 type veth peer name w2r netns {w}\n\
             link add r3 type veth peer name w3r netns {w}\n"
        ))?;

        // Offloads off on every veth end whose frames cross an emulated link (all of
        // them). With TSO/GSO a sender's stack hands its veth 64 KiB super-frames, which
        // the emulator would read whole and could neither pace as frames nor send back
        // out; GRO on a wire end would glue frames together before the packet socket
        // sees them; with tx checksum offload the frames carry incomplete checksums
        // (fine between two kernels, wrong once a packet socket re-sends them, and wrong
        // in captures).
        for (ns, devices) in [
            (&a, vec![A_IF1, A_IF2]),
            (&b, vec![B_IF]),
            (&router, R_IFS.to_vec()),
            (&wires, vec!["w1h", "w1r", "w2h", "w2r", "w3h", "w3r"]),
        ] {
            disable_offloads(ns, &devices)?;
        }

        wires.ip_batch(
            "link set w1h up\nlink set w1r up\nlink set w2h up\n\
             link set w2r up\nlink set w3h up\nlink set w3r up\n",
        )?;
        let mut r_batch = String::new();
        for (device, addr) in R_IFS.iter().zip([
            ADDRESSES.router_subnet1,
            ADDRESSES.router_subnet2,
            ADDRESSES.router_b,
        ]) {
            r_batch.push_str(&format!(
                "link set {device} up\n\
                 addr add {}/{PREFIX_V4} dev {device}\n\
                 addr add {}/{PREFIX_V6} dev {device} nodad\n",
                addr.v4, addr.v6
            ));
        }
        router.ip_batch(&r_batch)?;
        if options.source_validation {
            // IPv6 has no rp_filter: the same strict check with nftables. `fib saddr .
            // iif oif missing` is true when the source is not routed back through the
            // interface it came in on. The unspecified source is exempt (DAD probes).
            let rules = "table ip6 roamlab {\n\
                 chain source_validation {\n\
                   type filter hook prerouting priority -150; policy accept;\n\
                   ip6 saddr :: accept\n\
                   fib saddr . iif oif missing counter drop\n\
                 }\n\
               }\n";
            run_checked(
                "ip",
                &["netns", "exec", router.name(), "nft", "-f", "-"],
                Some(rules.as_bytes()),
                DEFAULT_COMMAND_TIMEOUT,
            )?;
        }
        let (a1, r1) = (ADDRESSES.a_subnet1, ADDRESSES.router_subnet1);
        a.ip_batch(&format!(
            "link set {A_IF1} up\n\
             link set {A_IF2} up\n\
             addr add {}/{PREFIX_V4} dev {A_IF1}\n\
             addr add {}/{PREFIX_V6} dev {A_IF1} nodad\n\
             route add default via {} dev {A_IF1}\n\
             route add default via {} dev {A_IF1}\n",
            a1.v4, a1.v6, r1.v4, r1.v6
        ))?;
        let (bb, rb) = (ADDRESSES.b, ADDRESSES.router_b);
        b.ip_batch(&format!(
            "link set {B_IF} up\n\
             addr add {}/{PREFIX_V4} dev {B_IF}\n\
             addr add {}/{PREFIX_V6} dev {B_IF} nodad\n\
             route add default via {} dev {B_IF}\n\
             route add default via {} dev {B_IF}\n",
            bb.v4, bb.v6, rb.v4, rb.v6
        ))?;

        let shape = options.shape();
        let mut links = Vec::new();
        for (i, (host_end, router_end)) in [("w1h", "w1r"), ("w2h", "w2r"), ("w3h", "w3r")]
            .into_iter()
            .enumerate()
        {
            // Each link its own seed, derived from the topology's.
            let seed = options
                .seed
                .wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            links.push(Link::start(
                &wires,
                host_end,
                router_end,
                LinkConfig::symmetric(shape, seed),
            )?);
        }
        Ok(Topology {
            links,
            a,
            b,
            router,
            wires,
            a_subnet: Mutex::new(Subnet::One),
            options,
            lab,
        })
    }

    pub fn a(&self) -> &Ns {
        &self.a
    }

    pub fn b(&self) -> &Ns {
        &self.b
    }

    pub fn router(&self) -> &Ns {
        &self.router
    }

    /// The namespace holding the links' ends (nothing else lives there).
    pub fn wires(&self) -> &Ns {
        &self.wires
    }

    /// The lab, to spawn more processes or add namespaces.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn options(&self) -> &TopologyOptions {
        &self.options
    }

    pub fn addresses(&self) -> &'static Addresses {
        &ADDRESSES
    }

    /// A handle to change a link's shape at run time and read its counters.
    pub fn link(&self, id: LinkId) -> &LinkHandle {
        self.links[id.index()].handle()
    }

    /// Where A is now.
    pub fn a_subnet(&self) -> Subnet {
        *lock(&self.a_subnet)
    }

    /// Records that A is now on `subnet`, for a system that moves A its own way (Multipath
    /// TCP's make-before-break, its path manager's endpoints) rather than through
    /// [`Topology::move_a`]: the caller has put A's addresses and default routes there.
    pub fn record_a_subnet(&self, subnet: Subnet) {
        *lock(&self.a_subnet) = subnet;
    }

    /// A's current address.
    pub fn a_address(&self, family: Family) -> IpAddr {
        self.a_subnet().a().get(family)
    }

    pub fn b_address(&self, family: Family) -> IpAddr {
        ADDRESSES.b.get(family)
    }

    /// Moves A from subnet 1 to subnet 2 the way a DHCP client does when it lands on a
    /// new network: the old addresses go, the new ones come on the other interface, and
    /// both default routes are replaced. Sockets bound to the old address are left to
    /// their fate (that is what roam is for).
    pub fn move_a(&self) -> Result<MoveTimes, LabError> {
        self.move_between(Subnet::One, Subnet::Two)
    }

    /// Moves A back from subnet 2 to subnet 1, the same way.
    pub fn move_a_back(&self) -> Result<MoveTimes, LabError> {
        self.move_between(Subnet::Two, Subnet::One)
    }

    fn move_between(&self, from: Subnet, to: Subnet) -> Result<MoveTimes, LabError> {
        let mut current = lock(&self.a_subnet);
        if *current != from {
            return Err(LabError::Invalid(format!("A is on {:?}, not {from:?}", *current)));
        }
        let started = SystemTime::now();
        self.a.ip_batch(&from.remove_addresses())?;
        let old_removed = SystemTime::now();
        self.a.ip_batch(&to.add_addresses())?;
        let new_added = SystemTime::now();
        self.a.ip_batch(&to.default_routes())?;
        let routes_replaced = SystemTime::now();
        *current = to;
        Ok(MoveTimes {
            from,
            to,
            started,
            old_removed,
            new_added,
            routes_replaced,
        })
    }
}

fn disable_offloads(ns: &Ns, devices: &[&str]) -> Result<(), LabError> {
    // One process per namespace rather than per device: building stays quick.
    let script = devices
        .iter()
        .map(|d| format!("ethtool -K {d} tso off gso off gro off tx off >/dev/null"))
        .collect::<Vec<_>>()
        .join(" && ");
    ns.exec(&["sh", "-c", &script]).map(|_| ())
}
