//! Inbound MQTT on the update topics, as the device handles it: the
//! uplink forwards publishes whose topic ends in `/update/manifest` or
//! `/update/chunk` (src/uplink/mod.rs `forward_update`), the update agent
//! dispatches them by that suffix (src/update/agent.rs `Agent::run`) to
//! `Updater::receive_manifest` or a `Chunk` decode plus
//! `Updater::receive_chunk`. Those two functions are private, so the
//! harness repeats their suffix test and calls the same public steps.
//!
//! Each input starts from a fresh store on tmpfs holding one accepted
//! config update (fixtures/dispatch_manifest.json, signed by the fuzzing
//! key), so chunks reach staging; a chunk that completes it is activated.
//! Input: messages separated by `\n--\n`, each `<topic selector byte><payload>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spark_edge::update::{Chunk, Phase, Updater, UpdaterOptions, Version, envelope_update_id, topics};
use spark_edge_fuzz::{DEVICE, GROUP, PREFIX, WALL_CLOCK, scratch, sign, trusted_keys};

const MANIFEST: &[u8] = include_bytes!("../fixtures/dispatch_manifest.json");
const SEPARATOR: &[u8] = b"\n--\n";

fn topic(selector: u8) -> String {
    match selector {
        b'm' => topics::device_manifest(PREFIX, DEVICE),
        b'c' => topics::device_chunk(PREFIX, DEVICE),
        b'M' => topics::group_manifest(PREFIX, GROUP),
        b'C' => topics::group_chunk(PREFIX, GROUP),
        b's' => topics::state(PREFIX, DEVICE),
        _ => format!("{PREFIX}/{DEVICE}/update/other"),
    }
}

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        out.push(&data[..i]);
        data = &data[i + SEPARATOR.len()..];
    }
    out.push(data);
    out
}

fuzz_target!(|data: &[u8]| {
    let messages = split(data);
    if messages.len() > 8 {
        return; // bounds the file IO per input
    }
    let dir = scratch("dispatch");
    let mut updater = Updater::open(UpdaterOptions {
        state_dir: dir.clone(),
        device_id: DEVICE.into(),
        group: GROUP.into(),
        keys: trusted_keys(),
        max_artifact_bytes: 1 << 20,
        running_version: Version { major: 0, minor: 1, patch: 0 },
        reserve_bytes: 0,
    })
    .expect("a store on tmpfs opens");
    updater.receive_manifest(&sign(MANIFEST), WALL_CLOCK).expect("the fixture manifest is accepted");

    for m in messages {
        let Some((&selector, payload)) = m.split_first() else { continue };
        let topic = topic(selector);
        if topic.ends_with("/update/manifest") {
            let id = envelope_update_id(payload).unwrap_or_default();
            match updater.receive_manifest(payload, WALL_CLOCK) {
                Ok(rec) => assert_eq!(rec.update_id, id),
                Err(e) => {
                    if let Some(r) = e.rejection() {
                        let _ = updater.rejection_report(&id, r);
                    }
                }
            }
        } else if topic.ends_with("/update/chunk") {
            let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else { continue };
            match updater.receive_chunk(&chunk) {
                Ok(rec) if rec.phase == Phase::Staged => {
                    let _ = updater.report(&rec);
                    let active = updater.activate(&rec.update_id).expect("a staged config activates");
                    assert_eq!(active.phase, Phase::Active);
                    let file = updater.current_artifact(rec.kind, &rec.name).expect("an active config has a file");
                    let bytes = std::fs::read(&file).expect("the active artifact is readable");
                    assert_eq!(bytes.len() as u64, rec.length);
                }
                Ok(rec) => {
                    let _ = updater.report(&rec);
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        // Anything else (update/state, other subtopics) is ignored by the agent.
    }
});
