//! The translation table (seed 000 ¶0047, FIG. 7): original tuple <-> current tuple,
//! indexed both ways, plus address-only mappings (seed 002's virtual <-> actual address).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use foldhash::quality::FixedState;
use thiserror::Error;

use super::tuple::{AddressMapping, FlowMapping, Side, TableChange, Tuple};

/// Why a change was refused. A refused change leaves the table as it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TableError {
    #[error("{0} mixes IPv4 and IPv6")]
    MixedFamilies(Tuple),
    #[error("original {} and current {} differ in address family", .0.original, .0.current)]
    FamilyChange(Box<FlowMapping>),
    #[error("original {} and current {} differ in protocol", .0.original, .0.current)]
    ProtocolChange(Box<FlowMapping>),
    /// Seed 000 ¶0069: current tuples must stay one-to-one with original ones.
    #[error("current {current} is already the current tuple of {holder}")]
    CurrentInUse { current: Tuple, holder: Box<Tuple> },
    #[error("address mapping {original} -> {current} changes the address family")]
    AddressFamilyChange { original: IpAddr, current: IpAddr },
    #[error("current address {current} is already mapped from {holder}")]
    AddressInUse { current: IpAddr, holder: IpAddr },
}

type Map<K, V> = HashMap<K, V, FixedState>;

/// An IPv4 tuple as one integer: the local and remote addresses in the high 64 bits,
/// then the local and remote ports, and the protocol number in the low byte. As a key
/// a lookup hashes one `u128` (one folded multiply) and compares one; the derived
/// `Hash`/`Eq` of `Tuple` walk two `SocketAddr` enums field by field, which was most of
/// the rewriter's time per packet (`cargo bench -p roam-core --bench rewrite`,
/// docs/BENCHMARKS.md). The rewriter builds it straight from a packet's header bytes.
///
/// As a [`PathIndex`] value it is the entry's other tuple, with bit 8 set if the entry
/// holds (never in a key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key4(u128);

impl Key4 {
    /// `addrs`: local address << 32 | remote address; `ports`: local port << 16 |
    /// remote port (as they sit, big-endian, in an egress packet's headers).
    #[inline(always)]
    pub(crate) fn new(addrs: u64, ports: u32, protocol: u8) -> Key4 {
        Key4((u128::from(addrs) << 64) | (u128::from(ports) << 32) | u128::from(protocol))
    }

    #[inline(always)]
    pub(crate) fn local(self) -> u32 {
        (self.0 >> 96) as u32
    }

    #[inline(always)]
    pub(crate) fn remote(self) -> u32 {
        (self.0 >> 64) as u32
    }

    /// Local port << 16 | remote port.
    #[inline(always)]
    pub(crate) fn ports(self) -> u32 {
        (self.0 >> 32) as u32
    }

    #[inline(always)]
    pub(crate) fn hold(self) -> bool {
        self.0 & HOLD != 0
    }

    fn with_hold(self, hold: bool) -> Key4 {
        Key4(self.0 | if hold { HOLD } else { 0 })
    }
}

/// The bit of a [`PathIndex`] value that says the entry holds: above the protocol
/// number, in bits no key uses.
const HOLD: u128 = 1 << 8;

/// An IPv6 tuple's addresses and ports, the IPv6 counterpart of [`Key4`]: both
/// addresses as integers, then the ports and protocol number (and, in a value, the
/// hold bit) as in the low 64 bits of a `Key4`. As a key it stands for a tuple without
/// flow information or scope id, as every tuple a packet carries is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key6 {
    local: u128,
    remote: u128,
    ports: u64,
}

impl Key6 {
    #[inline(always)]
    pub(crate) fn new(local: u128, remote: u128, ports: u32, protocol: u8) -> Key6 {
        Key6 {
            local,
            remote,
            ports: (u64::from(ports) << 32) | u64::from(protocol),
        }
    }

    #[inline(always)]
    pub(crate) fn local(self) -> u128 {
        self.local
    }

    #[inline(always)]
    pub(crate) fn remote(self) -> u128 {
        self.remote
    }

    #[inline(always)]
    pub(crate) fn ports(self) -> u32 {
        (self.ports >> 32) as u32
    }

    #[inline(always)]
    pub(crate) fn hold(self) -> bool {
        self.ports & HOLD as u64 != 0
    }

