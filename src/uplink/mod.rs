//! MQTT uplink: drains the outbox to the broker at QoS 1.
//!
//! Owns the broker connection, the in-flight window and the retained status
//! message. It reads the outbox but writes to it only through acks.
//!
//! **Architecture Invariant:** a record is acked in the outbox only after the
//! broker's PUBACK for the publish that carried it.
//!
//! Each connection is an *epoch* with a fresh client and event loop and a
//! clean MQTT session. rumqttc drops its un-acknowledged publishes when the
//! broker has no session for it, so nothing is trusted to survive a
//! disconnect: every epoch re-reads the outbox from the oldest pending record
//! of each stream. Re-sent records carry their original `seq`; consumers
//! de-duplicate on it.
//!
//! Sharing rule: streams are served round-robin, one read batch each, and
//! within a stream strictly oldest first, so a long backlog in one stream
//! never starves the others, and order within a stream always holds.

pub mod link;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::config::BrokerUrl;
use crate::outbox::{Appender, Outbox};
use crate::record::{Stream, now_ms};
use crate::state::{BrokerFailure, Shared};

#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub broker: BrokerUrl,
    pub client_id: String,
    pub topic_prefix: String,
    pub device_id: String,
    pub keep_alive: Duration,
    pub window: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub status_interval: Duration,
    /// Records per message (1 = unbatched).
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS client config for `mqtts://` (built by [`crate::uplink::tls::client_config`]);
    /// `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Named in the status message for the fleet view (`spark-fleet devices`).
    pub group: String,
    /// The binary slot (`slot-a`, `slot-b`) this process runs from; `None`:
    /// the packaged binary.
    pub binary_slot: Option<String>,
}

impl UplinkSettings {
    pub fn topic(&self, leaf: &str) -> String {
        format!("{}/{}/{}", self.topic_prefix, self.device_id, leaf)
    }
}

/// The retained `<prefix>/<device>/status` message (and, with `online:
/// false` and only the identity, the last will). Fields after `pending` were
/// added for `spark-fleet devices`; readers must treat every field but
/// `online` as optional (older devices, the last will).
#[derive(Serialize)]
pub struct StatusMessage<'a> {
    pub online: bool,
    pub device_id: &'a str,
    pub version: &'a str,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<&'a str>,
    /// The model the engine runs (`name version`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// Hailo → CPU fallbacks since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<u64>,
    /// Age of the oldest record waiting in the outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpn_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnects: Option<u64>,
}

impl<'a> StatusMessage<'a> {
    /// Only who the device is: the last will's body.
    pub fn identity(online: bool, device_id: &'a str, group: &'a str, slot: Option<&'a str>) -> Self {
        StatusMessage {
            online,
            device_id,
            version: env!("CARGO_PKG_VERSION"),
            ts: 0,
            engine: None,
            pending: None,
            group: Some(group),
            slot,
            model: None,
            fallbacks: None,
            oldest_age_s: None,
            vpn_up: None,
            reconnects: None,
        }
    }
}

/// What the uplink needs from the rest of the daemon.
pub struct UplinkDeps {
    pub outbox: Outbox,
    pub appender: Appender,
    pub shared: Arc<Shared>,
    /// Notified after every commit that appended records, and by `sparkctl sync`.
    pub wake: Arc<Notify>,
    /// `true` while the link gate (VPN) allows draining.
    pub gate: watch::Receiver<bool>,
    pub shutdown: watch::Receiver<bool>,
}

/// The stored records one MQTT message carries: a contiguous run of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Carried {
    stream: Stream,
    first: u64,
    last: u64,
    count: u64,
}

/// Records read from the outbox per stream in one read transaction.
const READ_AHEAD: usize = 512;
/// The same for `snapshots`, whose records are chunks of up to 192 KiB.
const SNAPSHOT_READ_AHEAD: usize = 8;
/// Snapshot chunks handed to the client and not yet PUBACKed, at most: the
/// window counts messages, and 100 chunks would hold about 17 MB.
const SNAPSHOT_WINDOW: usize = 4;

