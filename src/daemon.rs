//! `sparkd run`: builds every part from the config, runs them, and stops them
//! in order on SIGTERM.
//!
//! Start order: store → update store (completes an interrupted activation) →
//! engine (from the update store's `current` model) → control socket →
//! threads → uplink → READY.
//! Stop order: sources → inference drains its queue → telemetry → uplink
//! (waits briefly for PUBACKs) → outbox writer commits the rest → exit 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::config::{BrokerUrl, CameraSource, Config};
use crate::control::server::{self, ControlContext};
use crate::outbox::{self, Outbox, OutboxOptions};
use crate::record::Stream;
use crate::sources::camera::{CameraQueues, replay};
use crate::sources::telemetry::Sampler;
use crate::state::Shared;
use crate::uplink::{self, UplinkDeps, UplinkSettings};
use crate::{sys::identity, uplink::link};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error(transparent)]
    Model(#[from] crate::inference::model::ModelError),
    #[error("the model does not fit its manifest")]
    ModelFit(#[source] crate::inference::pipeline::InferError),
    #[error("starting the inference engine")]
    Engine(#[from] crate::inference::engine::EngineError),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error(transparent)]
    Control(#[from] server::ControlError),
    #[error("reading the MQTT password (mqtt.password_file)")]
    Password(#[source] crate::sys::credentials::CredentialError),
    #[error("MQTT over TLS")]
    Tls(#[from] crate::uplink::tls::TlsError),
    #[error("camera.mjpeg_file")]
    MjpegFile(#[source] crate::sources::camera::live::CaptureError),
    #[error("starting the microphone and voice-activity model (audio.enabled = true)")]
    Audio(#[from] crate::sources::audio::AudioError),
    #[error("the zones and lines do not fit the model")]
    Events(#[from] crate::events::stage::EventsError),
    #[error("device identity")]
    Identity(#[from] crate::sys::identity::NoDeviceId),
    #[error("mqtt.url")]
    BrokerUrl(#[from] crate::config::BrokerUrlError),
    #[error("starting a thread or the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Paths resolved from config and the systemd environment.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
}

impl Paths {
    pub fn resolve(c: &Config) -> Self {
        let state_dir = if !c.state_dir.as_os_str().is_empty() {
            c.state_dir.clone()
        } else if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
            // systemd may pass several, colon-separated; the first is ours.
            PathBuf::from(d.to_string_lossy().split(':').next().unwrap_or("/var/lib/sparkd"))
        } else {
            PathBuf::from("/var/lib/sparkd")
        };
        let socket = if !c.socket_path.as_os_str().is_empty() {
            c.socket_path.clone()
        } else if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
            PathBuf::from(d.to_string_lossy().split(':').next().unwrap_or("/run/sparkd")).join("sparkd.sock")
        } else {
            state_dir.join("sparkd.sock")
        };
        Self { state_dir, socket }
    }
}

/// Where frames come from.
enum Capture {
    Replay(Vec<PathBuf>),
    MjpegFile(PathBuf),
    V4l,
}

struct Threads {
    /// One capture thread per camera.
    sources: Vec<JoinHandle<()>>,
    inference: Option<JoinHandle<()>>,
    telemetry: JoinHandle<()>,
    load: Option<JoinHandle<()>>,
}

pub fn run(config: Config) -> Result<(), StartError> {
    run_from(config, None)
}

/// [`run`]; `config_path` is the file `config` was read from (`sparkctl
/// config reload` reads it again).
pub fn run_from(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    let paths = Paths::resolve(&config);
    // A config activated by a fleet update takes the file's place.
    // It is on trial until this start has stayed up long enough; one that
    // did not is rolled back here (see update::config_trial).
    let choice = crate::update::config_trial::start(config, &paths.state_dir);
    let (config, fleet_config, config_trial) = (choice.config, choice.fleet_path, choice.on_trial);
    // For `sparkctl config show`: where the running config came from.
    let config_source = match (&fleet_config, &config_path) {
        (Some(p), _) => format!("fleet config update {}", p.display()),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "built-in demo configuration".to_string(),
    };
    let device_id = identity::device_id(&config.device_id)?;
    tracing::info!(device_id = %device_id, state_dir = %paths.state_dir.display(), "sparkd starting");

    let outbox = Outbox::open(
        &paths.state_dir.join("outbox"),
        OutboxOptions {
            device_id: device_id.clone(),
            max_bytes: config.store_max_bytes(),
            drop_order: config.store.drop_order.iter().filter_map(|s| Stream::parse(s)).collect(),
            snapshots_max_bytes: config.store_snapshots_max_bytes(),
            ttl_ms: config.store_ttl_ms(),
        },
    )?;
    let shared = Arc::new(Shared::new(device_id.clone()));

    // The update store first: opening it completes an activation a crash
    // cut short, so the model loaded below is the one `current` names.
    // Fleet model updates hand a checked engine to the inference thread.
    let (swap_tx, swap_rx) = crossbeam_channel::bounded(1);
    let swap = config.has_camera().then_some(swap_tx);
    // A shadow model (fleet update pushed with --shadow) runs beside the live one.
    let shadow_tap = crate::inference::shadow_tap::ShadowTap::new(config.update.shadow_every_n_frames);
    let shadow = config.has_camera().then(|| shadow_tap.clone());
    let updates = spawn_update_agent(&config, config_path, &device_id, &paths, &shared, swap, shadow);

    // Engine and model first: a broken model is a start failure, not a
    // half-running daemon.
    let camera = match config.has_camera() {
        false => None,
        true => {
            let mut captures = Vec::new();
            for cam in config.cameras().iter().filter(|c| c.source != CameraSource::None) {
                captures.push(match cam.source {
                    CameraSource::Replay => Capture::Replay(replay::list_images(&cam.replay_dir)?),
                    CameraSource::MjpegFile => {
                        let path = cam.mjpeg_file.clone();
                        let frames =
                            crate::sources::camera::mjpeg_file::probe(&path).map_err(StartError::MjpegFile)?;
                        tracing::info!(camera = %cam.id, file = %path.display(), frames, "camera: replaying an MJPEG recording");
                        Capture::MjpegFile(path)
                    }
                    _ => Capture::V4l,
                });
            }
            // The fleet-activated version of the model, when there is one.
            let (model, onnx) = crate::update::agent::startup_model(&config, &paths.state_dir)?;
            let model = Arc::new(model);
            let mut engine = crate::inference::engine::build::build_engine(&config, &model, onnx, &shared)?;
            // A label count or output layout the model cannot decode is a
            // start failure naming both values, not an error on every frame.
            crate::inference::pipeline::check_fit(engine.as_mut(), &model).map_err(StartError::ModelFit)?;
            crate::events::stage::check_labels(&config, &model.manifest.name, &model.manifest.labels)?;
            let kind = engine.kind();
            shared.update_engine(|e| e.model = format!("{} {}", model.manifest.name, model.manifest.version));
            tracing::info!(engine = %kind, model = %model.manifest.name, "inference engine ready");
            Some((captures, model, engine))
        }
    };

    let password = if config.mqtt.password_file.as_os_str().is_empty() {
        None
    } else {
        Some(crate::sys::credentials::read_secret(&config.mqtt.password_file).map_err(StartError::Password)?)
    };

    let wake = Arc::new(Notify::new());
    let on_commit = {
        let wake = wake.clone();
        Arc::new(move || wake.notify_one()) as Arc<dyn Fn() + Send + Sync>
    };
    let writer =
        outbox::spawn_writer(outbox.clone(), config.store.commit_batch_max, on_commit).map_err(StartError::Runtime)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sparkd-io")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;

    let lanes: Vec<(&str, usize)> = config
        .cameras()
        .iter()
        .filter(|c| c.source != CameraSource::None)
        .map(|c| (c.id.as_str(), c.queue_frames))
        .collect();
    let frames = camera.as_ref().map(|_| CameraQueues::new(&lanes));
    // `sparkctl infer` images for the inference thread (bounded; full = busy).
    let (infer_tx, infer_rx) = crossbeam_channel::bounded(server::INFER_QUEUE);
    let infer_tx = camera.as_ref().map(|_| infer_tx);
    let listener = {
        let _guard = runtime.enter();
        server::bind(&paths.socket)?
    };
    tracing::info!(socket = %paths.socket.display(), "control socket listening");

    // Threads: camera → inference; telemetry.
    let stop_sources = Arc::new(AtomicBool::new(false));
    let abort_inference = Arc::new(AtomicBool::new(false));
    let mut threads = Threads {
        sources: Vec::new(),
        inference: None,
        telemetry: spawn_telemetry(&config, &paths, &shared, &outbox, &writer.appender, &stop_sources)?,
        load: None,
    };
    let audio = match config.audio.enabled {
        true => Some(crate::sources::audio::spawn(
            &config.audio,
            &config.model.onnxruntime_library,
            writer.appender.clone(),
            shared.clone(),
            stop_sources.clone(),
        )?),
        false => None,
    };
    if config.load.events_per_sec > 0.0 {
        let (rate, size) = (config.load.events_per_sec, config.load.event_bytes);
        let (appender, sh, stop) = (writer.appender.clone(), shared.clone(), stop_sources.clone());
        tracing::warn!(events_per_sec = rate, "synthetic load generator on");
        threads.load = Some(
            std::thread::Builder::new()
                .name("loadgen".into())
                .spawn(move || crate::sources::loadgen::run(rate, size, appender, sh, stop))
                .map_err(StartError::Runtime)?,
        );
    }
    if let (Some((captures, model, engine)), Some(queues)) = (camera, frames.clone()) {
        let cams = config.cameras().iter().filter(|c| c.source != CameraSource::None);
        for ((capture, cam), lane) in captures.into_iter().zip(cams).zip(queues.lanes()) {
            let (q, stop, fps) = (lane.queue.clone(), stop_sources.clone(), cam.fps);
            let name = format!("camera-{}", cam.id);
            let thread = std::thread::Builder::new().name(name);
            threads.sources.push(
                match capture {
                    Capture::Replay(files) => thread.spawn(move || replay::run(files, fps, q, stop)),
                    Capture::MjpegFile(path) => {
                        let sh = shared.clone();
                        thread.spawn(move || crate::sources::camera::mjpeg_file::run(&path, fps, q, sh, stop))
                    }
                    Capture::V4l => {
                        let (camera, sh) = (cam.clone(), shared.clone());
                        thread.spawn(move || crate::sources::camera::v4l::run(camera, q, sh, stop))
                    }
                }
                .map_err(StartError::Runtime)?,
            );
        }
        let (appender, sh, abort) = (writer.appender.clone(), shared.clone(), abort_inference.clone());
        // Tracking and events run on the inference thread, after decoding.
        let after = crate::inference::pipeline::AfterDecode {
            observer: Some(Box::new(crate::events::stage::EventStage::new(&config, appender.clone(), sh.clone()))),
            publish: config.inference.publish,
            shadow: Some(shadow_tap.clone()),
        };
        threads.inference = Some(
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || {
                    crate::inference::pipeline::run_with(
                        engine, model, queues, appender, sh, abort, infer_rx, swap_rx, after,
                    )
                })
                .map_err(StartError::Runtime)?,
        );
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let gate = link::spawn_gate(&runtime, &config.link, shared.clone(), shutdown_rx.clone());
    let broker = BrokerUrl::parse(&config.mqtt.url)?;
    let tls = if broker.tls {
        Some(crate::uplink::tls::client_config(&crate::uplink::tls::TlsSettings::from_config(&config.mqtt))?)
    } else {
        if !config.mqtt.ca_file.as_os_str().is_empty() || !config.mqtt.client_cert_file.as_os_str().is_empty() {
            tracing::warn!(url = %config.mqtt.url, "mqtt TLS files are set but the URL is mqtt:// (plain TCP): they are not used");
        }
        None
    };
    let settings = UplinkSettings {
        broker,
        client_id: if config.mqtt.client_id.is_empty() {
            format!("sparkd-{device_id}")
        } else {
            config.mqtt.client_id.clone()
        },
        topic_prefix: config.mqtt.topic_prefix.clone(),
        device_id: device_id.clone(),
        keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs),
        window: config.mqtt.inflight_window,
        reconnect_min: Duration::from_millis(config.mqtt.reconnect_min_ms),
        reconnect_max: Duration::from_millis(config.mqtt.reconnect_max_ms),
        status_interval: Duration::from_secs(config.mqtt.status_interval_secs),
        batch_max_records: config.mqtt.batch_max_records,
        batch_max_bytes: config.mqtt.batch_max_bytes,
        username: (!config.mqtt.username.is_empty()).then(|| config.mqtt.username.clone()),
        password,
        tls,
        group: config.group.clone(),
        binary_slot: crate::update::binary::running_slot().map(|slot| slot.dir_name().to_string()),
    };
    let (update_requests, update_link) = updates.unzip();
    let update_ready = update_requests.clone();
    let mut subscriptions: Vec<uplink::Subscription> = update_link
        .map(|l| {
            runtime.spawn(l.forwarder);
            l.subscription
        })
        .into_iter()
        .collect();
    // Remote diagnostics: a second subscription, under the update trust root.
    let diag_inbox = match crate::control::diag_agent::link(&config, &device_id, paths.state_dir.clone()) {
        Ok(Some((sub, inbox))) => {
            subscriptions.push(sub);
            Some(inbox)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "remote diagnostics disabled");
            None
        }
    };
    let uplink_task = runtime.spawn(uplink::run_with(
        settings,
        UplinkDeps {
            outbox: outbox.clone(),
            appender: writer.appender.clone(),
            shared: shared.clone(),
            wake: wake.clone(),
            gate,
            shutdown: shutdown_rx.clone(),
        },
        subscriptions,
    ));
    let ctx = Arc::new(ControlContext {
        shared: shared.clone(),
        outbox: outbox.clone(),
        frames,
        uplink_wake: wake.clone(),
        config: config.clone(),
        config_source,
        state_dir: paths.state_dir.clone(),
        infer: infer_tx,
        updates: update_requests,
    });
    if !config.metrics.textfile_dir.as_os_str().is_empty() {
        let every = Duration::from_secs(config.metrics.textfile_interval_secs);
        let dir = config.metrics.textfile_dir.clone();
        runtime.spawn(crate::control::metrics::write_textfile(ctx.clone(), dir, every, shutdown_rx.clone()));
    }
    if let Some(addr) = config.metrics.listen_addr() {
        // A port already taken is reported, and the daemon runs on without
        // it: metrics are not worth an outage.
        match runtime.block_on(crate::control::metrics_http::bind(addr)) {
            Ok(listener) => {
                tracing::info!(%addr, "serving metrics on GET /metrics");
                runtime.spawn(crate::control::metrics_http::serve(listener, ctx.clone(), shutdown_rx.clone()));
            }
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "metrics listener not started"),
        }
    }
    if let Some(inbox) = diag_inbox {
        runtime.spawn(crate::control::diag_agent::run(inbox, ctx.clone(), shutdown_rx.clone()));
    }
    let control_task = runtime.spawn(server::serve(listener, ctx, shutdown_rx.clone()));

    crate::sys::notify::ready();
    // A binary on trial starts its health period at READY.
    if let Some(tx) = &update_ready
        && tx.try_send(crate::update::agent::Request::Ready).is_err()
    {
        tracing::warn!("update agent busy at READY: a binary on trial will not be confirmed this run");
    }
    // Backstop for a binary on trial that its agent does not confirm.
    let trial_deadline =
        runtime.spawn(crate::update::binary::trial_deadline(paths.state_dir.clone(), config.update.binary_health_secs));
    // A fleet config on trial is confirmed once this start has lasted.
    if let Some(trial) = config_trial {
        let health = config.update.binary_health_secs;
        runtime.spawn(crate::update::config_trial::confirm_after(paths.state_dir.clone(), trial, health));
    }
    let watchdog = runtime.spawn(crate::sys::notify::watchdog_loop(shutdown_rx.clone()));
    let rate_sampler = {
        let (shared, mut stop) = (shared.clone(), shutdown_rx.clone());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => shared.sample_acks(),
                    _ = stop.changed() => return,
                }
            }
        })
    };

    runtime.block_on(wait_for_signal());
    tracing::info!("shutting down");
    crate::sys::notify::stopping();
    shared.shutting_down.store(true, Ordering::Relaxed);

    // 1. Sources stop; inference finishes the frames already queued.
    stop_sources.store(true, Ordering::Relaxed);
    for h in threads.sources.drain(..) {
        join_with_deadline(Some(h), "camera", Duration::from_secs(3));
    }
    if !join_with_deadline(threads.inference.take(), "inference", Duration::from_secs(5)) {
        abort_inference.store(true, Ordering::Relaxed);
    }
    let _ = threads.telemetry.join();
    join_with_deadline(audio, "audio", Duration::from_secs(3));
    join_with_deadline(threads.load.take(), "loadgen", Duration::from_secs(5));
    // 2. Uplink and control stop (uplink waits briefly for in-flight PUBACKs).
    let _ = shutdown_tx.send(true);
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(4), uplink_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), control_task).await;
        watchdog.abort();
        rate_sampler.abort();
        trial_deadline.abort();
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    // 3. Every appender is gone: the writer commits what is queued and stops.
    writer.join();
    let _ = std::fs::remove_file(&paths.socket);
    tracing::info!("sparkd stopped");
    Ok(())
}

