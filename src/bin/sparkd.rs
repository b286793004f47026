//! `sparkd`: the spark-edge daemon.
//!
//!   sparkd run [--config PATH]     run until SIGTERM (no --config: the demo)
//!   sparkd check-config PATH       validate a config file

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spark_edge::config::{Config, ConfigError};

#[derive(Parser)]
#[command(name = "sparkd", version, about = "spark-edge daemon: capture, inference, durable outbox, MQTT uplink")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground until SIGTERM. Without --config, runs the
    /// built-in demo configuration (replay camera over models/demo, state in ./var).
    Run {
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 when valid, 1 with errors naming file, line and key.
    CheckConfig { path: PathBuf },
}

fn main() -> ExitCode {
    // HailoRT writes `hailort.log` into the working directory unless told
    // otherwise, which a sandboxed service cannot do. Set it here, while the
    // process is still single-threaded, so hailo-sys never has to.
    if std::env::var_os(hailo_sys::ENV_LOGGER_PATH).is_none() {
        // SAFETY: no other thread exists yet, so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var(hailo_sys::ENV_LOGGER_PATH, "NONE") };
    }
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => match Config::load(&path) {
            Ok(_) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}", report(&e));
                ExitCode::from(1)
            }
        },
        Command::Run { config: config_path } => {
            let config = match &config_path {
                None => Config::demo(),
                Some(p) => match Config::load(p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("sparkd: {}", report(&e));
                        return ExitCode::from(1);
                    }
                },
            };
            spark_edge::logging::init(&config.log.level);
            match spark_edge::daemon::run_from(config, config_path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let msg = report(&e);
                    tracing::error!(error = %msg, "sparkd failed to start");
                    eprintln!("sparkd: {msg}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The error and its whole `#[source]` chain on one line.
fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    if let Some(ConfigError::Invalid(_)) = e.downcast_ref::<ConfigError>() {
        return s;
    }
    s
}
