//! Which peers a host trusts: a list of public keys, as WireGuard's `[Peer] PublicKey`
//! or SSH's `known_hosts`. Trust on first use is an explicit option: it learns keys it
//! has not seen (and says so), up to a bound, so that a flood of new keys cannot grow
//! the table without limit.

use std::collections::BTreeMap;

use super::identity::PublicKey;

#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Trusted keys, with a name for people.
    pub peers: BTreeMap<PublicKey, String>,
    /// Accept and remember keys not in `peers` (trust on first use).
    pub tofu: bool,
    /// How many keys trust on first use may learn.
    pub max_learned: usize,
    learned: usize,
}

/// What the trust policy says of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustDecision {
    /// Configured (or learned earlier).
    Trusted,
    /// Not configured; trust on first use took it. Log it.
    Learned,
    Rejected,
}

impl Trust {
    /// Trust exactly these keys.
    pub fn keys(peers: impl IntoIterator<Item = (PublicKey, String)>) -> Trust {
        Trust {
            peers: peers.into_iter().collect(),
            tofu: false,
            max_learned: 1024,
            learned: 0,
        }
    }

    /// Trust on first use, learning at most `max_learned` keys.
    pub fn on_first_use(max_learned: usize) -> Trust {
        Trust {
            peers: BTreeMap::new(),
            tofu: true,
            max_learned,
            learned: 0,
        }
    }

    pub fn decide(&mut self, key: &PublicKey) -> TrustDecision {
        if self.peers.contains_key(key) {
            return TrustDecision::Trusted;
        }
        if self.tofu && self.learned < self.max_learned {
            self.learned += 1;
            self.peers.insert(*key, format!("learned {}", key.node_id()));
            return TrustDecision::Learned;
        }
        TrustDecision::Rejected
    }

    pub fn name_of(&self, key: &PublicKey) -> Option<&str> {
        self.peers.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_keys_are_trusted_unless_first_use_is_allowed_and_bounded() {
        let a = PublicKey([1; 32]);
        let b = PublicKey([2; 32]);
        let mut t = Trust::keys([(a, "a".into())]);
        assert_eq!(t.decide(&a), TrustDecision::Trusted);
        assert_eq!(t.decide(&b), TrustDecision::Rejected);
        let mut t = Trust::on_first_use(1);
        assert_eq!(t.decide(&a), TrustDecision::Learned);
        assert_eq!(t.decide(&a), TrustDecision::Trusted);
        assert_eq!(t.decide(&b), TrustDecision::Rejected, "bounded");
    }
}