    fn with_hold(self, hold: bool) -> Key6 {
        Key6 {
            ports: self.ports | if hold { HOLD as u64 } else { 0 },
            ..self
        }
    }
}

/// Which index a tuple lives in, and under which key. Equal keys if and only if equal
/// tuples: every field `Tuple`'s equality compares is in the key or decides the index
/// (a tuple goes to exactly one, by its families and IPv6 extras).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TupleKey {
    V4(Key4),
    V6(Key6),
    /// An IPv6 tuple with flow information or a scope id, which no packet carries (a
    /// packet's tuple has neither), or one that mixes families (the table refuses
    /// those; looking one up finds nothing): keyed by itself.
    Other(Tuple),
}

impl TupleKey {
    pub(crate) fn of(t: &Tuple) -> TupleKey {
        match packed(t) {
            Some(k) if !has_extras(t) => k,
            _ => TupleKey::Other(*t),
        }
    }
}

/// A tuple's addresses, ports and protocol packed as a key of its family, whatever its
/// IPv6 flow information and scope id (a packet carries neither); `None` if it mixes
/// families.
fn packed(t: &Tuple) -> Option<TupleKey> {
    let ports = (u32::from(t.local.port()) << 16) | u32::from(t.remote.port());
    let protocol = t.protocol.ip_number();
    match (t.local, t.remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => Some(TupleKey::V4(Key4::new(
            (u64::from(l.ip().to_bits()) << 32) | u64::from(r.ip().to_bits()),
            ports,
            protocol,
        ))),
        (SocketAddr::V6(l), SocketAddr::V6(r)) => Some(TupleKey::V6(Key6::new(
            l.ip().to_bits(),
            r.ip().to_bits(),
            ports,
            protocol,
        ))),
        _ => None,
    }
}

/// Whether an end of the tuple has IPv6 flow information or a scope id.
fn has_extras(t: &Tuple) -> bool {
    [t.local, t.remote].iter().any(|a| match a {
        SocketAddr::V6(a) => a.flowinfo() != 0 || a.scope_id() != 0,
        SocketAddr::V4(_) => false,
    })
}

/// Flow entries indexed by one of their tuples, one hash map per kind of key (so that
/// an IPv4 bucket holds a 16-byte key, not the 56 bytes a key for every family needs).
#[derive(Clone, Debug)]
struct FlowIndex {
    v4: Map<Key4, FlowMapping>,
    v6: Map<Key6, FlowMapping>,
    other: Map<Tuple, FlowMapping>,
}

impl FlowIndex {
    fn new(hash_seed: u64) -> FlowIndex {
        let h = || FixedState::with_seed(hash_seed);
        FlowIndex {
            v4: HashMap::with_hasher(h()),
            v6: HashMap::with_hasher(h()),
            other: HashMap::with_hasher(h()),
        }
    }

    fn get(&self, t: &Tuple) -> Option<&FlowMapping> {
        match TupleKey::of(t) {
            TupleKey::V4(k) => self.v4.get(&k),
            TupleKey::V6(k) => self.v6.get(&k),
            TupleKey::Other(t) => self.other.get(&t),
        }
    }

    fn insert(&mut self, t: &Tuple, m: FlowMapping) -> Option<FlowMapping> {
        match TupleKey::of(t) {
            TupleKey::V4(k) => self.v4.insert(k, m),
            TupleKey::V6(k) => self.v6.insert(k, m),
            TupleKey::Other(t) => self.other.insert(t, m),
        }
    }

    fn remove(&mut self, t: &Tuple) -> Option<FlowMapping> {
        match TupleKey::of(t) {
            TupleKey::V4(k) => self.v4.remove(&k),
            TupleKey::V6(k) => self.v6.remove(&k),
            TupleKey::Other(t) => self.other.remove(&t),
        }
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.other.len()
    }

    fn values(&self) -> impl Iterator<Item = &FlowMapping> {
        self.v4
            .values()
            .chain(self.v6.values())
            .chain(self.other.values())
    }

    fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.other.clear();
    }
}

