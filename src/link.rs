//! Link monitor: decides whether the uplink may drain (the VPN gate).
//!
//! Owns watching the configured WireGuard interface; publishes `true`/`false`
//! on a watch channel. With no interface configured the gate is always open.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::LinkConfig;
use crate::state::Shared;

/// Starts the monitor and returns the gate.
pub fn spawn_gate(
    rt: &tokio::runtime::Runtime,
    cfg: &LinkConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    if cfg.vpn_interface.is_empty() {
        shared.update_link(|l| {
            l.vpn_up = true;
            l.vpn_interface = None;
        });
        let (_tx, rx) = watch::channel(true);
        // Keep the sender alive for the life of the process so `changed()`
        // never fires spuriously.
        std::mem::forget(_tx);
        return rx;
    }
    let iface = cfg.vpn_interface.clone();
    let (tx, rx) = watch::channel(false);
    rt.spawn(async move {
        loop {
            let up = interface_up(&iface);
            shared.update_link(|l| {
                l.vpn_up = up;
                l.vpn_interface = Some(iface.clone());
            });
            tx.send_if_modified(|v| std::mem::replace(v, up) != up);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
    rx
}

/// The interface exists and is administratively up. WireGuard reports
/// operstate `unknown` while up, so IFF_UP from `flags` is the signal.
pub fn interface_up(name: &str) -> bool {
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok();
    flags
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 0x1 != 0)
}
