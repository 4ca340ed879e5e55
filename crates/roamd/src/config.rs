//! Reading a host's configuration and key files: the I/O around the parsing in
//! `roam_core::config`, shared by `roamd` and the CLI's `check-config` and `pubkey`, so
//! that both refuse the same things.

use std::path::Path;

use roam_core::config::{ConfigError, HostConfig, parse_key_file};
use roam_core::security::StaticKey;

/// Reads a key file as `roam keygen` wrote it.
pub fn read_key_file(path: &Path) -> Result<StaticKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: path.display().to_string(),
        line: None,
        message: format!("cannot read the key file: {e}"),
    })?;
    parse_key_file(&text).map_err(|e| ConfigError {
        origin: path.display().to_string(),
        line: None,
        message: format!("not a roam key: {e}"),
    })
}

/// Reads and validates a host configuration file, then its key file, which must not be
/// readable by others (as ssh refuses such a key). What the CLI's `check-config` and the
/// daemon both use, so both refuse the same things.
pub fn load_host(path: &Path) -> Result<(HostConfig, StaticKey), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: path.display().to_string(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    let cfg = HostConfig::from_toml(&text, path)?;
    let key = read_key_file(&cfg.private_key_file)?;
    check_key_file_mode(&cfg.private_key_file)?;
    Ok((cfg, key))
}

/// A private key readable by group or others is refused.
pub fn check_key_file_mode(path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            line: None,
            message: format!("cannot stat the key file: {e}"),
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError {
                origin: path.display().to_string(),
                line: None,
                message: format!(
                    "mode {:o} lets others read the private key (chmod 600 it)",
                    mode & 0o777
                ),
            });
        }
    }
    Ok(())
}