/// The packet path's view of the entries, one way (egress: original -> current;
/// ingress: current -> original): from a tuple a packet can carry, the tuple to give it
/// and the entry's hold flag, packed into one small value, so that translating a packet
/// reads one hash bucket of 32 (IPv4) or 96 (IPv6) bytes and nothing else. What the
/// rewriter needs of an entry and nothing more: [`FlowIndex`] keeps the entries
/// themselves. Tuples with IPv6 flow information or a scope id are not here (no packet
/// carries them); a value drops them (the rewriter writes addresses and ports only).
#[derive(Clone, Debug)]
pub(crate) struct PathIndex {
    v4: Map<Key4, Key4>,
    v6: Map<Key6, Key6>,
}

impl PathIndex {
    fn new(hash_seed: u64) -> PathIndex {
        let h = || FixedState::with_seed(hash_seed);
        PathIndex {
            v4: HashMap::with_hasher(h()),
            v6: HashMap::with_hasher(h()),
        }
    }

    /// `from` -> `to`. The table checked that they are of one family.
    fn insert(&mut self, from: &Tuple, to: &Tuple, hold: bool) {
        match (TupleKey::of(from), packed(to)) {
            (TupleKey::V4(k), Some(TupleKey::V4(v))) => {
                self.v4.insert(k, v.with_hold(hold));
            }
            (TupleKey::V6(k), Some(TupleKey::V6(v))) => {
                self.v6.insert(k, v.with_hold(hold));
            }
            _ => {}
        }
    }

    fn remove(&mut self, from: &Tuple) {
        match TupleKey::of(from) {
            TupleKey::V4(k) => {
                self.v4.remove(&k);
            }
            TupleKey::V6(k) => {
                self.v6.remove(&k);
            }
            TupleKey::Other(_) => {}
        }
    }

    #[inline(always)]
    pub(crate) fn get4(&self, k: &Key4) -> Option<Key4> {
        self.v4.get(k).copied()
    }

    #[inline(always)]
    pub(crate) fn get6(&self, k: &Key6) -> Option<Key6> {
        self.v6.get(k).copied()
    }

    fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

/// The table a data plane translates with. Lookups are O(1); nothing here iterates a
/// hash map to decide anything, so a seeded table behaves the same on every run.
#[derive(Clone, Debug)]
pub struct TranslationTable {
    by_original: FlowIndex,
    /// current -> the entry (a copy: ingress lookups look up once)
    by_current: FlowIndex,
    /// The packet path's indexes: original -> current, and current -> original.
    egress: PathIndex,
    ingress: PathIndex,
    /// (side, original address) -> current address
    addr_by_original: Map<(Side, IpAddr), IpAddr>,
    /// (side, current address) -> original address
    addr_by_current: Map<(Side, IpAddr), IpAddr>,
}

impl TranslationTable {
    /// `hash_seed` keys the hash tables: random in the daemon (tuples come from the
    /// network, so a predictable seed would invite collision floods), fixed in the
    /// simulator and tests (same seed, same behaviour; nothing observable depends on
    /// the hash order anyway).
    pub fn new(hash_seed: u64) -> TranslationTable {
        let h = || FixedState::with_seed(hash_seed);
        TranslationTable {
            by_original: FlowIndex::new(hash_seed),
            by_current: FlowIndex::new(hash_seed),
            egress: PathIndex::new(hash_seed),
            ingress: PathIndex::new(hash_seed),
            addr_by_original: HashMap::with_hasher(h()),
            addr_by_current: HashMap::with_hasher(h()),
        }
    }

    /// Applies one change in O(1). Installing inserts, or replaces the entry with the
    /// same original (freeing its old current); removing what is absent is `Ok`. A
    /// change is refused, and the table left exactly as it was, if a tuple mixes
    /// families, original and current differ in family or protocol, or the current
    /// tuple (address) is already another entry's current: currents stay one-to-one with
    /// originals (seed 000 ¶0069), or ingress translation would be ambiguous. An entry
    /// whose current equals its original is valid (it carries `hold`).
    pub fn apply(&mut self, change: &TableChange) -> Result<(), TableError> {
        match change {
            TableChange::InstallFlow(m) => self.install_flow(*m),
            TableChange::RemoveFlow { original } => {
                if let Some(m) = self.by_original.remove(original) {
                    self.by_current.remove(&m.current);
                    self.egress.remove(&m.original);
                    self.ingress.remove(&m.current);
                }
                Ok(())
            }
            TableChange::InstallAddress(m) => self.install_address(*m),
            TableChange::RemoveAddress { side, original } => {
                if let Some(cur) = self.addr_by_original.remove(&(*side, *original)) {
                    self.addr_by_current.remove(&(*side, cur));
                }
                Ok(())
            }
        }
    }

