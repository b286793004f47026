//! `spark-fleet`: the operator's tool for fleet updates. Makes signing keys,
//! signs bundles, checks them, pushes them over MQTT and watches devices
//! report progress. Formats: docs/updates.md.

use spark_edge::fleet::signing_key::read_signing_key;
use spark_edge::sys::capped_read::read_capped_to_string;
use spark_edge::sys::credentials::MAX_SECRET_BYTES;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use spark_edge::config::is_topic_segment;
use spark_edge::fleet::broker::{BrokerArgs, Session, permanent_failure};
use spark_edge::fleet::devices::{self as fleet_view, Filter, Fleet, SortKey, StateFilter};
use spark_edge::inference::model::sha256_hex;
use spark_edge::update::{
    ArtifactSpec, Bundle, CHUNK_MAX_BYTES, Canary, Kind, StateReport, Targets, TrustedKeys, UpdateManifest, Version,
    check_plain_name, chunk_artifact, open_envelope, sign_envelope, topics, wall_clock_secs,
};

#[derive(Parser)]
#[command(name = "spark-fleet", version, about = "Sign, check, push and watch spark-edge fleet updates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an ed25519 signing key: DIR/<key_id>.key (0600) and DIR/<key_id>.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Default: `k-` and 12 hex digits of the public key's SHA-256.
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Sign an artifact into a bundle (manifest envelope + artifact, one file).
    Sign {
        /// Private key file(s) from `keygen`; several sign with each (rotation).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        kind: Kind,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: Version,
        #[arg(long)]
        artifact: PathBuf,
        /// Name the device stores the artifact under. Default: the artifact's file name.
        #[arg(long)]
        file_name: Option<String>,
        #[arg(long = "device")]
        devices: Vec<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        expires_in_days: u64,
        #[arg(long)]
        min_running_version: Option<Version>,
        #[arg(long)]
        hailort_version: Option<String>,
        /// Model canary: a file inside the model pack the device runs before
        /// switching (with --canary-label and --canary-min-score).
        #[arg(long, requires_all = ["canary_label", "canary_min_score"])]
        canary_input: Option<String>,
        #[arg(long)]
        canary_label: Option<String>,
        #[arg(long)]
        canary_min_score: Option<f32>,
        /// Model kind: the device evaluates the model beside its live one
        /// and reports agreement, but never activates it.
        #[arg(long)]
        shadow: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Bundle a model's files into one model pack (the artifact of a model
    /// update): the model.toml (written as `model.toml`), the files it names
    /// and the canary input.
    Pack {
        /// The model manifest (TOML); stored in the pack as model.toml.
        #[arg(long)]
        model: PathBuf,
        /// Further files (ONNX, HEF, canary image), stored under their file names.
        files: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle's signature (against a trusted-keys file) and its artifact.
    Verify {
        #[arg(long)]
        keys: PathBuf,
        bundle: PathBuf,
    },
    /// Publish a bundle's manifest and chunks at QoS 1 to a device or a group.
    Push {
        #[command(flatten)]
        broker: BrokerArgs,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value = "spark")]
        topic_prefix: String,
        #[arg(long, default_value_t = CHUNK_MAX_BYTES)]
        chunk_bytes: usize,
        bundle: PathBuf,
    },
    /// Print update progress reported by devices (`<prefix>/+/update/state`).
    Watch {
        #[command(flatten)]
        broker: BrokerArgs,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value = "spark")]
        topic_prefix: String,
        /// Print each report as one JSON line instead of a table row.
        #[arg(long)]
        json: bool,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// Ask DEVICE over MQTT for `doctor`, `status` (default), `queue` or
    /// `logs N` with a request signed by the fleet key; print the answer as
    /// sparkctl would on the device. Exit 0 ok, 1 refused or failed, 3 no
    /// answer before the deadline (docs/diagnostics.md).
    Diagnose {
        device: String,
        #[arg(num_args = 0..=2)]
        what: Vec<String>,
        #[command(flatten)]
        broker: BrokerArgs,
        /// The fleet's private key (spark-fleet keygen).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "spark")]
        topic_prefix: String,
        /// Print the JSON `sparkctl <cmd> --json` prints.
        #[arg(long)]
        json: bool,
        /// Wait this long for the whole answer (also the request's lifetime, at most 900 s).
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// The fleet from the devices' retained status messages (and last wills):
    /// one row per device and a summary line.
    Devices {
        #[command(flatten)]
        broker: BrokerArgs,
        #[arg(long, default_value = "spark")]
        topic_prefix: String,
        /// Only devices of this group.
        #[arg(long)]
        group: Option<String>,
        /// Only devices in this state.
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        #[arg(long, value_enum, default_value_t = SortKey::Id)]
        sort: SortKey,
        /// A backlog over this many records is counted in the summary.
        #[arg(long, default_value_t = 1000)]
        backlog_threshold: u64,
        /// One JSON object (rows and summary) instead of the table.
        #[arg(long)]
        json: bool,
        /// Keep running and redraw as statuses change.
        #[arg(long)]
        watch: bool,
        /// With --watch: redraw at most this often.
        #[arg(long, default_value_t = 2)]
        interval_secs: u64,
        /// Show what arrived after this long even if the broker's retained
        /// messages were not all delivered (the end marker did not come back).
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Reassemble the evidence snapshots devices publish
    /// (`<prefix>/<device>/snapshots`), verify each one's SHA-256 and write
    /// the JPEGs to --out (docs/snapshots.md).
    Snapshots(spark_edge::fleet::snapshots::SnapshotsArgs),
    /// Staged rollouts: waves, soak, a halt rule; state kept for resume.
    Rollout {
        #[command(subcommand)]
        command: spark_edge::fleet::rollout_run::RolloutCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Keygen { out, key_id } => keygen(&out, key_id),
        Command::Sign {
            keys,
            kind,
            name,
            version,
            artifact,
            file_name,
            devices,
            group,
            expires_in_days,
            min_running_version,
            hailort_version,
            canary_input,
            canary_label,
            canary_min_score,
            shadow,
            out,
        } => sign(SignArgs {
            keys,
            kind,
            name,
            version,
            artifact,
            file_name,
            targets: Targets { devices, group },
            expires_in_days,
            min_running_version,
            hailort_version,
            canary: match (canary_input, canary_label, canary_min_score) {
                (Some(input), Some(label), Some(min_score)) => Some(Canary { input, label, min_score }),
                _ => None,
            },
            shadow,
            out,
        }),
        Command::Pack { model, files, out } => pack(&model, &files, &out),
        Command::Verify { keys, bundle } => verify(&keys, &bundle),
        Command::Push { broker, device, group, topic_prefix, chunk_bytes, bundle } => {
            push(&broker, device, group, &topic_prefix, chunk_bytes, &bundle)
        }
        Command::Watch { broker, group, topic_prefix, json, timeout_secs } => {
            watch(&broker, group, &topic_prefix, json, timeout_secs)
        }
        Command::Diagnose { device, what, broker, key, topic_prefix, json, timeout_secs } => {
            let timeout = Duration::from_secs(timeout_secs.max(1));
            let code = spark_edge::fleet::diagnose::main(broker, topic_prefix, device, &what, key, timeout, json);
            std::process::exit(i32::from(code))
        }
        Command::Devices {
            broker,
            topic_prefix,
            group,
            state,
            sort,
            backlog_threshold,
            json,
            watch,
            interval_secs,
            timeout_secs,
        } => devices(DevicesArgs {
            broker,
            prefix: topic_prefix,
            filter: Filter { group, state, backlog_threshold },
            sort,
            json,
            watch,
            interval: Duration::from_secs(interval_secs.max(1)),
            timeout: Duration::from_secs(timeout_secs),
        }),
        Command::Snapshots(a) => std::process::exit(spark_edge::fleet::snapshots::main(a)),
        Command::Rollout { command } => match spark_edge::fleet::rollout_run::run(command) {
            Ok(ended) => std::process::exit(ended.exit_code()),
            Err(e) => Err(anyhow::Error::new(e)),
        },
    };
    if let Err(e) = r {
        eprintln!("spark-fleet: {e:#}");
        std::process::exit(1);
    }
}

fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).context("reading /dev/urandom")?;
    Ok(seed)
}

