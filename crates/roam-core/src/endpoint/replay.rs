//! Anti-replay sliding window over the header's Replay Protect ID (seed 001 FIG. 5),
//! in the manner of IPsec ESP (RFC 4303 §3.4.3): accept an ID newer than any seen, or
//! one within the window not seen before; everything else is a replay.

/// How many IDs behind the newest are still accepted (out-of-order delivery).
pub const WINDOW: u64 = 64;

#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    /// Newest ID accepted, `None` before the first.
    newest: Option<u64>,
    /// Bit `i` set: ID `newest - i` was accepted.
    seen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayCheck {
    Fresh,
    Replayed,
}

impl ReplayWindow {
    /// Checks without recording: call [`ReplayWindow::record`] only once the message
    /// has been authenticated (RFC 4303: the window moves only for verified packets).
    pub fn check(&self, id: u64) -> ReplayCheck {
        let Some(newest) = self.newest else {
            return ReplayCheck::Fresh;
        };
        if id > newest {
            return ReplayCheck::Fresh;
        }
        let behind = newest - id;
        if behind >= WINDOW || self.seen & (1 << behind) != 0 {
            ReplayCheck::Replayed
        } else {
            ReplayCheck::Fresh
        }
    }

    pub fn record(&mut self, id: u64) {
        match self.newest {
            None => {
                self.newest = Some(id);
                self.seen = 1;
            }
            Some(newest) if id > newest => {
                let shift = id - newest;
                self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.newest = Some(id);
            }
            Some(newest) => {
                let behind = newest - id;
                if behind < WINDOW {
                    self.seen |= 1 << behind;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_id_once_and_tolerates_reordering_within_the_window() {
        let mut w = ReplayWindow::default();
        for id in [10, 12, 11, 40, 13] {
            assert_eq!(w.check(id), ReplayCheck::Fresh, "id {id}");
            w.record(id);
        }
        for id in [10, 11, 12, 13, 40] {
            assert_eq!(w.check(id), ReplayCheck::Replayed, "id {id}");
        }
        assert_eq!(w.check(39), ReplayCheck::Fresh);
    }

    #[test]
    fn refuses_ids_older_than_the_window() {
        let mut w = ReplayWindow::default();
        w.record(1000);
        assert_eq!(w.check(1000 - WINDOW), ReplayCheck::Replayed);
        assert_eq!(w.check(1000 - WINDOW + 1), ReplayCheck::Fresh);
        w.record(1000 + 2 * WINDOW);
        assert_eq!(w.check(1001), ReplayCheck::Replayed);
    }
}