    fn install_flow(&mut self, m: FlowMapping) -> Result<(), TableError> {
        for t in [m.original, m.current] {
            if !t.is_consistent() {
                return Err(TableError::MixedFamilies(t));
            }
        }
        if m.original.is_ipv4() != m.current.is_ipv4() {
            return Err(TableError::FamilyChange(Box::new(m)));
        }
        if m.original.protocol != m.current.protocol {
            return Err(TableError::ProtocolChange(Box::new(m)));
        }
        if let Some(holder) = self.by_current.get(&m.current)
            && holder.original != m.original
        {
            return Err(TableError::CurrentInUse {
                current: m.current,
                holder: Box::new(holder.original),
            });
        }
        if let Some(old) = self.by_original.insert(&m.original, m) {
            self.by_current.remove(&old.current);
            self.ingress.remove(&old.current);
        }
        self.by_current.insert(&m.current, m);
        self.egress.insert(&m.original, &m.current, m.hold);
        self.ingress.insert(&m.current, &m.original, false);
        Ok(())
    }

    fn install_address(&mut self, m: AddressMapping) -> Result<(), TableError> {
        if m.original.is_ipv4() != m.current.is_ipv4() {
            return Err(TableError::AddressFamilyChange {
                original: m.original,
                current: m.current,
            });
        }
        if let Some(holder) = self.addr_by_current.get(&(m.side, m.current))
            && *holder != m.original
        {
            return Err(TableError::AddressInUse {
                current: m.current,
                holder: *holder,
            });
        }
        if let Some(old) = self.addr_by_original.insert((m.side, m.original), m.current) {
            self.addr_by_current.remove(&(m.side, old));
        }
        self.addr_by_current.insert((m.side, m.current), m.original);
        Ok(())
    }

    pub fn flow_by_original(&self, t: &Tuple) -> Option<&FlowMapping> {
        self.by_original.get(t)
    }

    pub fn flow_by_current(&self, t: &Tuple) -> Option<&FlowMapping> {
        self.by_current.get(t)
    }

    /// Original -> current and hold, for the rewriter's lookups by packed key.
    #[inline(always)]
    pub(crate) fn egress_path(&self) -> &PathIndex {
        &self.egress
    }

    /// Current -> original, for the rewriter's lookups by packed key.
    #[inline(always)]
    pub(crate) fn ingress_path(&self) -> &PathIndex {
        &self.ingress
    }

    /// The current address an original one maps to on `side`.
    pub fn address_current(&self, side: Side, original: IpAddr) -> Option<IpAddr> {
        self.addr_by_original.get(&(side, original)).copied()
    }

    /// The original address a current one maps back to on `side`.
    pub fn address_original(&self, side: Side, current: IpAddr) -> Option<IpAddr> {
        self.addr_by_current.get(&(side, current)).copied()
    }

    pub fn has_addresses(&self) -> bool {
        !self.addr_by_original.is_empty()
    }

    pub fn flow_count(&self) -> usize {
        self.by_original.len()
    }

    pub fn address_count(&self) -> usize {
        self.addr_by_original.len()
    }

    /// Flow entries, sorted by original tuple.
    pub fn flows(&self) -> Vec<FlowMapping> {
        let mut v: Vec<FlowMapping> = self.by_original.values().copied().collect();
        v.sort_by_key(|m| m.original);
        v
    }

    /// Address mappings, sorted.
    pub fn addresses(&self) -> Vec<AddressMapping> {
        let mut v: Vec<AddressMapping> = self
            .addr_by_original
            .iter()
            .map(|((side, original), current)| AddressMapping {
                side: *side,
                original: *original,
                current: *current,
            })
            .collect();
        v.sort_by_key(|m| (m.side, m.original));
        v
    }