/// One connection epoch's bookkeeping.
struct Epoch {
    /// Last seq read from the outbox, per stream.
    read_cursor: [u64; Stream::COUNT],
    /// Read but not yet handed to the client, per stream (bounded by
    /// READ_AHEAD plus one batch).
    ahead: [VecDeque<crate::outbox::Pending>; Stream::COUNT],
    /// Publishes handed to the client, not yet given a packet id, in order.
    /// `None` marks a status message (not a stored record).
    queued: VecDeque<Option<Carried>>,
    /// Packet id → records, awaiting PUBACK.
    inflight: HashMap<u16, Carried>,
    /// PUBACKed records not yet passed to the outbox: adjacent runs of one
    /// stream are merged and handed over once per burst of events.
    acked_run: Option<Carried>,
    /// Streams that may have more to send.
    dirty: [bool; Stream::COUNT],
    next_stream: usize,
    /// When the broker's CONNACK arrived in this epoch.
    connected_at: Option<std::time::Instant>,
    /// Subscribe to the inbound topics this epoch (paused after an
    /// oversized inbound message, see [`INBOUND_PAUSE`]).
    subscribe_inbound: bool,
}

impl Epoch {
    fn new() -> Self {
        Self {
            read_cursor: [0; Stream::COUNT],
            ahead: Default::default(),
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            acked_run: None,
            dirty: [true; Stream::COUNT],
            connected_at: None,
            subscribe_inbound: true,
            next_stream: 0,
        }
    }

    fn in_window(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }

    /// Messages of `stream` handed to the client and not yet PUBACKed.
    fn in_flight_of(&self, stream: Stream) -> usize {
        let queued = self.queued.iter().flatten().filter(|c| c.stream == stream).count();
        queued + self.inflight.values().filter(|c| c.stream == stream).count()
    }
}

pub async fn run(settings: UplinkSettings, deps: UplinkDeps) {
    run_with(settings, deps, Vec::new()).await
}

/// A message that arrived on one of a [`Subscription`]'s topics.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The broker kept it (retained) and re-sends it on every subscribe.
    pub retained: bool,
}

