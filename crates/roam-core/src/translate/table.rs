//! The translation table (seed 000 ¶0047, FIG. 7): original tuple <-> current tuple,
//! indexed both ways, plus address-only mappings (seed 002's virtual <-> actual address).

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::quality::FixedState;
use thiserror::Error;

use super::tuple::{AddressMapping, FlowMapping, Protocol, Side, TableChange, Tuple};

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

/// A tuple as a hash key: its fields packed into integers, so that a lookup hashes one
/// 56-byte block and compares seven words (the derived `Hash`/`Eq` of `Tuple` walk two
/// `SocketAddr` enums field by field, which was most of the rewriter's time per packet,
/// `cargo bench -p roam-core --bench rewrite`). Equal keys if and only if equal tuples:
/// every field `Tuple`'s equality compares is in it (the family, IPv6 flow info and
/// scope included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key([u64; 7]);

impl Key {
    fn of(t: &Tuple) -> Key {
        fn ip(a: &std::net::SocketAddr) -> (u128, u64) {
            match a {
                std::net::SocketAddr::V4(v4) => (u128::from(u32::from(*v4.ip())), 0),
                std::net::SocketAddr::V6(v6) => (
                    u128::from(*v6.ip()),
                    (u64::from(v6.scope_id()) << 32) | u64::from(v6.flowinfo()),
                ),
            }
        }
        let (l, lx) = ip(&t.local);
        let (r, rx) = ip(&t.remote);
        let proto = match t.protocol {
            Protocol::Tcp => 1u64,
            Protocol::Udp => 2,
        };
        let family = (u64::from(t.local.is_ipv6()) << 1) | u64::from(t.remote.is_ipv6());
        Key([
            (l >> 64) as u64,
            l as u64,
            (r >> 64) as u64,
            r as u64,
            (u64::from(t.local.port()) << 48) | (u64::from(t.remote.port()) << 32) | (proto << 8) | family,
            lx,
            rx,
        ])
    }
}

/// The table a data plane translates with. Lookups are O(1); nothing here iterates a
/// hash map to decide anything, so a seeded table behaves the same on every run.
#[derive(Clone, Debug)]
pub struct TranslationTable {
    by_original: Map<Key, FlowMapping>,
    /// current -> the entry (a copy: ingress translation looks up once)
    by_current: Map<Key, FlowMapping>,
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
            by_original: HashMap::with_hasher(h()),
            by_current: HashMap::with_hasher(h()),
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
                if let Some(m) = self.by_original.remove(&Key::of(original)) {
                    self.by_current.remove(&Key::of(&m.current));
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
        let current = Key::of(&m.current);
        if let Some(holder) = self.by_current.get(&current)
            && holder.original != m.original
        {
            return Err(TableError::CurrentInUse {
                current: m.current,
                holder: Box::new(holder.original),
            });
        }
        if let Some(old) = self.by_original.insert(Key::of(&m.original), m) {
            self.by_current.remove(&Key::of(&old.current));
        }
        self.by_current.insert(current, m);
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
        self.by_original.get(&Key::of(t))
    }

    pub fn flow_by_current(&self, t: &Tuple) -> Option<&FlowMapping> {
        self.by_current.get(&Key::of(t))
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
    use std::net::SocketAddr;

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
                assert_eq!(Key::of(a) == Key::of(b), a == b, "{a} / {b}");
            }
        }
    }
}