fn keygen(out: &Path, key_id: Option<String>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::from_bytes(&random_seed()?);
    let public = key.verifying_key().to_bytes();
    let id = key_id.unwrap_or_else(|| format!("k-{}", &sha256_hex(&public)[..12]));
    if !is_topic_segment(&id) {
        bail!("key id {id:?} must be 1-64 characters of [A-Za-z0-9_.-]");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let private_path = out.join(format!("{id}.key"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", private_path.display()))?;
    writeln!(f, "{id} {}", hex::encode(key.to_bytes())).and_then(|()| f.sync_all())?;
    let public_path = out.join(format!("{id}.pub"));
    std::fs::write(&public_path, format!("{id} {}\n", hex::encode(public)))
        .with_context(|| format!("writing {}", public_path.display()))?;
    println!("key id:      {id}");
    println!("private key: {} (keep it off devices)", private_path.display());
    println!("public key:  {} (append to the devices' update.trusted_keys_file)", public_path.display());
    Ok(())
}

struct SignArgs {
    keys: Vec<PathBuf>,
    kind: Kind,
    name: String,
    version: Version,
    artifact: PathBuf,
    file_name: Option<String>,
    targets: Targets,
    expires_in_days: u64,
    min_running_version: Option<Version>,
    hailort_version: Option<String>,
    canary: Option<Canary>,
    shadow: bool,
    out: PathBuf,
}

fn pack(model: &Path, files: &[PathBuf], out: &Path) -> Result<()> {
    let mut entries = vec![(
        spark_edge::update::pack::MODEL_MANIFEST.to_string(),
        std::fs::read(model).with_context(|| format!("reading {}", model.display()))?,
    )];
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("{}: no file name", f.display()))?;
        entries.push((name.to_string(), std::fs::read(f).with_context(|| format!("reading {}", f.display()))?));
    }
    let bytes = spark_edge::update::pack::write_pack(&entries)?;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("packed {} files ({} bytes) -> {}", entries.len(), bytes.len(), out.display());
    Ok(())
}

fn sign(a: SignArgs) -> Result<()> {
    if a.targets.devices.is_empty() && a.targets.group.is_none() {
        bail!("name the targets: --device ID (repeatable) and/or --group G");
    }
    for t in a.targets.devices.iter().chain(a.targets.group.iter()) {
        if !is_topic_segment(t) {
            bail!("target {t:?} must be 1-64 characters of [A-Za-z0-9_.-]");
        }
    }
    let artifact = std::fs::read(&a.artifact).with_context(|| format!("reading {}", a.artifact.display()))?;
    let file_name = match a.file_name {
        Some(f) => f,
        None => a.artifact.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
    };
    check_plain_name("file name", &file_name)?;
    check_plain_name("name", &a.name)?;
    if a.shadow && a.kind != Kind::Model {
        bail!("--shadow is for model updates only");
    }
    let issued_at = wall_clock_secs();
    let manifest = UpdateManifest {
        kind: a.kind,
        name: a.name,
        version: a.version,
        targets: a.targets,
        artifact: ArtifactSpec { file_name, length: artifact.len() as u64, sha256: sha256_hex(&artifact) },
        issued_at,
        expires_at: issued_at + a.expires_in_days.max(1) * 86_400,
        min_running_version: a.min_running_version,
        hailort_version: a.hailort_version,
        canary: a.canary,
        shadow: a.shadow,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    let signers = a.keys.iter().map(|p| read_signing_key(p)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<(&str, &SigningKey)> = signers.iter().map(|(id, k)| (id.as_str(), k)).collect();
    let envelope = sign_envelope(&manifest_json, &refs);
    let bundle = Bundle { envelope, artifact };
    std::fs::write(&a.out, bundle.to_bytes()).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "signed {} {} {} ({} bytes) by {} -> {} (update id {})",
        manifest.kind,
        manifest.name,
        manifest.version,
        manifest.artifact.length,
        signers.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", "),
        a.out.display(),
        bundle.update_id().unwrap_or_default()
    );
    Ok(())
}

fn read_bundle(path: &Path) -> Result<Bundle> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Bundle::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn verify(keys: &Path, bundle: &Path) -> Result<()> {
    let text = read_capped_to_string(keys, MAX_SECRET_BYTES).with_context(|| format!("reading {}", keys.display()))?;
    let keys = TrustedKeys::parse(&text).map_err(|e| anyhow!("{}: {e}", keys.display()))?;
    let b = read_bundle(bundle)?;
    let v = open_envelope(&b.envelope, &keys)?;
    let m = &v.manifest;
    if b.artifact.len() as u64 != m.artifact.length {
        bail!("artifact is {} bytes, the manifest says {}", b.artifact.len(), m.artifact.length);
    }
    let sha = sha256_hex(&b.artifact);
    if sha != m.artifact.sha256.to_ascii_lowercase() {
        bail!("artifact SHA-256 is {sha}, the manifest says {}", m.artifact.sha256);
    }
    let now = wall_clock_secs();
    println!("OK: {} {} {} signed by {} (update id {})", m.kind, m.name, m.version, v.key_id, v.update_id);
    println!("  artifact {} ({} bytes, sha256 {})", m.artifact.file_name, m.artifact.length, m.artifact.sha256);
    println!("  targets devices {:?} group {:?}", m.targets.devices, m.targets.group);
    println!(
        "  issued_at {} expires_at {}{}",
        m.issued_at,
        m.expires_at,
        if m.expires_at < now { " (EXPIRED by this machine's clock)" } else { "" }
    );
    Ok(())
}

/// The options `push`, `watch` and `devices` start from.
fn mqtt_options(broker: &BrokerArgs, client_id: &str) -> Result<MqttOptions> {
    Ok(broker.mqtt_options(&Session {
        client_id,
        keep_alive: Duration::from_secs(30),
        max_incoming: 4 << 20,
        max_outgoing: 4 << 20,
    })?)
}

fn push(
    broker: &BrokerArgs,
    device: Option<String>,
    group: Option<String>,
    prefix: &str,
    chunk_bytes: usize,
    bundle: &Path,
) -> Result<()> {
    let (manifest_topic, chunk_topic) = match (&device, &group) {
        (Some(d), None) if is_topic_segment(d) => (topics::device_manifest(prefix, d), topics::device_chunk(prefix, d)),
        (None, Some(g)) if is_topic_segment(g) => (topics::group_manifest(prefix, g), topics::group_chunk(prefix, g)),
        _ => bail!("give exactly one of --device ID or --group G (each [A-Za-z0-9_.-]{{1,64}})"),
    };
    let b = read_bundle(bundle)?;
    let id = b.update_id().ok_or_else(|| anyhow!("{}: the envelope does not decode", bundle.display()))?;
    let chunks = chunk_artifact(&id, &b.artifact, chunk_bytes);
    let opts = mqtt_options(broker, &format!("spark-fleet-push-{}", std::process::id()))?;
    let (client, mut conn) = Client::new(opts, 16);
    let expected = 1 + chunks.len();
    let (tx, rx) = mpsc::channel::<Result<(), rumqttc::ConnectionError>>();
    let driver = std::thread::spawn(move || {
        let mut acked = 0usize;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == expected {
                        let _ = tx.send(Ok(()));
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    client.publish(&manifest_topic, QoS::AtLeastOnce, false, b.envelope.clone())?;
    for c in &chunks {
        client.publish(&chunk_topic, QoS::AtLeastOnce, false, serde_json::to_vec(c)?)?;
    }
    let r = rx.recv_timeout(Duration::from_secs(120));
    let _ = client.disconnect();
    let _ = driver.join();
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => match permanent_failure(&broker.broker, &e) {
            Some(fatal) => return Err(fatal.into()),
            None => return Err(anyhow::Error::new(e).context(format!("MQTT connection to {}", broker.broker))),
        },
        Err(_) => bail!("the broker did not acknowledge every publish within 120 s"),
    }
    println!(
        "pushed update {id}: manifest to {manifest_topic}, {} chunks to {chunk_topic}, all acknowledged",
        chunks.len()
    );
    Ok(())
}

fn watch(
    broker: &BrokerArgs,
    group: Option<String>,
    prefix: &str,
    json: bool,
    timeout_secs: Option<u64>,
) -> Result<()> {
    let opts = mqtt_options(broker, &format!("spark-fleet-watch-{}", std::process::id()))?;
    let (client, mut conn) = Client::new(opts, 16);
    let filter = topics::all_states(prefix);
    let end = timeout_secs.map(|s| Instant::now() + Duration::from_secs(s));
    let mut latest: BTreeMap<String, StateReport> = BTreeMap::new();
    if !json {
        println!(
            "{:<20} {:<32} {:<7} {:<16} {:<10} {:<12} DETAIL",
            "DEVICE", "UPDATE", "KIND", "NAME", "VERSION", "STATE"
        );
    }
    loop {
        if end.is_some_and(|e| Instant::now() >= e) {
            return Ok(());
        }
        let ev = match conn.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) => ev,
            Err(rumqttc::RecvTimeoutError::Timeout) => continue,
            Err(rumqttc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.try_subscribe(&filter, QoS::AtLeastOnce)?;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(r) = serde_json::from_slice::<StateReport>(&p.payload) else { continue };
                if group.as_ref().is_some_and(|g| *g != r.group) {
                    continue;
                }
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let detail = match (&r.phase, r.chunks) {
                        (spark_edge::update::Phase::Rejected { reason, .. }, _) => reason.clone(),
                        (spark_edge::update::Phase::RolledBack { reason }, _) => reason.clone(),
                        (_, Some((have, total))) => format!("{have}/{total} chunks"),
                        _ => String::new(),
                    };
                    println!(
                        "{:<20} {:<32} {:<7} {:<16} {:<10} {:<12} {detail}",
                        r.device_id,
                        r.update_id,
                        r.kind.map(|k| k.to_string()).unwrap_or_default(),
                        r.name.clone().unwrap_or_default(),
                        r.version.clone().unwrap_or_default(),
                        r.phase.as_str(),
                    );
                }
                std::io::stdout().flush()?;
                latest.insert(r.device_id.clone(), r);
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(fatal) = permanent_failure(&broker.broker, &e) {
                    return Err(fatal.into());
                }
                eprintln!("spark-fleet: {}: {e}; retrying", broker.broker);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Largest MQTT packet `devices` reads.
const MAX_STATUS_PACKET: usize = 64 << 20;

struct DevicesArgs {
    broker: BrokerArgs,
    prefix: String,
    filter: Filter,
    sort: SortKey,
    json: bool,
    watch: bool,
    interval: Duration,
    timeout: Duration,
}

/// Subscribes to every retained status, then publishes a marker to a topic
/// of its own: the broker queues a subscription's retained messages when it
/// handles the SUBSCRIBE, so the marker comes back after the last of them
/// and the first table is printed then, not after a guessed quiet time.
fn devices(a: DevicesArgs) -> Result<()> {
    if !a.prefix.split('/').all(is_topic_segment) {
        bail!("--topic-prefix must be segments of [A-Za-z0-9_.-] joined by '/'");
    }
    let nonce = hex::encode(random_seed()?.get(..8).unwrap_or_default());
    let client_id = format!("spark-fleet-devices-{nonce}");
    let mut opts = mqtt_options(&a.broker, &client_id)?;
    opts.set_clean_session(true);
    // A hostile status up to this size becomes an `unknown` row; a larger
    // packet ends the connection (rumqttc reads packets whole).
    opts.set_max_packet_size(MAX_STATUS_PACKET, 4 << 20);
    let (client, mut conn) = Client::new(opts, 64);
    let status_filter = format!("{}/+/status", a.prefix);
    let marker_topic = format!("spark-fleet/{client_id}/end");
    let mut fleet = Fleet::default();
    let mut subacks = 0;
    let mut complete = false;
    let started = Instant::now();
    let mut last_draw: Option<Instant> = None;
    let mut changed = false;
    loop {
        let wait = if complete { a.interval } else { a.timeout.saturating_sub(started.elapsed()) };
        // What is already read first, without arming a timer per message
        // (10,000 retained statuses arrive in a few large reads).
        let ev = match conn.try_recv() {
            Ok(ev) => Some(ev),
            Err(rumqttc::TryRecvError::Disconnected) => bail!("MQTT connection to {} closed", a.broker.broker),
            Err(rumqttc::TryRecvError::Empty) => match conn.recv_timeout(wait.max(Duration::from_millis(10))) {
                Ok(ev) => Some(ev),
                Err(rumqttc::RecvTimeoutError::Timeout) => None,
                Err(rumqttc::RecvTimeoutError::Disconnected) => bail!("MQTT connection to {} closed", a.broker.broker),
            },
        };
        match ev {
            Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                subacks = 0;
                client.try_subscribe(&status_filter, QoS::AtMostOnce)?;
                client.try_subscribe(&marker_topic, QoS::AtMostOnce)?;
            }
            Some(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                subacks += 1;
                if subacks == 2 {
                    client.try_publish(&marker_topic, QoS::AtMostOnce, false, Vec::new())?;
                }
            }
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.topic == marker_topic {
                    complete = true;
                    changed = true;
                } else {
                    changed |= fleet.apply(&a.prefix, &p.topic, &p.payload);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
            )))) => {
                // It is retained: every reconnection would meet it again.
                bail!(
                    "the broker holds a retained message of {n} bytes under {status_filter} (limit {} MiB); \
                     find it with `mosquitto_sub -v -t '{status_filter}' --retained-only`, clear it with \
                     `mosquitto_pub -r -n -t TOPIC`, and set message_size_limit in mosquitto.conf",
                    MAX_STATUS_PACKET >> 20
                );
            }
            Some(Err(e)) => {
                if let Some(fatal) = permanent_failure(&a.broker.broker, &e) {
                    return Err(fatal.into());
                }
                if !complete && started.elapsed() >= a.timeout {
                    bail!("MQTT connection to {}: {e}", a.broker.broker);
                }
                eprintln!("spark-fleet: {}: {e}; retrying", a.broker.broker);
                std::thread::sleep(Duration::from_secs(1));
            }
            None => {}
        }
        if !complete && started.elapsed() >= a.timeout {
            eprintln!(
                "spark-fleet: the broker's retained statuses did not all arrive within {} s; showing the {} received",
                a.timeout.as_secs(),
                fleet.len()
            );
            complete = true;
            changed = true;
        }
        let due = last_draw.is_none_or(|t| t.elapsed() >= a.interval);
        if complete && changed && due {
            draw(&fleet, &a, last_draw.is_some())?;
            last_draw = Some(Instant::now());
            changed = false;
            if !a.watch {
                let _ = client.disconnect();
                return Ok(());
            }
        }
    }
}

fn draw(fleet: &Fleet, a: &DevicesArgs, again: bool) -> Result<()> {
    let rows = fleet.rows(&a.filter, a.sort);
    let summary = fleet_view::summary(&rows, a.filter.backlog_threshold);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", fleet_view::render_json(&rows, &summary))?;
    } else {
        if again {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                write!(out, "\x1b[H\x1b[2J")?;
            } else {
                writeln!(out)?;
            }
        }
        write!(out, "{}", fleet_view::render_table(&rows, &summary, spark_edge::record::now_ms()))?;
    }
    out.flush()?;
    Ok(())
}