/// A message a subscriber asks the uplink to publish (QoS 1, not retained;
/// best effort: not stored in the outbox).
#[derive(Debug)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How a feature (the fleet update agent) talks over the uplink without
/// the uplink knowing it: topics subscribed on every connection, where
/// their messages go, and what to publish.
pub struct Subscription {
    pub topics: Vec<String>,
    /// Bounded: when it stays full for [`INBOUND_WAIT`] the message is
    /// dropped and counted in `dropped`.
    pub inbound: tokio::sync::mpsc::Sender<Inbound>,
    pub outbound: tokio::sync::mpsc::Receiver<Outbound>,
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Longest the MQTT loop waits for room in a subscriber's inbound queue.
///
/// **Architecture Invariant:** a subscriber can pause the MQTT loop for at
/// most this long per message; then the message is dropped and counted.
pub const INBOUND_WAIT: Duration = Duration::from_millis(500);

/// [`run`], also subscribed to each subscription's topics (the update
/// agent's, the diagnose agent's). An inbound message goes to the first
/// subscription with a topic filter matching it.
pub async fn run_with(settings: UplinkSettings, mut deps: UplinkDeps, mut updates: Vec<Subscription>) {
    let mut backoff = crate::sys::backoff::Backoff::new(settings.reconnect_min, settings.reconnect_max);
    // Inbound subscriptions resume after this, once an oversized message
    // (likely retained: re-sent on every subscribe) broke a connection.
    let mut inbound_paused_until: Option<std::time::Instant> = None;
    deps.shared.update_link(|l| {
        l.broker = format!("{}:{}", settings.broker.host, settings.broker.port);
        l.since_ms = now_ms();
    });
    loop {
        if *deps.shutdown.borrow() {
            return;
        }
        if !*deps.gate.borrow() {
            tokio::select! {
                _ = deps.gate.changed() => continue,
                _ = deps.shutdown.changed() => return,
            }
        }
        let subscribe_inbound = inbound_paused_until.is_none_or(|t| std::time::Instant::now() >= t);
        let outcome = run_epoch(&settings, &mut deps, &mut updates, subscribe_inbound).await;
        deps.shared.update_link(|l| {
            if l.broker_connected {
                l.since_ms = now_ms();
            }
            l.broker_connected = false;
        });
        match outcome {
            EpochEnd::Shutdown => return,
            EpochEnd::GateClosed => {
                backoff.reset();
                continue;
            }
            EpochEnd::Failed { stable, oversized_inbound } => {
                // Only a connection that lasted resets the backoff: one the
                // broker accepts and then drops at once (a bad inbound
                // message, a broker limit) must not reconnect in a tight loop.
                if stable {
                    backoff.reset();
                }
                if oversized_inbound {
                    inbound_paused_until = Some(std::time::Instant::now() + INBOUND_PAUSE);
                    tracing::warn!(
                        pause_s = INBOUND_PAUSE.as_secs(),
                        max_bytes = MAX_INBOUND_PACKET,
                        "an inbound MQTT message was larger than any update message: update topics \
                         unsubscribed for a while so records keep flowing"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = deps.shutdown.changed() => return,
                }
            }
        }
    }
}

enum EpochEnd {
    Shutdown,
    GateClosed,
    /// `stable`: the connection had lasted [`STABLE_CONNECTION`];
    /// `oversized_inbound`: it broke on an inbound packet above [`MAX_INBOUND_PACKET`].
    Failed {
        stable: bool,
        oversized_inbound: bool,
    },
}

/// The largest inbound packet the client takes: subscribers keep their
/// messages well below it (the update agent checks this at compile time).
/// A larger one cannot be skipped inside MQTT (the client
/// stops reading the stream at its header), so the connection ends and the
/// inbound topics pause for [`INBOUND_PAUSE`].
pub const MAX_INBOUND_PACKET: usize = 1024 * 1024;
/// How long inbound (update) subscriptions pause after an oversized message.
pub const INBOUND_PAUSE: Duration = Duration::from_secs(600);
/// A connection that lasted this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

fn mqtt_options(s: &UplinkSettings) -> MqttOptions {
    let mut o = MqttOptions::new(&s.client_id, &s.broker.host, s.broker.port);
    o.set_keep_alive(s.keep_alive);
    o.set_clean_session(true);
    o.set_inflight(s.window);
    o.set_max_packet_size(MAX_INBOUND_PACKET, 1024 * 1024);
    let offline = serde_json::to_vec(&StatusMessage::identity(false, &s.device_id, &s.group, s.binary_slot.as_deref()))
        .unwrap_or_default();
    o.set_last_will(LastWill::new(s.topic("status"), offline, QoS::AtLeastOnce, true));
    if let (Some(u), p) = (&s.username, &s.password) {
        o.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if let Some(tls) = &s.tls {
        o.set_transport(crate::uplink::tls::transport(tls.clone()));
    }
    o
}

/// The class of a connection error, read from rumqttc's typed error: the
/// doctor's advice depends on it.
fn failure_class(e: &rumqttc::ConnectionError) -> BrokerFailure {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    // A TLS alert after the handshake (a refused client certificate) comes
    // wrapped in an MQTT read error.
    if crate::uplink::tls::rustls_error(e).is_some() {
        return BrokerFailure::Tls;
    }
    match e {
        E::Tls(_) => BrokerFailure::Tls,
        E::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => BrokerFailure::Auth,
        E::ConnectionRefused(_) => BrokerFailure::Refused,
        E::Io(_) | E::NetworkTimeout | E::FlushTimeout => BrokerFailure::Network,
        _ => BrokerFailure::Protocol,
    }
}

/// A connection error for `sparkctl link` and the log: the whole source
/// chain (links already contained in the text before them are skipped:
/// rumqttc repeats its sources in its messages), plus a plain-words reason
/// for TLS failures.
fn connection_error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = c.source();
    }
    if let Some(why) = crate::uplink::tls::explain(e) {
        text.push_str(" (");
        text.push_str(why);
        text.push(')');
    }
    text
}

/// Most events taken from the event loop per turn of [`run_epoch`]'s
/// `select!`, when more are ready at once: setting up that `select!` (six
/// futures, three of them registering wakers) for every PUBACK cost the
/// unbatched drain about a tenth of its rate.
const EVENT_BURST: usize = 64;

async fn run_epoch(
    s: &UplinkSettings,
    deps: &mut UplinkDeps,
    updates: &mut [Subscription],
    subscribe_inbound: bool,
) -> EpochEnd {
    let cap = s.window as usize * 2 + 16;
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(s), cap);
    let mut epoch = Epoch::new();
    epoch.subscribe_inbound = subscribe_inbound;
    let mut connected = false;
    let mut status_tick = tokio::time::interval_at(tokio::time::Instant::now() + s.status_interval, s.status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = eventloop.poll() => {
                let mut next = Some(ev);
                let mut taken = 0;
                while let Some(ev) = next {
                    if let Some(end) = on_event(ev, s, deps, updates, &client, &mut epoch, &mut connected).await {
                        // PUBACKs taken before the end still count.
                        let _ = flush_acks(deps, &mut epoch);
                        return end;
                    }
                    taken += 1;
                    // More already to hand (buffered PUBACKs)? Take them
                    // now. Dropping a pending `poll` is what every other
                    // branch of this `select!` does too: rumqttc keeps
                    // its state across it.
                    next = if taken < EVENT_BURST { poll_once(eventloop.poll()).await } else { None };
                }
                if flush_acks(deps, &mut epoch).is_err() {
                    return EpochEnd::Shutdown; // writer gone: the daemon is stopping
                }
            }
            _ = deps.wake.notified() => {
                epoch.dirty = [true; Stream::COUNT];
            }
            Some(out) = next_outbound(updates), if connected => {
                if client.try_publish(out.topic, QoS::AtLeastOnce, false, out.payload).is_ok() {
                    epoch.queued.push_back(None);
                }
            }
            _ = status_tick.tick() => {
                if connected {
                    publish_status(s, &client, &mut epoch, deps, true);
                }
            }
            _ = deps.gate.changed() => {
                if !*deps.gate.borrow() {
                    tracing::warn!("link gate closed; uplink paused");
                    let _ = client.try_disconnect();
                    return EpochEnd::GateClosed;
                }
            }
            _ = deps.shutdown.changed() => {
                if connected {
                    drain_inflight(s, &client, &mut eventloop, &mut epoch, deps).await;
                }
                return EpochEnd::Shutdown;
            }
        }
        if connected {
            fill_window(s, &client, &mut epoch, deps);
        }
    }
}

