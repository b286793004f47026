//! `spark-fleet devices` over 10,000 retained statuses (issue 19): time to
//! the first table, against a baseline measured in the same run.
//!
//! - baseline: a bare rumqttc subscriber on `spark/+/status` (QoS 0, as
//!   `devices` subscribes) that only counts the retained messages until it
//!   has all 10,000: what any tool must at least pay to read the fleet;
//! - ours: the `spark-fleet devices` process, from spawn to exit (connect,
//!   subscribe, receive, parse every status, the end marker, sort, print the
//!   table).
//!
//! `cargo bench --bench fleet_devices` (needs `mosquitto`; 5 interleaved
//! rounds, medians). Without `--bench` (as `cargo test --benches` runs it)
//! one round over 1,000 statuses.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use spark_edge::uplink::StatusMessage;

/// A status as a device sends it (about 330 bytes).
fn status(i: usize) -> (String, Vec<u8>) {
    let id = format!("pi5-{i:05}");
    let group = format!("site-{}", i % 40);
    let body = StatusMessage {
        ts: 1_700_000_000_000 + i as u64,
        engine: Some(if i.is_multiple_of(50) { "onnx-cpu" } else { "hailo" }),
        pending: Some((i % 977) as u64 * 3),
        model: Some("nanodet 1.0.0"),
        fallbacks: Some(u64::from(i.is_multiple_of(50))),
        oldest_age_s: Some((i % 300) as f64),
        vpn_up: Some(!i.is_multiple_of(33)),
        reconnects: Some((i % 5) as u64),
        ..StatusMessage::identity(!i.is_multiple_of(20), &id, &group, Some("slot-a"))
    };
    (format!("spark/{id}/status"), serde_json::to_vec(&body).expect("status json"))
}

/// Connect, subscribe, count `n` retained statuses; seconds.
fn bare_subscriber(port: u16, n: usize, round: usize) -> f64 {
    let t = Instant::now();
    let mut o = MqttOptions::new(format!("bench-bare-{}-{round}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = Client::new(o, 64);
    let mut got = 0;
    for ev in conn.iter() {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.try_subscribe("spark/+/status", QoS::AtMostOnce).expect("subscribe");
            }
            Ok(Event::Incoming(Packet::Publish(_))) => {
                got += 1;
                if got == n {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("bare subscriber: {e}"),
        }
    }
    let s = t.elapsed().as_secs_f64();
    let _ = client.disconnect();
    s
}

/// `spark-fleet devices` from spawn to exit; seconds. Checks the table.
fn fleet_devices(url: &str, n: usize) -> f64 {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_spark-fleet"))
        .args(["devices", "--broker", url])
        .stderr(Stdio::inherit())
        .output()
        .expect("spark-fleet devices");
    let s = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "spark-fleet devices failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default();
    assert!(summary.starts_with(&format!("{n} devices: ")), "incomplete table: {summary}");
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if quick { (1_000, 1) } else { (10_000, 5) };
    let statuses: Vec<(String, Vec<u8>)> = (0..n).map(status).collect();
    let (parse, table) = in_process(&statuses);
    let broker = mosquitto();
    common::fleet::publish_retained_all(&broker, statuses);
    let url = broker.url();
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        base.push(bare_subscriber(broker.port, n, round));
        ours.push(fleet_devices(&url, n));
    }
    let (b, o) = (median(base), median(ours));
    println!(
        "| {n} retained statuses | bare subscriber (count only) | `spark-fleet devices` (spawn to table) | ratio |"
    );
    println!("| --- | --- | --- | --- |");
    println!("| time to all statuses / first table | {:.0} ms | {:.0} ms | {:.2}× |", b * 1e3, o * 1e3, o / b);
    println!("| of which in-process: parse {n} statuses | - | {:.1} ms | - |", parse * 1e3);
    println!("| of which in-process: sort, summary, render the table | - | {:.1} ms | - |", table * 1e3);
}

/// The pure part alone (medians of 5): every status into the view, and
/// the table built from it; seconds.
fn in_process(statuses: &[(String, Vec<u8>)]) -> (f64, f64) {
    use spark_edge::fleet::devices::{Filter, Fleet, SortKey, render_table, summary};
    let (mut parse, mut table) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let mut fleet = Fleet::default();
        for (topic, payload) in statuses {
            fleet.apply("spark", topic, payload);
        }
        parse.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let rows = fleet.rows(&Filter::default(), SortKey::Id);
        let s = summary(&rows, 1000);
        std::hint::black_box(render_table(&rows, &s, 1_700_000_100_000));
        table.push(t.elapsed().as_secs_f64());
    }
    (median(parse), median(table))
}
