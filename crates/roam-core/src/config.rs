//! A host's configuration file: its key and the peers it trusts (docs/SECURITY.md), as
//! WireGuard's `[Peer] PublicKey` or SSH's `known_hosts`.
//!
//! ```toml
//! # The host's private key, as `roam keygen` wrote it (relative to this file).
//! private_key_file = "host.key"
//! # Accept keys not listed below, remembering at most this many (logged each time).
//! # Off unless set.
//! trust_on_first_use = false
//! max_learned_keys = 1024
//!
//! [[peer]]
//! name = "laptop"
//! public_key = "5lpx/7tCxNUHyxNs0dDxr6j+xoOPqay9XGZTpRb1PAE="
//!
//! # What roamd does (every key optional; these are the defaults).
//! [daemon]
//! control_port = 4791          # UDP port of the control channel, here and at peers
//! data_plane = "nftables"      # or "tun" (userspace), "tunnel" (userspace, wrapped in UDP),
//!                              # or "none": agree moves, translate nothing
//! tunnel_port = 4792           # tunnel mode's UDP port, here and at peers (control_port + 1)
//! flow_scan_ms = 200           # how often sock_diag is asked for the host's flows
//! nudge = true                 # make TCP retransmit at once after a move
//! move_message = "connection-update"   # or "migration-request", "address-change"
//! ```
//!
//! Everything here is I/O-free ([`HostConfig::from_toml`], [`parse_key_file`]): reading
//! the files is the daemon's (`roamd::config`). Every error names the line it is on.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use crate::security::{PublicKey, StaticKey, Trust};

/// A configuration error: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConfigError {
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// A validated configuration. The key file is named, not yet read.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Resolved against the configuration file's directory.
    pub private_key_file: PathBuf,
    pub peers: BTreeMap<PublicKey, String>,
    pub trust_on_first_use: bool,
    pub max_learned_keys: usize,
    pub daemon: DaemonSettings,
}

/// Which kernel data plane roamd drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataPlaneKind {
    /// In-kernel stateless rewriting with nftables (docs/ARCHITECTURE.md).
    #[default]
    Nftables,
    /// roamd rewrites packets itself, read from and written to TUN devices (policy
    /// routing and tc bring a translated flow's packets there): the fallback where
    /// nftables is not available, and the base of tunnel mode.
    Tun,
    /// Tunnel mode (seed 002's tunnel mode, seed 003's transition tunnel): as `Tun`
    /// on the way out, but a moved flow's packets travel whole, wrapped in UDP between
    /// the hosts' current addresses on `tunnel_port`, instead of rewritten. Both ends
    /// of a flow must use it.
    Tunnel,
    /// No translation at all: roamd agrees moves but rewrites nothing (for tests and
    /// for watching what roam would do).
    None,
}

/// The `[daemon]` section: how roamd runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DaemonSettings {
    pub control_port: u16,
    pub data_plane: DataPlaneKind,
    /// Tunnel mode's UDP port, here and at peers: `control_port + 1` unless set (0 when
    /// that does not exist and tunnel mode is off).
    pub tunnel_port: u16,
    /// How often the host's sockets are listed (sock_diag). Flows opened between two
    /// scans are found at the next one, or at once when an address goes away.
    pub flow_scan: std::time::Duration,
    /// Whether roam makes the local TCP send an ACK after a move (the nudge).
    pub nudge: bool,
    pub move_message: crate::endpoint::MoveMessage,
}