/// `fut`'s output if it is ready on the first poll; otherwise drops it.
async fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// Handles one event of the MQTT event loop; `Some` ends the epoch.
async fn on_event(
    ev: Result<Event, rumqttc::ConnectionError>,
    s: &UplinkSettings,
    deps: &mut UplinkDeps,
    updates: &mut [Subscription],
    client: &AsyncClient,
    epoch: &mut Epoch,
    connected: &mut bool,
) -> Option<EpochEnd> {
    match ev {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {
            *connected = true;
            epoch.connected_at = Some(std::time::Instant::now());
            tracing::info!(broker = %format!("{}:{}", s.broker.host, s.broker.port), "uplink connected");
            deps.shared.update_link(|l| {
                l.broker_connected = true;
                l.last_error = None;
                l.last_error_kind = None;
                l.since_ms = now_ms();
                l.reconnects += 1;
            });
            // Clean sessions: subscribe again on every connection, before
            // the online status: the broker handles a client's packets in
            // order, so whoever sees `online` knows the update topics are
            // subscribed.
            let inbound = updates.iter().filter(|_| epoch.subscribe_inbound);
            for t in inbound.flat_map(|u| u.topics.iter()) {
                let _ = client.try_subscribe(t, QoS::AtLeastOnce);
            }
            publish_status(s, client, epoch, deps, true);
        }
        Ok(Event::Incoming(Packet::Publish(p))) => {
            let owner = updates.iter().find(|u| u.topics.iter().any(|f| rumqttc::matches(&p.topic, f)));
            if let Some(u) = owner {
                forward_inbound(u, Inbound { topic: p.topic, payload: p.payload.to_vec(), retained: p.retain }).await;
            }
        }
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
            if let Some(Some(c)) = epoch.queued.pop_front() {
                epoch.inflight.insert(pkid, c);
                deps.shared.published.fetch_add(c.count, Ordering::Relaxed);
            }
        }
        Ok(Event::Incoming(Packet::PubAck(ack))) => {
            if let Some(c) = epoch.inflight.remove(&ack.pkid) {
                match &mut epoch.acked_run {
                    Some(run) if run.stream == c.stream && run.last.checked_add(1) == Some(c.first) => {
                        run.last = c.last;
                        run.count += c.count;
                    }
                    _ => {
                        if flush_acks(deps, epoch).is_err() {
                            return Some(EpochEnd::Shutdown); // writer gone: the daemon is stopping
                        }
                        epoch.acked_run = Some(c);
                    }
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            let msg = connection_error_text(&e);
            if *connected {
                tracing::warn!(error = %msg, "uplink disconnected");
            } else if deps.shared.link().last_error.as_deref() != Some(msg.as_str()) {
                // Once per distinct reason, not once per retry.
                tracing::warn!(error = %msg, "uplink connect failed");
            } else {
                tracing::debug!(error = %msg, "uplink connect failed");
            }
            let kind = failure_class(&e);
            deps.shared.update_link(|l| {
                l.last_error = Some(msg);
                l.last_error_kind = Some(kind);
            });
            let oversized_inbound = matches!(
                e,
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                    rumqttc::Error::PayloadSizeLimitExceeded(_)
                ))
            );
            if oversized_inbound {
                count_inbound_discard(deps, "inbound message above the size limit", "");
            }
            let stable = epoch.connected_at.is_some_and(|t| t.elapsed() >= STABLE_CONNECTION);
            return Some(EpochEnd::Failed { stable, oversized_inbound });
        }
    }
    None
}

