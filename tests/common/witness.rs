//! A TCP relay between sparkd and a broker that records which records the
//! broker acknowledged.
//!
//! Mosquitto sends PUBACK before it persists a message, so a SIGKILLed broker
//! can lose records it had acknowledged: they were the broker's to keep, and
//! sparkd rightly deleted them. A fault test that kills the broker therefore
//! cannot demand that every record reach the consumer. What it can demand,
//! and checks with this relay, is sparkd's own promise: every accepted record
//! either reached the consumer or was acknowledged by the broker (so sparkd
//! never dropped one the broker had not taken).
//!
//! The relay parses MQTT 3.1.1 in both directions: a QoS 1 PUBLISH from
//! sparkd maps its packet id to the records in its payload (one record or a
//! `{"records": [...]}` batch); a PUBACK from the broker marks them
//! acknowledged. Packet ids are per connection, and so is the map.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// `stream` → seqs the broker acknowledged.
pub type Acked = BTreeMap<String, BTreeSet<u64>>;

pub struct PubackWitness {
    pub port: u16,
    acked: Arc<Mutex<Acked>>,
}

type InFlight = Arc<Mutex<HashMap<u16, Vec<(String, u64)>>>>;

impl PubackWitness {
    /// Listens on a free loopback port; each connection is relayed to
    /// `127.0.0.1:upstream` (refused while the broker is down, like the
    /// broker itself would be).
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the witness relay");
        let port = listener.local_addr().expect("relay address").port();
        let acked: Arc<Mutex<Acked>> = Arc::default();
        let all = acked.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                relay(client, broker, all.clone());
            }
        });
        PubackWitness { port, acked }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn acked(&self) -> Acked {
        self.acked.lock().unwrap().clone()
    }
}

fn relay(client: TcpStream, broker: TcpStream, acked: Arc<Mutex<Acked>>) {
    let in_flight: InFlight = Arc::default();
    let (Ok(client2), Ok(broker2)) = (client.try_clone(), broker.try_clone()) else { return };
    let publishes = in_flight.clone();
    // sparkd → broker: note each PUBLISH before its last byte goes on, so
    // the broker's PUBACK can never overtake the note.
    std::thread::spawn(move || {
        pump(client, broker, |kind, flags, body| {
            if kind == 3 && (flags >> 1) & 3 == 1 {
                if let Some((pkid, records)) = parse_publish(body) {
                    publishes.lock().unwrap().insert(pkid, records);
                }
            }
        })
    });
    // broker → sparkd: PUBACKs.
    std::thread::spawn(move || {
        pump(broker2, client2, |kind, _, body| {
            if kind == 4 && body.len() >= 2 {
                let pkid = u16::from_be_bytes([body[0], body[1]]);
                if let Some(records) = in_flight.lock().unwrap().remove(&pkid) {
                    let mut acked = acked.lock().unwrap();
                    for (stream, seq) in records {
                        acked.entry(stream).or_default().insert(seq);
                    }
                }
            }
        })
    });
}

/// Copies `from` to `to`, calling `on_packet(type, flags, body)` for each
/// whole MQTT packet before forwarding the bytes that completed it. Closes
/// both when either side ends.
fn pump(mut from: TcpStream, mut to: TcpStream, mut on_packet: impl FnMut(u8, u8, &[u8])) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut used = 0;
        while let Some((kind, flags, body, len)) = next_packet(&pending[used..]) {
            on_packet(kind, flags, body);
            used += len;
        }
        pending.drain(..used);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// One whole packet at the start of `b`: (type, flags, body, total length).
fn next_packet(b: &[u8]) -> Option<(u8, u8, &[u8], usize)> {
    let first = *b.first()?;
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let byte = *b.get(i)?;
        len |= ((byte & 0x7f) as usize) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let body = b.get(i..i + len)?;
    Some((first >> 4, first & 0x0f, body, i + len))
}

/// A QoS 1 PUBLISH body: its packet id and the (stream, seq) of every record
/// in its payload.
fn parse_publish(body: &[u8]) -> Option<(u16, Vec<(String, u64)>)> {
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let at = 2 + topic_len;
    let pkid = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
    let payload: serde_json::Value = serde_json::from_slice(body.get(at + 2..)?).ok()?;
    let one = |r: &serde_json::Value| Some((r["stream"].as_str()?.to_string(), r["seq"].as_u64()?));
    let records = match payload.get("records").and_then(|r| r.as_array()) {
        Some(batch) => batch.iter().filter_map(one).collect(),
        None => one(&payload).into_iter().collect(),
    };
    Some((pkid, records))
}