impl Default for DaemonSettings {
    fn default() -> DaemonSettings {
        DaemonSettings {
            control_port: roam_wire::DEFAULT_CONTROL_PORT,
            data_plane: DataPlaneKind::default(),
            tunnel_port: roam_wire::DEFAULT_CONTROL_PORT + 1,
            flow_scan: std::time::Duration::from_millis(200),
            nudge: true,
            move_message: crate::endpoint::MoveMessage::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    private_key_file: Spanned<String>,
    #[serde(default)]
    trust_on_first_use: bool,
    max_learned_keys: Option<Spanned<u64>>,
    #[serde(default, rename = "peer")]
    peers: Vec<PeerSpec>,
    daemon: Option<Spanned<DaemonSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonSpec {
    control_port: Option<Spanned<u16>>,
    data_plane: Option<Spanned<DataPlaneKind>>,
    tunnel_port: Option<Spanned<u16>>,
    flow_scan_ms: Option<Spanned<u64>>,
    nudge: Option<bool>,
    move_message: Option<crate::endpoint::MoveMessage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSpec {
    name: Spanned<String>,
    public_key: Spanned<String>,
}

impl HostConfig {
    /// Parses `text`, the contents of the file at `origin` (used for messages and to
    /// resolve a relative key file path).
    pub fn from_toml(text: &str, origin: &Path) -> Result<HostConfig, ConfigError> {
        let name = origin.display().to_string();
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let err = |span: std::ops::Range<usize>, message: String| ConfigError {
            origin: name.clone(),
            line: Some(line_of(span.start)),
            message,
        };
        let spec: FileSpec = toml::from_str(text).map_err(|e| ConfigError {
            origin: name.clone(),
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().to_string(),
        })?;
        let key_file = spec.private_key_file.get_ref();
        if key_file.is_empty() {
            return Err(err(
                spec.private_key_file.span(),
                "private_key_file is empty".into(),
            ));
        }
        let base = origin.parent().unwrap_or(Path::new("."));
        let private_key_file = base.join(key_file);
        let max_learned_keys = match &spec.max_learned_keys {
            None => 1024,
            Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => return Err(err(n.span(), "max_learned_keys must be 1..=1000000".into())),
        };
        let mut peers = BTreeMap::new();
        let mut names = BTreeMap::new();
        for p in &spec.peers {
            let key: PublicKey = p
                .public_key
                .get_ref()
                .parse()
                .map_err(|e| err(p.public_key.span(), format!("public_key: {e}")))?;
            let n = p.name.get_ref();
            if n.trim().is_empty() {
                return Err(err(p.name.span(), "a peer needs a name".into()));
            }
            if let Some(other) = peers.insert(key, n.clone()) {
                return Err(err(
                    p.public_key.span(),
                    format!("peers \"{other}\" and \"{n}\" have the same public key"),
                ));
            }
            if names.insert(n.clone(), ()).is_some() {
                return Err(err(p.name.span(), format!("two peers are named \"{n}\"")));
            }
        }
        if peers.is_empty() && !spec.trust_on_first_use {
            return Err(ConfigError {
                origin: name,
                line: None,
                message: "no [[peer]] and trust_on_first_use is off: this host would trust no one".into(),
            });
        }
        let mut daemon = DaemonSettings::default();
        if let Some(d) = &spec.daemon {
            let d = d.get_ref();
            if let Some(p) = &d.control_port {
                if *p.get_ref() == 0 {
                    return Err(err(p.span(), "control_port must be 1..=65535".into()));
                }
                daemon.control_port = *p.get_ref();
            }
            if let Some(ms) = &d.flow_scan_ms {
                if !(10..=10_000).contains(ms.get_ref()) {
                    return Err(err(ms.span(), "flow_scan_ms must be 10..=10000".into()));
                }
                daemon.flow_scan = std::time::Duration::from_millis(*ms.get_ref());
            }
            daemon.data_plane = d.data_plane.as_ref().map(|p| *p.get_ref()).unwrap_or_default();
            daemon.tunnel_port = match &d.tunnel_port {
                Some(p) if *p.get_ref() == 0 => {
                    return Err(err(p.span(), "tunnel_port must be 1..=65535".into()));
                }
                Some(p) if *p.get_ref() == daemon.control_port => {
                    return Err(err(p.span(), "tunnel_port must differ from control_port".into()));
                }
                Some(p) => *p.get_ref(),
                None => match daemon.control_port.checked_add(1) {
                    Some(p) => p,
                    None if daemon.data_plane == DataPlaneKind::Tunnel => {
                        let span = d.data_plane.as_ref().map_or(0..0, |p| p.span());
                        return Err(err(
                            span,
                            "control_port 65535 leaves no default tunnel_port (control_port + 1): set tunnel_port"
                                .into(),
                        ));
                    }
                    None => 0,
                },
            };
            daemon.nudge = d.nudge.unwrap_or(true);
            daemon.move_message = d.move_message.unwrap_or_default();
        }
        Ok(HostConfig {
            private_key_file,
            peers,
            trust_on_first_use: spec.trust_on_first_use,
            max_learned_keys,
            daemon,
        })
    }

    /// The trust policy this configuration describes.
    pub fn trust(&self) -> Trust {
        let mut t = Trust::keys(self.peers.iter().map(|(k, n)| (*k, n.clone())));
        t.tofu = self.trust_on_first_use;
        t.max_learned = self.max_learned_keys;
        t
    }
}

/// Parses a key file's contents: the private key in base64 (as `roam keygen` writes
/// it), surrounding whitespace and `#` comment lines allowed.
pub fn parse_key_file(text: &str) -> Result<StaticKey, crate::security::KeyError> {
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    StaticKey::from_base64(&body)
}

/// What a key file holds, for writing: the private key in base64 and a comment with
/// its public key.
pub fn key_file_contents(key: &StaticKey) -> String {
    format!(
        "# roam host key; public key {}\n{}\n",
        key.public(),
        key.to_base64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5lpx/7tCxNUHyxNs0dDxr6j+xoOPqay9XGZTpRb1PAE=";

    fn parse(text: &str) -> Result<HostConfig, ConfigError> {
        HostConfig::from_toml(text, Path::new("/etc/roam/roam.toml"))
    }

    #[test]
    fn a_valid_file_lists_its_peers_and_resolves_the_key_path() {
        let c = parse(&format!(
            "private_key_file = \"host.key\"\n[[peer]]\nname = \"laptop\"\npublic_key = \"{KEY}\"\n"
        ))
        .unwrap();
        assert_eq!(c.private_key_file, PathBuf::from("/etc/roam/host.key"));
        assert_eq!(c.peers.len(), 1);
        assert!(!c.trust_on_first_use);
        let mut t = c.trust();
        assert_eq!(
            t.decide(&KEY.parse().unwrap()),
            crate::security::TrustDecision::Trusted
        );
        assert_eq!(
            t.decide(&PublicKey([9; 32])),
            crate::security::TrustDecision::Rejected
        );
    }

    #[test]
    fn each_mistake_is_named_with_its_line() {
        let cases = [
            (
                "private_key_file = \"k\"\n[[peer]]\nname = \"x\"\npublic_key = \"AAAA\"\n",
                4,
                "32 bytes",
            ),
            (
                "private_key_file = \"k\"\n[[peer]]\nname = \"x\"\npublic_key = \"!!\"\n",
                4,
                "base64",
            ),
            ("private_key_file = \"k\"\nbogus = 1\n", 2, "unknown field"),
            (
                &format!(
                    "private_key_file = \"k\"\n[[peer]]\nname = \"x\"\npublic_key = \"{KEY}\"\n[[peer]]\nname = \"y\"\npublic_key = \"{KEY}\"\n"
                ),
                7,
                "same public key",
            ),
            ("private_key_file = \"\"\ntrust_on_first_use = true\n", 1, "empty"),
            (
                "private_key_file = \"k\"\ntrust_on_first_use = true\nmax_learned_keys = 0\n",
                3,
                "max_learned_keys",
            ),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{e}");
            assert!(e.message.contains(what), "{e}");
        }
        let e = parse("private_key_file = \"k\"\n").unwrap_err();
        assert!(e.message.contains("trust no one"), "{e}");
        let tofu = "private_key_file = \"k\"\ntrust_on_first_use = true\n";
        for (extra, line, what) in [
            ("[daemon]\ncontrol_port = 0\n", 4, "control_port"),
            ("[daemon]\ncontrol_port = 70000\n", 4, ""),
            ("[daemon]\nflow_scan_ms = 5\n", 4, "flow_scan_ms"),
            ("[daemon]\ndata_plane = \"ebpf\"\n", 4, "data_plane"),
            ("[daemon]\ntunnel_port = 0\n", 4, "tunnel_port"),
            ("[daemon]\ncontrol_port = 5000\ntunnel_port = 5000\n", 5, "differ"),
            (
                "[daemon]\ncontrol_port = 65535\ndata_plane = \"tunnel\"\n",
                5,
                "set tunnel_port",
            ),
            ("[daemon]\nmove_message = \"teleport\"\n", 4, "move_message"),
            ("[daemon]\nnudge = 1\n", 4, "expected a boolean"),
            ("[daemon]\nport = 1\n", 4, "unknown field"),
        ] {
            let e = parse(&format!("{tofu}{extra}")).unwrap_err();
            assert_eq!(e.line, Some(line), "{e}");
            assert!(
                e.message.contains(what) || e.message.contains("unknown variant"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_daemon_section_is_optional_and_read_when_present() {
        let tofu = "private_key_file = \"k\"\ntrust_on_first_use = true\n";
        assert_eq!(parse(tofu).unwrap().daemon, DaemonSettings::default());
        let c = parse(&format!(
            "{tofu}[daemon]\ncontrol_port = 5000\ndata_plane = \"none\"\nflow_scan_ms = 50\nnudge = false\nmove_message = \"address-change\"\n"
        ))
        .unwrap();
        assert_eq!(c.daemon.control_port, 5000);
        assert_eq!(c.daemon.data_plane, DataPlaneKind::None);
        assert_eq!(c.daemon.flow_scan, std::time::Duration::from_millis(50));
        assert!(!c.daemon.nudge);
        assert_eq!(c.daemon.move_message, crate::endpoint::MoveMessage::AddressChange);
        // The tunnel port follows the control port unless set.
        assert_eq!(c.daemon.tunnel_port, 5001);
        assert_eq!(DaemonSettings::default().tunnel_port, 4792);
        let c = parse(&format!(
            "{tofu}[daemon]\ndata_plane = \"tunnel\"\ntunnel_port = 9000\n"
        ))
        .unwrap();
        assert_eq!(
            (c.daemon.data_plane, c.daemon.tunnel_port),
            (DataPlaneKind::Tunnel, 9000)
        );
        // Outside tunnel mode the highest control port needs no tunnel port.
        let c = parse(&format!("{tofu}[daemon]\ncontrol_port = 65535\n")).unwrap();
        assert_eq!(c.daemon.tunnel_port, 0);
    }

    #[test]
    fn every_data_plane_is_named_and_a_wrong_one_is_told_the_choices() {
        let tofu = "private_key_file = \"k\"\ntrust_on_first_use = true\n[daemon]\n";
        for (name, kind) in [
            ("nftables", DataPlaneKind::Nftables),
            ("tun", DataPlaneKind::Tun),
            ("tunnel", DataPlaneKind::Tunnel),
            ("none", DataPlaneKind::None),
        ] {
            let c = parse(&format!("{tofu}data_plane = \"{name}\"\n")).unwrap();
            assert_eq!(c.daemon.data_plane, kind);
        }
        let e = parse(&format!("{tofu}data_plane = \"tap\"\n")).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        for choice in ["nftables", "tun", "tunnel", "none"] {
            assert!(e.message.contains(choice), "{e}");
        }
    }

    #[test]
    fn trust_on_first_use_is_explicit_and_bounded() {
        let c = parse("private_key_file = \"k\"\ntrust_on_first_use = true\nmax_learned_keys = 1\n").unwrap();
        let mut t = c.trust();
        assert_eq!(
            t.decide(&PublicKey([1; 32])),
            crate::security::TrustDecision::Learned
        );
        assert_eq!(
            t.decide(&PublicKey([1; 32])),
            crate::security::TrustDecision::Trusted
        );
        assert_eq!(
            t.decide(&PublicKey([2; 32])),
            crate::security::TrustDecision::Rejected
        );
    }

    #[test]
    fn a_key_file_round_trips_and_rejects_garbage() {
        let k = StaticKey::from_bytes([3; 32]);
        let text = key_file_contents(&k);
        assert!(text.contains(&k.public().to_string()));
        assert_eq!(parse_key_file(&text).unwrap().public(), k.public());
        assert!(parse_key_file("# nothing\n").is_err());
        assert!(parse_key_file("not base64 at all").is_err());
    }
}