/// Counts an inbound message dropped unread (`sparkctl link`: `inbound_discarded`).
fn count_inbound_discard(deps: &UplinkDeps, reason: &'static str, topic: &str) {
    let n = {
        let mut n = 0;
        deps.shared.update_link(|l| {
            l.inbound_discarded += 1;
            n = l.inbound_discarded;
        });
        n
    };
    // The world can trigger this at will: log the 1st, 2nd, 4th, ...
    if n.is_power_of_two() {
        tracing::warn!(reason, topic, discarded = n, "inbound MQTT message discarded");
    }
}

/// Hands an inbound message to its subscriber. A full queue pauses this
/// loop for at most [`INBOUND_WAIT`]; then the message is dropped and
/// counted (a fleet push resumes when the operator pushes again).
async fn forward_inbound(u: &Subscription, msg: Inbound) {
    let msg = match u.inbound.try_send(msg) {
        Ok(()) => return,
        Err(tokio::sync::mpsc::error::TrySendError::Full(m)) => m,
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
    };
    if !matches!(tokio::time::timeout(INBOUND_WAIT, u.inbound.send(msg)).await, Ok(Ok(()))) {
        let n = u.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A push can overflow many times in a row: log the 1st, 2nd, 4th, ...
        if n.is_power_of_two() {
            tracing::warn!(dropped = n, "subscriber busy: inbound message dropped");
        }
    }
}

