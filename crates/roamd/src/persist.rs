//! What roamd keeps on disk so that a restart, a `kill -9` or an upgrade does not drop
//! migrated sessions: the translation entries it installed (docs/ARCHITECTURE.md,
//! "State that survives").
//!
//! - **What.** The flow entries (original -> current tuple) and address entries the data
//!   plane has, which host wrote them (its public key) and with which data plane. Not
//!   the peers' session keys: a key on disk would outlive the session it protects (no
//!   forward secrecy for what a stolen disk recorded); the restarted roamd handshakes
//!   again with each peer its restored flows name, as it does at every start.
//! - **When.** After every data-plane batch that changed an entry, before the datagrams
//!   that tell the peer, and at exit. It is on the path of every move, so it must be
//!   cheap: a write and a rename (tens of microseconds for a few flows).
//! - **How.** Safely against what it is for, roamd's own end (a crash, `kill -9`, an
//!   upgrade): the new content goes to a temporary file in the same directory and is
//!   renamed over the old one (atomic on POSIX file systems), so a reader sees the old
//!   state or the new one, never half. It is not flushed to the disk (`fsync`): what it
//!   restores lives in the kernel (the translation entries, the sockets, their TCP
//!   state), and a power cut or a kernel crash ends all of that with the file's page
//!   cache; flushing bought nothing and cost a disk round trip (milliseconds, tens on
//!   a busy disk) inside every handover. A file a power cut left empty or torn is
//!   refused on load (below), which is what it deserves then.
//! - **Refused on load** (logged, counted, and the file set aside as `*.bad`, so the
//!   daemon starts empty rather than not at all): a file that does not parse, of another
//!   format version, or written by another host key (a copied disk image must not make
//!   a host translate someone else's flows).

use std::io::Write;
use std::path::{Path, PathBuf};

use roam_core::translate::{AddressMapping, FlowMapping};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The default place of the state file (systemd's `StateDirectory=roam`).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/roam/state.json";

/// The format written by this version; others are refused.
pub const FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a roamd state file: {reason}", path = .path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: format {found}, this roamd reads format {FORMAT}", path = .path.display())]
    Format { path: PathBuf, found: u32 },
    #[error("{path}: written by host key {found}, this host's is {ours}", path = .path.display())]
    OtherHost {
        path: PathBuf,
        found: String,
        ours: String,
    },
}

/// The persisted state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub format: u32,
    /// The host key (base64 public key) of the roamd that wrote it.
    pub host_key: String,
    /// The data plane it was written for ("nftables", "tun", "none"): entries carry
    /// over between planes too, so this is for people reading the file.
    pub data_plane: String,
    /// Seconds since the Unix epoch, when it was written.
    pub written_at: u64,
    pub flows: Vec<FlowMapping>,
    pub addresses: Vec<AddressMapping>,
}

impl Persisted {
    pub fn new(
        host_key: String,
        data_plane: String,
        flows: Vec<FlowMapping>,
        addresses: Vec<AddressMapping>,
    ) -> Persisted {
        let written_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Persisted {
            format: FORMAT,
            host_key,
            data_plane,
            written_at,
            // A held entry is a move nobody confirmed: it restarts released (the
            // endpoint's restore does the same).
            flows: flows
                .into_iter()
                .map(|m| FlowMapping { hold: false, ..m })
                .collect(),
            addresses,
        }
    }

    /// Whether it holds the same entries as `other` (what a save would change).
    pub fn same_entries(&self, other: &Persisted) -> bool {
        self.flows == other.flows && self.addresses == other.addresses
    }