/// Starts the fleet update agent. A broken update setup (unreadable keys
/// file, corrupt store) is logged and leaves the daemon running without
/// updates: the device keeps doing its job and `sparkctl update status`
/// says why.
fn spawn_update_agent(
    config: &Config,
    config_path: Option<PathBuf>,
    device_id: &str,
    paths: &Paths,
    shared: &Arc<Shared>,
    swap: Option<crossbeam_channel::Sender<crate::inference::pipeline::EngineSwap>>,
    shadow: Option<Arc<crate::inference::shadow_tap::ShadowTap>>,
) -> Option<(tokio::sync::mpsc::Sender<crate::update::agent::Request>, crate::update::agent::UplinkLink)> {
    let deps = crate::update::agent::AgentDeps {
        config: config.clone(),
        device_id: device_id.to_string(),
        state_dir: paths.state_dir.clone(),
        shared: shared.clone(),
        swap,
        config_path,
        shadow,
    };
    match crate::update::agent::spawn(deps) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %crate::error_chain(&e), "fleet updates disabled");
            None
        }
    }
}

fn spawn_telemetry(
    config: &Config,
    paths: &Paths,
    shared: &Arc<Shared>,
    store: &Outbox,
    appender: &outbox::Appender,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<()>, StartError> {
    let interval = config.telemetry_interval();
    let (appender, shared, stop, store) = (appender.clone(), shared.clone(), stop.clone(), store.clone());
    let state_dir = paths.state_dir.clone();
    std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(move || {
            let mut sampler = Sampler::new(&state_dir);
            let mut next = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = std::time::Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next = now + interval;
                let record = crate::sources::telemetry::TelemetryRecord {
                    sample: sampler.sample(),
                    outbox: crate::sources::telemetry::OutboxFigures::of(&store),
                    inference_total: Shared::count(&shared.inference_total),
                    records_lost: Shared::count(&shared.records_lost),
                };
                let body = serde_json::to_string(&record).unwrap_or_else(|_| "{}".into());
                match appender.append(Stream::Telemetry, body) {
                    Ok(_) => {
                        shared.telemetry_samples.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.record_lost("telemetry record", &e);
                    }
                }
            }
        })
        .map_err(StartError::Runtime)
}

fn join_with_deadline(handle: Option<JoinHandle<()>>, name: &str, deadline: Duration) -> bool {
    let Some(h) = handle else { return true };
    let end = std::time::Instant::now() + deadline;
    while !h.is_finished() {
        if std::time::Instant::now() >= end {
            tracing::warn!(thread = name, "did not stop in time");
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = h.join();
    true
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the daemon could never stop cleanly.
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        // A binary update was staged: stop as on SIGTERM, then exit 75.
        _ = crate::update::binary::restart_wanted() => {}
    }
}
