//! Device identity: the configured id, else a digest of `/etc/machine-id`.

use sha2::{Digest, Sha256};

/// `configured` when set; else the first 16 hex digits of
/// SHA-256("spark-edge:" + machine-id), so the raw machine id (which systemd
/// asks not to expose) never leaves the device.
/// Neither a configured id nor a machine id to derive one from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no device_id in the config and no /etc/machine-id to derive one from; set device_id")]
pub struct NoDeviceId;

pub fn device_id(configured: &str) -> Result<String, NoDeviceId> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            let id = id.trim();
            if !id.is_empty() {
                return Ok(digest(id));
            }
        }
    }
    Err(NoDeviceId)
}

fn digest(machine_id: &str) -> String {
    let h = Sha256::digest(format!("spark-edge:{machine_id}").as_bytes());
    hex::encode(&h[..8])
}

#[cfg(test)]
mod tests {
    #[test]
    fn configured_id_wins_and_digest_is_stable() {
        assert_eq!(super::device_id("pi-7").unwrap(), "pi-7");
        assert_eq!(super::digest("abc"), super::digest("abc"));
        assert_eq!(super::digest("abc").len(), 16);
        assert_ne!(super::digest("abc"), super::digest("abd"));
    }
}