    /// Writes the state to `path` crash-safely (see the module docs). The directory is
    /// created (mode 0700: the file names this host's flows) if it is missing.
    pub fn save(&self, path: &Path) -> Result<(), PersistError> {
        let io = |source| PersistError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut text = serde_json::to_vec_pretty(self).expect("plain data serializes");
        text.push(b'\n');
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&text).map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Reads the state at `path`, written by the host whose key is `host_key`.
    /// `Ok(None)`: there is none (a first start, or after `roam down`).
    pub fn load(path: &Path, host_key: &str) -> Result<Option<Persisted>, PersistError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        // The format is checked before the rest, so that a future format with other
        // fields is reported as such rather than as garbage.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&text).map_err(|e| PersistError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if head.format != FORMAT {
            return Err(PersistError::Format {
                path: path.to_owned(),
                found: head.format,
            });
        }
        let p: Persisted = serde_json::from_slice(&text).map_err(|e| PersistError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if p.host_key != host_key {
            return Err(PersistError::OtherHost {
                path: path.to_owned(),
                found: p.host_key,
                ours: host_key.to_owned(),
            });
        }
        Ok(Some(p))
    }

    /// Moves a refused state file aside (`state.json` -> `state.json.bad`) so that the
    /// next save does not destroy what a person may want to look at.
    pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
        let mut bad = path.as_os_str().to_owned();
        bad.push(".bad");
        let bad = PathBuf::from(bad);
        std::fs::rename(path, &bad)?;
        Ok(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_core::translate::{Protocol, Side, Tuple};

    fn flow(l: &str, c: &str, hold: bool) -> FlowMapping {
        FlowMapping {
            original: Tuple::new(
                Protocol::Tcp,
                l.parse().unwrap(),
                "10.0.9.2:5001".parse().unwrap(),
            ),
            current: Tuple::new(
                Protocol::Tcp,
                c.parse().unwrap(),
                "10.0.9.2:5001".parse().unwrap(),
            ),
            hold,
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "roamd-persist-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn state() -> Persisted {
        Persisted::new(
            "KEY".into(),
            "nftables".into(),
            vec![
                flow("10.0.1.2:40000", "10.0.2.7:40000", true),
                flow("[2001:db8::1]:40001", "[2001:db8:1::1]:40001", false),
            ],
            vec![AddressMapping {
                side: Side::Local,
                original: "10.0.1.2".parse().unwrap(),
                current: "10.0.2.7".parse().unwrap(),
            }],
        )
    }

    #[test]
    fn what_is_saved_loads_back_released_and_private() {
        let d = dir();
        let path = d.join("sub").join("state.json");
        let s = state();
        assert!(!s.flows[0].hold, "held entries are saved released");
        s.save(&path).unwrap();
        assert_eq!(Persisted::load(&path, "KEY").unwrap(), Some(s.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists(), "no temporary file left");
        // Saving again replaces it whole.
        let empty = Persisted::new("KEY".into(), "nftables".into(), vec![], vec![]);
        empty.save(&path).unwrap();
        let back = Persisted::load(&path, "KEY").unwrap().unwrap();
        assert!(back.same_entries(&empty) && !back.same_entries(&s));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_missing_file_is_a_first_start() {
        assert_eq!(
            Persisted::load(Path::new("/nonexistent/roam/state.json"), "KEY").unwrap(),
            None
        );
    }

    #[test]
    fn garbage_another_format_and_another_hosts_file_are_refused_and_set_aside() {
        let d = dir();
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("state.json");
        for (content, want) in [
            (&b"{ not json"[..], "not a roamd state file"),
            (&b"\xff\xfe\x00"[..], "not a roamd state file"),
            (
                &br#"{"format": 1, "host_key": "KEY"}"#[..],
                "not a roamd state file",
            ),
            (&br#"{"format": 9, "anything": true}"#[..], "format 9"),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = Persisted::load(&path, "KEY").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        state().save(&path).unwrap();
        let e = Persisted::load(&path, "OTHER").unwrap_err().to_string();
        assert!(e.contains("written by host key KEY"), "{e}");
        let bad = Persisted::set_aside(&path).unwrap();
        assert!(bad.ends_with("state.json.bad") && bad.exists() && !path.exists());
        assert_eq!(Persisted::load(&path, "KEY").unwrap(), None);
        std::fs::remove_dir_all(d).unwrap();
    }
}