    pub fn clear(&mut self) {
        self.by_original.clear();
        self.by_current.clear();
        self.egress.clear();
        self.ingress.clear();
        self.addr_by_original.clear();
        self.addr_by_current.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::Protocol;

    fn t(l: &str, r: &str) -> Tuple {
        Tuple::new(Protocol::Tcp, l.parse().unwrap(), r.parse().unwrap())
    }

    #[test]
    fn a_refused_change_leaves_the_table_as_it_was() {
        let mut table = TranslationTable::new(1);
        let a = FlowMapping {
            original: t("10.0.0.1:1", "10.0.0.2:2"),
            current: t("10.0.1.1:1", "10.0.0.2:2"),
            hold: false,
        };
        table.apply(&TableChange::InstallFlow(a)).unwrap();
        let clash = FlowMapping {
            original: t("10.0.0.1:5", "10.0.0.2:2"),
            current: a.current,
            hold: false,
        };
        assert!(matches!(
            table.apply(&TableChange::InstallFlow(clash)),
            Err(TableError::CurrentInUse { .. })
        ));
        let mixed = FlowMapping {
            original: t("10.0.0.1:5", "10.0.0.2:2"),
            current: t("[::1]:5", "[::2]:2"),
            hold: false,
        };
        assert!(matches!(
            table.apply(&TableChange::InstallFlow(mixed)),
            Err(TableError::FamilyChange(_))
        ));
        assert_eq!(table.flows(), vec![a]);
        assert_eq!(table.flow_by_current(&a.current), Some(&a));
    }

    #[test]
    fn replacing_an_entry_frees_its_old_current_tuple() {
        let mut table = TranslationTable::new(1);
        let o = t("10.0.0.1:1", "10.0.0.2:2");
        let first = FlowMapping {
            original: o,
            current: t("10.0.1.1:1", "10.0.0.2:2"),
            hold: true,
        };
        let second = FlowMapping {
            original: o,
            current: t("10.0.2.1:1", "10.0.0.2:2"),
            hold: false,
        };
        table.apply(&TableChange::InstallFlow(first)).unwrap();
        table.apply(&TableChange::InstallFlow(second)).unwrap();
        assert_eq!(table.flow_by_current(&first.current), None);
        assert_eq!(table.flow_by_current(&second.current), Some(&second));
        table.apply(&TableChange::RemoveFlow { original: o }).unwrap();
        table.apply(&TableChange::RemoveFlow { original: o }).unwrap();
        assert_eq!(table.flow_count(), 0);
    }

    fn nth(n: u32, v6: bool) -> std::net::SocketAddr {
        let [a, b, c, d] = n.to_be_bytes();
        if v6 {
            std::net::SocketAddr::new(
                std::net::Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::from_be_bytes([a, b]),
                    u16::from_be_bytes([c, d]),
                )
                .into(),
                1000 + (n % 50_000) as u16,
            )
        } else {
            std::net::SocketAddr::new(
                std::net::Ipv4Addr::new(10, b, c, d).into(),
                1000 + (n % 50_000) as u16,
            )
        }
    }

    /// Install is O(1): 100,000 entries take milliseconds (the bound only catches a
    /// quadratic regression without being flaky on a loaded machine), and every one is
    /// found both ways afterwards.
    #[test]
    fn a_hundred_thousand_flows_install_quickly_and_are_found_both_ways() {
        let mut table = TranslationTable::new(42);
        let mapping = |n: u32| FlowMapping {
            original: Tuple::new(
                Protocol::Udp,
                nth(n, n.is_multiple_of(2)),
                nth(n + 1, n.is_multiple_of(2)),
            ),
            current: Tuple::new(
                Protocol::Udp,
                nth(n + 500_000, n.is_multiple_of(2)),
                nth(n + 1, n.is_multiple_of(2)),
            ),
            hold: false,
        };
        let start = std::time::Instant::now();
        for n in 0..100_000 {
            table.apply(&TableChange::InstallFlow(mapping(n))).unwrap();
        }
        let took = start.elapsed();
        assert!(
            took < std::time::Duration::from_secs(5),
            "100k installs took {took:?}"
        );
        assert_eq!(table.flow_count(), 100_000);
        for n in (0..100_000).step_by(997) {
            let m = mapping(n);
            assert_eq!(table.flow_by_original(&m.original), Some(&m));
            assert_eq!(table.flow_by_current(&m.current), Some(&m));
        }
        table.clear();
        assert_eq!((table.flow_count(), table.address_count()), (0, 0));
    }

