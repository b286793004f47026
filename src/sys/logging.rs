//! Logging setup: journald when systemd connected our stderr to the journal,
//! stderr otherwise (plain text unless stderr is a terminal).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journald.with_syslog_identifier("sparkd".into()))
                    .try_init();
                return;
            }
            Err(e) => eprintln!("sparkd: journald unavailable ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                // Escape codes only for a person at a terminal, never in files or pipes.
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .try_init();
}

/// systemd's documented test: `$JOURNAL_STREAM` is `<device>:<inode>` of the
/// stream it gave us, and only counts while stderr is still that stream (a
/// technician running `sparkd run` in a shell on the device wants stderr,
/// even though the journal socket exists there).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), stderr.dev(), stderr.ino())
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let mut parts = value.splitn(2, ':');
    let (Some(d), Some(i)) = (parts.next(), parts.next()) else {
        return false;
    };
    d.trim().parse::<u64>().ok() == Some(dev) && i.trim().parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::journal_stream_matches;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(journal_stream_matches("25:1234", 25, 1234));
        assert!(!journal_stream_matches("25:1234", 25, 999));
        assert!(!journal_stream_matches("26:1234", 25, 1234));
        assert!(!journal_stream_matches("garbage", 25, 1234));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
