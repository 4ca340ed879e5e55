//! The translation table (seed 000 ¶0047, FIG. 7): original tuple <-> current tuple,
//! indexed both ways, plus address-only mappings (seed 002's virtual <-> actual address).

use std::collections::HashMap;
use std::net::IpAddr;

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

/// The table a data plane translates with. Lookups are O(1); nothing here iterates a
/// hash map to decide anything, so a seeded table behaves the same on every run.
#[derive(Clone, Debug)]
pub struct TranslationTable {
    by_original: Map<Tuple, FlowMapping>,
    /// current -> original
    by_current: Map<Tuple, Tuple>,
    /// (side, original address) -> current address
    addr_by_original: Map<(Side, IpAddr), IpAddr>,
    /// (side, current address) -> original address
    addr_by_current: Map<(Side, IpAddr), IpAddr>,
}

impl TranslationTable {
    /// `hash_seed` keys the hash tables: random in the daemon, seeded in the simulator.
    pub fn new(hash_seed: u64) -> TranslationTable {
        let h = || FixedState::with_seed(hash_seed);
        TranslationTable {
            by_original: HashMap::with_hasher(h()),
            by_current: HashMap::with_hasher(h()),
            addr_by_original: HashMap::with_hasher(h()),
            addr_by_current: HashMap::with_hasher(h()),
        }
    }

    pub fn apply(&mut self, change: &TableChange) -> Result<(), TableError> {
        match change {
            TableChange::InstallFlow(m) => self.install_flow(*m),
            TableChange::RemoveFlow { original } => {
                if let Some(m) = self.by_original.remove(original) {
                    self.by_current.remove(&m.current);
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
            && *holder != m.original
        {
            return Err(TableError::CurrentInUse {
                current: m.current,
                holder: Box::new(*holder),
            });
        }
        if let Some(old) = self.by_original.insert(m.original, m) {
            self.by_current.remove(&old.current);
        }
        self.by_current.insert(m.current, m.original);
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
        self.by_current.get(t).and_then(|o| self.by_original.get(o))
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
}