    /// Listings are sorted, so they are the same whatever the hash seed and the
    /// insertion order (the simulator compares runs).
    #[test]
    fn listings_are_sorted_whatever_the_seed_and_the_order() {
        let flows: Vec<FlowMapping> = (0..200u32)
            .map(|n| FlowMapping {
                original: Tuple::new(
                    Protocol::Tcp,
                    nth(n, n.is_multiple_of(3)),
                    nth(7, n.is_multiple_of(3)),
                ),
                current: Tuple::new(
                    Protocol::Tcp,
                    nth(n + 1000, n.is_multiple_of(3)),
                    nth(7, n.is_multiple_of(3)),
                ),
                hold: n.is_multiple_of(5),
            })
            .collect();
        let addresses: Vec<AddressMapping> = (0..50u32)
            .map(|n| AddressMapping {
                side: if n.is_multiple_of(2) {
                    Side::Local
                } else {
                    Side::Remote
                },
                original: nth(n, n.is_multiple_of(4)).ip(),
                current: nth(n + 100, n.is_multiple_of(4)).ip(),
            })
            .collect();
        let fill = |seed: u64, reverse: bool| {
            let mut t = TranslationTable::new(seed);
            let mut changes: Vec<TableChange> = flows.iter().map(|m| TableChange::InstallFlow(*m)).collect();
            changes.extend(addresses.iter().map(|m| TableChange::InstallAddress(*m)));
            if reverse {
                changes.reverse();
            }
            for c in &changes {
                t.apply(c).unwrap();
            }
            (t.flows(), t.addresses())
        };
        let (f, a) = fill(1, false);
        assert!(f.windows(2).all(|w| w[0].original < w[1].original));
        assert!(
            a.windows(2)
                .all(|w| (w[0].side, w[0].original) < (w[1].side, w[1].original))
        );
        assert_eq!(fill(2, true), (f, a));
    }

    #[test]
    fn address_mappings_are_indexed_both_ways_and_removed_idempotently() {
        let mut table = TranslationTable::new(9);
        let (o, c): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.9.0.1".parse().unwrap());
        let m = AddressMapping {
            side: Side::Local,
            original: o,
            current: c,
        };
        table.apply(&TableChange::InstallAddress(m)).unwrap();
        assert_eq!(table.address_current(Side::Local, o), Some(c));
        assert_eq!(table.address_original(Side::Local, c), Some(o));
        // Sides are separate namespaces.
        assert_eq!(table.address_current(Side::Remote, o), None);
        // Replacing frees the old current address.
        let c2: IpAddr = "10.9.0.2".parse().unwrap();
        table
            .apply(&TableChange::InstallAddress(AddressMapping { current: c2, ..m }))
            .unwrap();
        assert_eq!(table.address_original(Side::Local, c), None);
        assert_eq!(table.address_original(Side::Local, c2), Some(o));
        for _ in 0..2 {
            table
                .apply(&TableChange::RemoveAddress {
                    side: Side::Local,
                    original: o,
                })
                .unwrap();
        }
        assert_eq!(table.address_count(), 0);
        assert!(!table.has_addresses());
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use crate::translate::Protocol;

    fn tuple(p: Protocol, l: &str, r: &str) -> Tuple {
        Tuple::new(p, l.parse().unwrap(), r.parse().unwrap())
    }

    #[test]
    fn keys_are_equal_exactly_when_tuples_are() {
        let mut scoped: std::net::SocketAddrV6 = "[fe80::1]:80".parse().unwrap();
        scoped.set_scope_id(3);
        let mut flowed: std::net::SocketAddrV6 = "[fe80::1]:80".parse().unwrap();
        flowed.set_flowinfo(7);
        let tuples = [
            tuple(Protocol::Tcp, "10.0.0.1:1", "10.0.0.2:2"),
            tuple(Protocol::Udp, "10.0.0.1:1", "10.0.0.2:2"),
            tuple(Protocol::Tcp, "10.0.0.2:2", "10.0.0.1:1"),
            tuple(Protocol::Tcp, "10.0.0.1:2", "10.0.0.2:1"),
            // An IPv4-mapped IPv6 tuple is another tuple than the IPv4 one.
            tuple(Protocol::Tcp, "[::ffff:10.0.0.1]:1", "[::ffff:10.0.0.2]:2"),
            tuple(Protocol::Tcp, "[::a00:1]:1", "[::a00:2]:2"),
            tuple(Protocol::Tcp, "[fe80::1]:80", "[fe80::2]:80"),
            Tuple::new(
                Protocol::Tcp,
                SocketAddr::V6(scoped),
                "[fe80::2]:80".parse().unwrap(),
            ),
            Tuple::new(
                Protocol::Tcp,
                SocketAddr::V6(flowed),
                "[fe80::2]:80".parse().unwrap(),
            ),
            // Mixed families are refused by the table but must not collide either.
            tuple(Protocol::Tcp, "10.0.0.1:1", "[::a00:2]:2"),
        ];
        for a in &tuples {
            for b in &tuples {
                assert_eq!(TupleKey::of(a) == TupleKey::of(b), a == b, "{a} / {b}");
            }
        }
    }
}

#[cfg(test)]
mod path_tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;

