//! Logging setup: journald when systemd connected our stderr to the journal,
//! stderr otherwise (plain text unless stderr is a terminal).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A log filter sparkd does not hand to `tracing-subscriber`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFilter {
    #[error("empty")]
    Empty,
    #[error("longer than {MAX_FILTER_BYTES} bytes")]
    TooLong,
    #[error(
        "directive {0:?} is not `LEVEL`, `TARGET` or `TARGET=LEVEL` (LEVEL: trace, debug, info, warn, error, off; TARGET: letters, digits, `_`, `-`, `.`, `::`)"
    )]
    Directive(String),
}

const MAX_FILTER_BYTES: usize = 512;
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a filter (`log.level`, `RUST_LOG`) against the small grammar sparkd
/// documents, before `tracing-subscriber` parses it: its parser panics on
/// some inputs (whitespace inside a directive, found by the `config` fuzz
/// target), and span or field filters are of no use on a device.
pub fn check_filter(filter: &str) -> Result<(), BadFilter> {
    if filter.is_empty() {
        return Err(BadFilter::Empty);
    }
    if filter.len() > MAX_FILTER_BYTES {
        return Err(BadFilter::TooLong);
    }
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s));
    let is_target =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    for d in filter.split(',') {
        let ok = match d.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_target(d),
        };
        if !ok {
            return Err(BadFilter::Directive(d.chars().take(64).collect()));
        }
    }
    Ok(())
}

/// Installs the global subscriber. `RUST_LOG` overrides `level` when it
/// passes [`check_filter`].
pub fn init(level: &str) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|f| match check_filter(f) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("sparkd: ignoring RUST_LOG: {e}");
            false
        }
    });
    let filter = from_env
        .or_else(|| check_filter(level).is_ok().then(|| level.to_string()))
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
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
    #[test]
    fn filters_outside_the_grammar_are_refused_before_tracing_parses_them() {
        for ok in ["info", "warn,spark_edge=debug", "spark_edge::uplink=trace", "OFF", "rumqttc"] {
            assert_eq!(super::check_filter(ok), Ok(()), "{ok}");
            assert!(tracing_subscriber::EnvFilter::try_new(ok).is_ok(), "{ok}");
        }
        // The fuzzer's crash: whitespace inside a directive panicked tracing-subscriber 0.3.
        let crash = "spleave two111leave two111111111111tapture, storage and vv";
        assert!(matches!(super::check_filter(crash), Err(super::BadFilter::Directive(_))));
        for bad in ["", " info", "info ", "a=b=c", "x=loud", "[span]=info", "t[{f=1}]=debug", ",", "a,,b"] {
            assert!(super::check_filter(bad).is_err(), "{bad:?}");
        }
        assert_eq!(super::check_filter(&"a".repeat(600)), Err(super::BadFilter::TooLong));
    }

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
