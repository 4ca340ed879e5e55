//! Scenarios that ship with roam, embedded in the binary so that `roam sim --scenario
//! NAME` works anywhere. The files live in `scenarios/` at the top of the repository.

use crate::scenario::{Scenario, ScenarioError};

/// (name, TOML text) of every built-in scenario.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("demo", include_str!("../../../scenarios/demo.toml")),
    (
        "move-mid-stream",
        include_str!("../../../scenarios/move-mid-stream.toml"),
    ),
    ("move-twice", include_str!("../../../scenarios/move-twice.toml")),
    (
        "lossy-control",
        include_str!("../../../scenarios/lossy-control.toml"),
    ),
    (
        "udp-across-move",
        include_str!("../../../scenarios/udp-across-move.toml"),
    ),
    ("idle-move", include_str!("../../../scenarios/idle-move.toml")),
    (
        "old-address-reused",
        include_str!("../../../scenarios/old-address-reused.toml"),
    ),
    (
        "move-messages",
        include_str!("../../../scenarios/move-messages.toml"),
    ),
    ("rough-path", include_str!("../../../scenarios/rough-path.toml")),
    ("restart", include_str!("../../../scenarios/restart.toml")),
    // docs/SECURITY.md: attacks, each with what must (not) happen.
    (
        "attack-forged-update",
        include_str!("../../../scenarios/attack-forged-update.toml"),
    ),
    (
        "attack-replay",
        include_str!("../../../scenarios/attack-replay.toml"),
    ),
    (
        "attack-redirect",
        include_str!("../../../scenarios/attack-redirect.toml"),
    ),
    (
        "attack-handshake-flood",
        include_str!("../../../scenarios/attack-handshake-flood.toml"),
    ),
    (
        "untrusted-key",
        include_str!("../../../scenarios/untrusted-key.toml"),
    ),
];

/// A built-in scenario by name.
pub fn get(name: &str) -> Option<Result<Scenario, ScenarioError>> {
    SCENARIOS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| Scenario::from_toml(text, &format!("scenarios/{n}.toml")))
}

/// Every built-in scenario, parsed.
pub fn all() -> impl Iterator<Item = Result<Scenario, ScenarioError>> {
    SCENARIOS
        .iter()
        .map(|(n, t)| Scenario::from_toml(t, &format!("scenarios/{n}.toml")))
}