    use super::*;
    use crate::translate::Protocol;

    /// A small universe of tuples, so that random changes collide: IPv4, IPv6, and IPv6
    /// with a scope id or flow information (which packets never carry).
    fn tuple(n: u8) -> Tuple {
        let port = 1000 + u16::from(n % 3);
        let proto = if n.is_multiple_of(7) {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let (l, r): (SocketAddr, SocketAddr) = match n % 4 {
            0 | 1 => (
                (Ipv4Addr::new(10, 0, 0, n / 4 % 3), port).into(),
                (Ipv4Addr::new(10, 9, 0, 1), 80).into(),
            ),
            2 => (
                (
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n / 4 % 3)),
                    port,
                )
                    .into(),
                (Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1), 80).into(),
            ),
            _ => (
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n / 4 % 3)),
                    port,
                    u32::from(n / 12 % 2),
                    1 - u32::from(n / 12 % 2),
                )),
                (Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1), 80).into(),
            ),
        };
        Tuple::new(proto, l, r)
    }

    fn lookup(index: &PathIndex, t: &Tuple) -> Option<(TupleKey, bool)> {
        match TupleKey::of(t) {
            TupleKey::V4(k) => index
                .get4(&k)
                .map(|v| (TupleKey::V4(Key4(v.0 & !HOLD)), v.hold())),
            TupleKey::V6(k) => index.get6(&k).map(|v| {
                (
                    TupleKey::V6(Key6 {
                        ports: v.ports & !(HOLD as u64),
                        ..v
                    }),
                    v.hold(),
                )
            }),
            TupleKey::Other(_) => None,
        }
    }

    proptest! {
        /// After any sequence of changes, accepted or refused, the packet path's
        /// indexes say what the entries say: by every tuple a packet can carry, the
        /// entry's other tuple (addresses, ports and protocol) and, on egress, its hold.
        #[test]
        fn the_packet_paths_indexes_follow_the_entries(
            changes in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<u8>(), any::<bool>()), 1..40),
        ) {
            let mut table = TranslationTable::new(3);
            for (install, a, b, hold) in changes {
                let change = if install {
                    TableChange::InstallFlow(FlowMapping { original: tuple(a), current: tuple(b), hold })
                } else {
                    TableChange::RemoveFlow { original: tuple(a) }
                };
                let _ = table.apply(&change);
                for n in 0..=255u8 {
                    let t = tuple(n);
                    let packable = !has_extras(&t);
                    let egress = table.flow_by_original(&t).filter(|_| packable).map(|m| (packed(&m.current).unwrap(), m.hold));
                    prop_assert_eq!(lookup(&table.egress, &t), egress, "egress {}", t);
                    let ingress = table.flow_by_current(&t).filter(|_| packable).map(|m| (packed(&m.original).unwrap(), false));
                    prop_assert_eq!(lookup(&table.ingress, &t), ingress, "ingress {}", t);
                }
            }
            let count = table.flow_count();
            prop_assert_eq!(table.egress.v4.len() + table.egress.v6.len() <= count, true);
            table.clear();
            prop_assert_eq!(table.egress.v4.len() + table.ingress.v6.len(), 0);
        }
    }
}