/// The next message a subscriber wants published, from any subscription
/// (in list order when several are ready); pending forever without one.
async fn next_outbound(updates: &mut [Subscription]) -> Option<Outbound> {
    std::future::poll_fn(|cx| {
        for u in updates.iter_mut() {
            // A closed subscriber (`Ready(None)`) has nothing more to say.
            if let std::task::Poll::Ready(Some(out)) = u.outbound.poll_recv(cx) {
                return std::task::Poll::Ready(Some(out));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Passes the merged run of PUBACKed records, if any, on to the outbox.
fn flush_acks(deps: &UplinkDeps, epoch: &mut Epoch) -> Result<(), crate::outbox::OutboxError> {
    match epoch.acked_run.take() {
        Some(run) => acknowledge(deps, run),
        None => Ok(()),
    }
}

/// Passes a PUBACK on to the outbox as an ack of the records it covers.
fn acknowledge(deps: &UplinkDeps, c: Carried) -> Result<(), crate::outbox::OutboxError> {
    deps.shared.acked.fetch_add(c.count, Ordering::Relaxed);
    if deps.appender.try_ack(c.stream, c.first, c.last)? {
        return Ok(());
    }
    // The writer's channel is full: wait, off the other tasks' worker.
    tokio::task::block_in_place(|| deps.appender.ack(c.stream, c.first, c.last))
}

/// Hands records to the client until the window (counted in messages) is
/// full or nothing is left.
fn fill_window(s: &UplinkSettings, client: &AsyncClient, epoch: &mut Epoch, deps: &UplinkDeps) {
    let window = s.window as usize;
    let per_msg = s.batch_max_records.max(1);
    // Refill as soon as there is room, even for one message. Waiting for a
    // bigger gap stalls on brokers that Nagle their PUBACKs (Mosquitto's
    // default): with nothing to send, our ACK is delayed 40 ms and so is
    // every PUBACK behind it. The read-ahead buffer keeps that cheap: one
    // read transaction per READ_AHEAD records, not per PUBACK.
    let mut idle_streams = 0;
    while epoch.in_window() < window && idle_streams < Stream::ALL.len() {
        let stream = Stream::ALL[epoch.next_stream % Stream::ALL.len()];
        epoch.next_stream += 1;
        let i = stream as usize;
        // A snapshot chunk is a message of its own: it is sized to fit one.
        let per_msg = if stream == Stream::Snapshots { 1 } else { per_msg };
        if epoch.ahead[i].len() < per_msg && epoch.dirty[i] {
            // Chunks are up to `chunk_bytes` each: read a few, not 512.
            let want = if stream == Stream::Snapshots { SNAPSHOT_READ_AHEAD } else { READ_AHEAD.max(per_msg * 2) };
            match deps.outbox.read_after(stream, epoch.read_cursor[i], want) {
                Ok(records) => {
                    if records.len() < want {
                        epoch.dirty[i] = false;
                    }
                    if let Some(last) = records.last() {
                        epoch.read_cursor[i] = last.seq;
                    }
                    epoch.ahead[i].extend(records);
                }
                Err(e) => {
                    tracing::error!(error = %e, "uplink: reading the outbox failed");
                    return;
                }
            }
        }
        let snapshots_full = stream == Stream::Snapshots && epoch.in_flight_of(Stream::Snapshots) >= SNAPSHOT_WINDOW;
        if epoch.ahead[i].is_empty() || snapshots_full {
            idle_streams += 1;
            continue;
        }
        idle_streams = 0;
        // One message per stream per turn: a long backlog in one stream
        // shares the window evenly with fresh records of the others.
        let ahead = epoch.ahead[i].make_contiguous();
        let (payload, n) =
            if per_msg == 1 { (ahead[0].payload.clone(), 1) } else { batch_payload(ahead, per_msg, s.batch_max_bytes) };
        let c = Carried { stream, first: ahead[0].seq, last: ahead[n - 1].seq, count: n as u64 };
        if client.try_publish(s.topic(stream.as_str()), QoS::AtLeastOnce, false, payload).is_err() {
            return; // client channel full: the next event retries
        }
        epoch.ahead[i].drain(..n);
        epoch.queued.push_back(Some(c));
    }
}

/// `{"records":[...]}` of as many leading records as fit both caps (at
/// least one); returns the payload and how many records it holds.
fn batch_payload(records: &[crate::outbox::Pending], max_records: usize, max_bytes: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(max_bytes.min(64 * 1024));
    out.extend_from_slice(b"{\"records\":[");
    let mut n = 0;
    for r in records.iter().take(max_records) {
        if n > 0 && out.len() + r.payload.len() + 3 > max_bytes {
            break;
        }
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.payload);
        n += 1;
    }
    out.extend_from_slice(b"]}");
    (out, n)
}

fn publish_status(s: &UplinkSettings, client: &AsyncClient, epoch: &mut Epoch, deps: &UplinkDeps, online: bool) {
    let engine_state = deps.shared.engine();
    let link = deps.shared.link();
    let pending = deps.outbox.counters().iter().map(|c| c.pending).sum();
    let now = now_ms();
    let oldest_age_s =
        deps.outbox.stats().ok().and_then(|st| st.oldest_ts_ms).map(|t| now.saturating_sub(t) as f64 / 1000.0);
    let body = StatusMessage {
        ts: now,
        engine: engine_state.active.map(|k| k.as_str()),
        pending: Some(pending),
        model: Some(engine_state.model.as_str()).filter(|m| !m.is_empty()),
        fallbacks: Some(engine_state.fallbacks),
        oldest_age_s,
        vpn_up: Some(link.vpn_up),
        reconnects: Some(link.reconnects),
        ..StatusMessage::identity(online, &s.device_id, &s.group, s.binary_slot.as_deref())
    };
    let Ok(payload) = serde_json::to_vec(&body) else { return };
    if client.try_publish(s.topic("status"), QoS::AtLeastOnce, true, payload).is_ok() {
        epoch.queued.push_back(None);
    }
}

/// On shutdown: stop handing out records, give the broker a moment to ack
/// what is in flight, mark the device offline and disconnect. Whatever is
/// not acked stays in the outbox for the next start.
async fn drain_inflight(
    s: &UplinkSettings,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    epoch: &mut Epoch,
    deps: &UplinkDeps,
) {
    publish_status(s, client, epoch, deps, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while epoch.in_window() > 0 {
        let ev = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(ev)) => ev,
            _ => break,
        };
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(c)) = epoch.queued.pop_front() {
                    epoch.inflight.insert(pkid, c);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(c) = epoch.inflight.remove(&ack.pkid) {
                    let _ = acknowledge(deps, c);
                }
            }
            _ => {}
        }
        // Status publishes are not tracked in `inflight`; stop once only
        // they could remain.
        if epoch.inflight.is_empty() && epoch.queued.iter().all(Option::is_none) {
            break;
        }
    }
    let _ = client.try_disconnect();
    // Let the event loop send the offline status and the DISCONNECT.
    let end = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(ev)) = tokio::time::timeout_at(end, eventloop.poll()).await {
        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Pending;

    fn rec(seq: u64, body: &str) -> Pending {
        Pending { stream: Stream::Events, seq, ts_ms: 0, payload: body.as_bytes().to_vec() }
    }

    #[test]
    fn batch_is_a_json_array_of_whole_records_within_both_caps() {
        let recs: Vec<_> = (1..=5).map(|i| rec(i, &format!("{{\"seq\":{i}}}"))).collect();
        let (p, n) = batch_payload(&recs, 3, 1 << 20);
        assert_eq!(n, 3);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["records"].as_array().unwrap().len(), 3);
        assert_eq!(v["records"][2]["seq"], 3);
        // Byte cap: stops before overflowing, but always carries one.
        let (p, n) = batch_payload(&recs, 100, 35);
        assert_eq!(n, 2, "{}", String::from_utf8_lossy(&p));
        let (_, n) = batch_payload(&recs, 100, 1);
        assert_eq!(n, 1);
    }
}
