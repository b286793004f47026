//! systemd notifications: READY, STOPPING, STATUS and watchdog pings.
//! All are no-ops when not started by systemd (`$NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("running")]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings the watchdog at half the interval systemd asked for, from the async
/// runtime: if the runtime hangs, pings stop and systemd restarts us.
pub async fn watchdog_loop(mut shutdown: watch::Receiver<bool>) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = (interval / 2).max(Duration::from_millis(100));
    loop {
        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}
