//! `sparkd`: the spark-edge daemon.
//!
//!   sparkd run [--config PATH]     run until SIGTERM (no --config: the demo)
//!   sparkd check-config PATH       validate a config file

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spark_edge::config::Config;
use spark_edge::update::binary::{self, Boot};

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
    CheckConfig {
        path: PathBuf,
        /// Check the config `sparkd run --config PATH` would actually use: a
        /// fleet-activated config in the state directory takes the file's
        /// place unless it is rolled back (changes nothing on disk).
        #[arg(long)]
        effective: bool,
    },
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
        Command::CheckConfig { path, effective } => match Config::load(&path) {
            Ok(file_config) => {
                if let Err(issue) = check_rule_labels(&file_config, &path) {
                    eprintln!("invalid config:\n  {issue}");
                    return ExitCode::from(1);
                }
                println!("{}: valid", path.display());
                let ids: Vec<&str> = file_config.cameras().iter().map(|c| c.id.as_str()).collect();
                println!("cameras: {} ({})", file_config.camera_form(), ids.join(", "));
                if effective {
                    let state_dir = spark_edge::daemon::Paths::resolve(&file_config).state_dir;
                    let choice = spark_edge::update::config_trial::choose(file_config, &state_dir);
                    if let Some(t) = &choice.rolled_back {
                        println!("fleet config {} will be rolled back at start", t.version_dir);
                    }
                    match &choice.fleet_path {
                        Some(p) => println!("{}: valid; sparkd run uses this fleet-activated config", p.display()),
                        None => println!("sparkd run uses {}", path.display()),
                    }
                }
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
            spark_edge::sys::logging::init(&config.log.level);
            // The packaged binary launches the right one; a slot binary
            // (started by it) does not launch again.
            if std::env::var_os(binary::SLOT_ENV).is_none() {
                launch(&config);
            }
            match spark_edge::daemon::run_from(config, config_path) {
                // A binary update was staged: the service manager starts us again.
                Ok(()) if binary::restart_requested() => ExitCode::from(binary::RESTART_EXIT_CODE),
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

/// Runs the binary the update store chose (docs/updates.md, "Binary A/B"):
/// returns only when this packaged binary is to run.
fn launch(config: &Config) {
    let state_dir = spark_edge::daemon::Paths::resolve(config).state_dir;
    match binary::prepare_start(&state_dir) {
        Ok(Boot::Packaged) => {}
        Ok(Boot::Exec { slot, path, trial, update_id }) => {
            tracing::info!(binary = %path.display(), slot = slot.dir_name(), trial, "starting the sparkd of the binary slot");
            let err = binary::exec(&path, slot);
            tracing::error!(binary = %path.display(), error = %err, "cannot start the slot's sparkd; running the packaged one");
            if let (true, Some(id)) = (trial, update_id) {
                let why = format!("the new binary cannot be started: {err}");
                if let Err(e) = binary::roll_back(&state_dir, &id, &why) {
                    tracing::error!(error = %report(&e), "recording the binary rollback");
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %report(&e), "reading the binary update state; running the packaged sparkd");
        }
    }
}

/// Zones and lines may only name labels the configured model has. A model
/// that does not load here is not an error of this file (`sparkd run`
/// reports it), so the labels are then left to the start-up check.
fn check_rule_labels(config: &Config, path: &std::path::Path) -> Result<(), spark_edge::config::ConfigIssue> {
    if config.zones.is_empty() && config.lines.is_empty() {
        return Ok(());
    }
    let Ok(model) = spark_edge::inference::model::Model::load(&config.model.manifest) else {
        eprintln!(
            "note: model {} not readable here; zone and line labels are checked at start",
            config.model.manifest.display()
        );
        return Ok(());
    };
    let m = &model.manifest;
    spark_edge::events::stage::check_labels(config, &m.name, &m.labels).map_err(|e| {
        let spark_edge::events::stage::EventsError::UnknownLabel { key, .. } = &e;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        spark_edge::config::ConfigIssue {
            file: path.to_path_buf(),
            line: spark_edge::config::key_line(&text, key),
            key: key.clone(),
            message: e.to_string(),
        }
    })
}

/// The error and its whole `#[source]` chain on one line.
fn report(e: &(dyn std::error::Error + 'static)) -> String {
    spark_edge::error_chain(e)
}
