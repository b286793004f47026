//! A light device simulator for fleet tests: many simulated devices on one
//! MQTT connection, speaking the device's topics. Each publishes its retained
//! `<prefix>/<id>/status` (the uplink's `StatusMessage`) after subscribing
//! to its `update/manifest`, and answers a pushed manifest on
//! `<id>/update/state` the way `sparkd`'s update agent does: `received`,
//! then per [`Behaviour`]. The envelope's signature is checked with the
//! test's trusted keys; a manifest already seen is refused as `not_newer`
//! (as a device refuses a replayed update). It reacts to the manifest alone:
//! chunks are not subscribed (the broker drops them), so a simulated device
//! costs the broker nothing for the artifact.
//!
//! Not simulated: the last will (a `GoesOffline` device publishes the
//! offline status itself), chunk reassembly, activation time.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use spark_edge::update::{Phase, StateReport, TrustedKeys, open_envelope};
use spark_edge::uplink::StatusMessage;

/// How a simulated device answers an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `active`, then a status naming the new model.
    Healthy,
    /// `rolled_back` (a build that crashes at start).
    Crashing,
    /// `active`, then a status on the CPU after a fallback.
    Fallback,
    /// Bytes that are no report.
    Garbage,
    /// No answer; its status turns offline.
    GoesOffline,
}

pub struct SimDevice {
    pub id: String,
    pub group: String,
    pub behaviour: Behaviour,
}

#[derive(Default)]
struct DevState {
    seen: BTreeSet<String>,
    model: String,
}

pub struct DeviceSim {
    stop: Arc<AtomicBool>,
    /// Manifests received per device (replays included).
    pub manifests: Arc<Mutex<BTreeMap<String, usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn status(id: &str, group: &str, online: bool, model: &str, fallback: bool) -> Vec<u8> {
    let body = if online {
        StatusMessage {
            ts: spark_edge::record::now_ms(),
            engine: Some(if fallback { "onnx-cpu" } else { "hailo" }),
            pending: Some(0),
            model: Some(model),
            fallbacks: Some(u64::from(fallback)),
            oldest_age_s: Some(0.0),
            vpn_up: Some(true),
            reconnects: Some(0),
            ..StatusMessage::identity(true, id, group, Some("slot-a"))
        }
    } else {
        StatusMessage::identity(false, id, group, None)
    };
    serde_json::to_vec(&body).expect("status json")
}

fn report(id: &str, group: &str, update_id: &str, phase: Phase) -> Vec<u8> {
    let r = StateReport {
        device_id: id.into(),
        group: group.into(),
        update_id: update_id.into(),
        kind: None,
        name: None,
        version: None,
        phase,
        chunks: None,
        ts: spark_edge::record::now_ms(),
    };
    serde_json::to_vec(&r).expect("report json")
}

impl DeviceSim {
    /// Starts the devices (running model `centerface 1.0.0`) and returns once
    /// the broker holds every retained status.
    pub fn start(port: u16, devices: Vec<SimDevice>, trusted_keys: &Path) -> Self {
        let keys = TrustedKeys::parse(&std::fs::read_to_string(trusted_keys).expect("read the trusted keys"))
            .expect("trusted keys");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let manifests: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let mut opts = MqttOptions::new(format!("devsim-{}-{port}", std::process::id()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_inflight(200);
        let (client, mut conn) = Client::new(opts, 8192);
        let n = devices.len();
        let by_id: BTreeMap<String, (SimDevice, Mutex<DevState>)> = devices
            .into_iter()
            .map(|d| {
                (d.id.clone(), (d, Mutex::new(DevState { model: "centerface 1.0.0".into(), ..Default::default() })))
            })
            .collect();
        let (s, a, m) = (stop.clone(), acked.clone(), manifests.clone());
        let thread = std::thread::spawn(move || {
            for ev in conn.iter() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe("spark/+/update/manifest", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        for (id, (d, st)) in &by_id {
                            let model = st.lock().unwrap().model.clone();
                            let body = status(id, &d.group, true, &model, false);
                            let _ = client.try_publish(format!("spark/{id}/status"), QoS::AtLeastOnce, true, body);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Some(id) = p.topic.strip_prefix("spark/").and_then(|t| t.strip_suffix("/update/manifest"))
                        else {
                            continue;
                        };
                        let Some((d, st)) = by_id.get(id) else { continue };
                        *m.lock().unwrap().entry(id.to_string()).or_default() += 1;
                        let Ok(v) = open_envelope(&p.payload, &keys) else { continue };
                        let state_topic = format!("spark/{id}/update/state");
                        let mut st = st.lock().unwrap();
                        let send = |payload: Vec<u8>| {
                            let _ = client.try_publish(state_topic.clone(), QoS::AtLeastOnce, false, payload);
                        };
                        if !st.seen.insert(v.update_id.clone()) {
                            let phase = Phase::Rejected { code: "not_newer".into(), reason: "already accepted".into() };
                            send(report(id, &d.group, &v.update_id, phase));
                            continue;
                        }
                        send(report(id, &d.group, &v.update_id, Phase::Received));
                        let new_model = format!("{} {}", v.manifest.name, v.manifest.version);
                        let status_topic = format!("spark/{id}/status");
                        match d.behaviour {
                            Behaviour::Healthy | Behaviour::Fallback => {
                                st.model = new_model;
                                send(report(id, &d.group, &v.update_id, Phase::Active));
                                let fallback = d.behaviour == Behaviour::Fallback;
                                let body = status(id, &d.group, true, &st.model, fallback);
                                let _ = client.try_publish(status_topic, QoS::AtLeastOnce, true, body);
                            }
                            Behaviour::Crashing => {
                                let reason = "the new version crashed at start; the previous one runs".to_string();
                                send(report(id, &d.group, &v.update_id, Phase::RolledBack { reason }));
                            }
                            Behaviour::Garbage => send(b"\x00\xffnot a report".to_vec()),
                            Behaviour::GoesOffline => {
                                let body = status(id, &d.group, false, &st.model, false);
                                let _ = client.try_publish(status_topic, QoS::AtLeastOnce, true, body);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        crate::common::wait_for(Duration::from_secs(60), || (acked.load(Ordering::Relaxed) >= n).then_some(()))
            .expect("the simulated devices' statuses were not all retained");
        DeviceSim { stop, manifests, thread: Some(thread) }
    }
}

impl Drop for DeviceSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.thread.take());
    }
}
