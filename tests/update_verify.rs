//! Fleet update behaviour against real files: verification refusals, staging
//! and activation, rollback, replay, key rotation, resumable chunk transfer,
//! and SIGKILL at every state transition.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use spark_edge::inference::model::sha256_hex;
use spark_edge::update::{
    ArtifactSpec, CRASH_ENV, Kind, Phase, Rejection, TRUSTED_TIME_FLOOR_UNIX, Targets, TrustedKey, TrustedKeys,
    UpdateError, UpdateManifest, UpdateRecord, Updater, UpdaterOptions, Version, chunk_artifact, selected_model,
    sign_envelope,
};

const DEVICE: &str = "dev-1";
const GROUP: &str = "lab";
const ISSUED: u64 = TRUSTED_TIME_FLOOR_UNIX + 1_000;
const WALL: u64 = TRUSTED_TIME_FLOOR_UNIX + 2_000;
const MAX_ARTIFACT: u64 = 1 << 20;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn trusted(ids: &[(&str, u8)]) -> TrustedKeys {
    TrustedKeys::new(
        ids.iter().map(|(id, n)| TrustedKey { key_id: id.to_string(), key: key(*n).verifying_key() }).collect(),
    )
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn manifest(kind: Kind, name: &str, version: &str, artifact: &[u8]) -> UpdateManifest {
    UpdateManifest {
        kind,
        name: name.into(),
        version: v(version),
        targets: Targets { devices: vec![DEVICE.into()], group: None },
        artifact: ArtifactSpec {
            file_name: format!("{name}-{version}.onnx"),
            length: artifact.len() as u64,
            sha256: sha256_hex(artifact),
        },
        issued_at: ISSUED,
        expires_at: ISSUED + 30 * 86_400,
        min_running_version: None,
        hailort_version: None,
        canary: None,
        shadow: false,
    }
}

fn sign(m: &UpdateManifest) -> Vec<u8> {
    sign_envelope(&serde_json::to_vec(m).unwrap(), &[("k1", &key(1))])
}

fn options(dir: &Path, keys: TrustedKeys) -> UpdaterOptions {
    UpdaterOptions {
        state_dir: dir.to_path_buf(),
        device_id: DEVICE.into(),
        group: GROUP.into(),
        keys,
        max_artifact_bytes: MAX_ARTIFACT,
        running_version: v("0.1.0"),
        reserve_bytes: 0,
    }
}

fn open(dir: &Path) -> Updater {
    Updater::open(options(dir, trusted(&[("k1", 1)]))).unwrap()
}

fn artifact(tag: &str, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag.as_bytes()[i % tag.len()]).collect()
}

/// Manifest, then every chunk in order.
fn deliver(u: &mut Updater, envelope: &[u8], art: &[u8], chunk: usize) -> Result<UpdateRecord, UpdateError> {
    let rec = u.receive_manifest(envelope, WALL)?;
    let mut last = rec.clone();
    for c in chunk_artifact(&rec.update_id, art, chunk) {
        last = u.receive_chunk(&c)?;
    }
    Ok(last)
}

fn install(u: &mut Updater, version: &str, art: &[u8]) -> UpdateRecord {
    let rec = deliver(u, &sign(&manifest(Kind::Model, "centerface", version, art)), art, 4096).unwrap();
    assert_eq!(rec.phase, Phase::Staged);
    let rec = u.activate(&rec.update_id).unwrap();
    assert_eq!(rec.phase, Phase::Active);
    rec
}

/// Every file and symlink under `dir`, with contents or link targets.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.map(Result::unwrap) {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(&p).unwrap().display()));
            } else if t.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, sha256_hex(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn current_target(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("models/centerface/current")).ok().map(|p| p.display().to_string())
}

fn code(e: UpdateError) -> &'static str {
    match e {
        UpdateError::Rejected(r) => r.code(),
        other => panic!("expected a rejection, got {other}"),
    }
}

#[test]
fn accepted_model_update_swaps_current_keeps_previous_and_rolls_back() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let (a1, a2) = (artifact("one", 10_000), artifact("two", 12_345));
    let r1 = install(&mut u, "1.0.0", &a1);
    assert_eq!(std::fs::read(u.current_model_manifest("centerface").unwrap()).unwrap(), a1);

    let r2 = install(&mut u, "1.1.0", &a2);
    let cur = u.current_model_manifest("centerface").unwrap();
    assert_eq!(std::fs::read(&cur).unwrap(), a2);
    assert!(cur.ends_with("centerface-1.1.0.onnx"));
    let prev = std::fs::read_link(d.path().join("models/centerface/previous")).unwrap();
    assert!(prev.display().to_string().starts_with("1.0.0-"));
    let e = &u.installed()["model/centerface"];
    assert_eq!((e.active, e.previous, e.highest), (Some(v("1.1.0")), Some(v("1.0.0")), v("1.1.0")));
    assert_eq!(u.record(&r1.update_id).unwrap().unwrap().phase, Phase::Superseded);

    u.rollback(Kind::Model, "centerface", "canary failed").unwrap();
    assert_eq!(std::fs::read(u.current_model_manifest("centerface").unwrap()).unwrap(), a1);
    let e = &u.installed()["model/centerface"];
    assert_eq!((e.active, e.previous, e.highest), (Some(v("1.0.0")), None, v("1.1.0")));
    assert_eq!(u.record(&r2.update_id).unwrap().unwrap().phase, Phase::RolledBack { reason: "canary failed".into() });
    assert_eq!(u.record(&r1.update_id).unwrap().unwrap().phase, Phase::Active);
    // A second rollback has nothing to go back to.
    assert!(matches!(u.rollback(Kind::Model, "centerface", "again"), Err(UpdateError::NoPrevious { .. })));
    // The rolled-back version cannot come back, not even re-signed.
    let mut again = manifest(Kind::Model, "centerface", "1.1.0", &a2);
    again.issued_at += 5;
    assert_eq!(code(u.receive_manifest(&sign(&again), WALL).unwrap_err()), "not_newer");

    // State survives a reopen.
    drop(u);
    let u = open(d.path());
    assert_eq!(u.installed()["model/centerface"].active, Some(v("1.0.0")));
}

#[test]
fn a_model_of_another_name_is_selected_and_its_rollback_selects_the_model_before() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    assert_eq!(selected_model(d.path()), None, "nothing selected before the fleet says so");
    install(&mut u, "1.0.0", &artifact("one", 1_000));
    assert_eq!(selected_model(d.path()).as_deref(), Some("centerface"));

    let other = artifact("nano", 2_000);
    let m = manifest(Kind::Model, "nanodet", "2.0.0", &other);
    let rec = deliver(&mut u, &sign(&m), &other, 700).unwrap();
    u.activate(&rec.update_id).unwrap();
    assert_eq!(selected_model(d.path()).as_deref(), Some("nanodet"));
    assert_eq!(std::fs::read(u.current_model_manifest("nanodet").unwrap()).unwrap(), other);
    // The model switched from keeps its own current version.
    assert!(u.current_model_manifest("centerface").is_some());

    // Rolling back the first version of a model goes back to the model before it.
    u.rollback(Kind::Model, "nanodet", "canary failed").unwrap();
    assert_eq!(selected_model(d.path()).as_deref(), Some("centerface"));
    assert!(u.current_model_manifest("nanodet").is_none());
    assert_eq!(u.record(&rec.update_id).unwrap().unwrap().phase, Phase::RolledBack { reason: "canary failed".into() });
    // ...and only once: then there is nothing to go back to.
    assert!(matches!(u.rollback(Kind::Model, "centerface", "again"), Err(UpdateError::NoPrevious { .. })));
}

#[test]
fn every_refusal_is_typed_and_leaves_the_disk_untouched() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let a1 = artifact("one", 5_000);
    install(&mut u, "1.0.0", &a1);
    let art = artifact("new", 3_000);
    let good = || manifest(Kind::Model, "centerface", "1.2.0", &art);

    let with = |f: &dyn Fn(&mut UpdateManifest)| {
        let mut m = good();
        f(&mut m);
        sign(&m)
    };
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"not json".to_vec(), "malformed_envelope"),
        (
            "manifest not base64",
            br#"{"manifest":"!!","signatures":[{"key_id":"k1","sig":"00"}]}"#.to_vec(),
            "malformed_envelope",
        ),
        ("no signatures", sign_envelope(b"{}", &[]), "malformed_envelope"),
        ("unknown key", sign_envelope(&serde_json::to_vec(&good()).unwrap(), &[("k9", &key(9))]), "unknown_key"),
        (
            "wrong key under a trusted id",
            sign_envelope(&serde_json::to_vec(&good()).unwrap(), &[("k1", &key(2))]),
            "bad_signature",
        ),
        ("expired", with(&|m| m.expires_at = WALL - 1), "expired"),
        (
            "other device",
            with(&|m| m.targets = Targets { devices: vec!["dev-2".into()], group: Some("other".into()) }),
            "not_targeted",
        ),
        ("same version", with(&|m| m.version = v("1.0.0")), "not_newer"),
        ("older version", with(&|m| m.version = v("0.9.9")), "not_newer"),
        ("needs newer sparkd", with(&|m| m.min_running_version = Some(v("9.0.0"))), "running_too_old"),
        ("oversized", with(&|m| m.artifact.length = MAX_ARTIFACT + 1), "oversized"),
        ("traversal in file name", with(&|m| m.artifact.file_name = "../../etc/passwd".into()), "unsafe_name"),
        ("slash in file name", with(&|m| m.artifact.file_name = "a/b".into()), "unsafe_name"),
        ("NUL in file name", with(&|m| m.artifact.file_name = "a\0b".into()), "unsafe_name"),
        ("long file name", with(&|m| m.artifact.file_name = "x".repeat(129)), "unsafe_name"),
        ("traversal in name", with(&|m| m.name = "..".into()), "unsafe_name"),
        ("bad sha256", with(&|m| m.artifact.sha256 = "zz".into()), "malformed_manifest"),
    ];
    // A signed manifest with a field this device does not know.
    let mut value = serde_json::to_value(good()).unwrap();
    value["run_before_install"] = "rm -rf /".into();
    cases.push((
        "unknown manifest field",
        sign_envelope(&serde_json::to_vec(&value).unwrap(), &[("k1", &key(1))]),
        "unknown_manifest_field",
    ));
    // ...or inside one of its objects.
    let mut value = serde_json::to_value(good()).unwrap();
    value["artifact"]["post_install"] = "reboot".into();
    cases.push((
        "unknown artifact field",
        sign_envelope(&serde_json::to_vec(&value).unwrap(), &[("k1", &key(1))]),
        "unknown_manifest_field",
    ));
    // A valid signature over other bytes than the shipped manifest.
    let mut env: serde_json::Value = serde_json::from_slice(&sign(&good())).unwrap();
    let other = sign(&manifest(Kind::Model, "centerface", "1.3.0", &art));
    env["signatures"] = serde_json::from_slice::<serde_json::Value>(&other).unwrap()["signatures"].clone();
    cases.push(("signature of another manifest", serde_json::to_vec(&env).unwrap(), "bad_signature"));
    // Unknown envelope field.
    let mut env: serde_json::Value = serde_json::from_slice(&sign(&good())).unwrap();
    env["extra"] = 1.into();
    cases.push(("unknown envelope field", serde_json::to_vec(&env).unwrap(), "malformed_envelope"));

    let before = snapshot(d.path());
    for (what, envelope, want) in cases {
        let got = code(u.receive_manifest(&envelope, WALL).unwrap_err());
        assert_eq!(got, want, "{what}");
        assert_eq!(snapshot(d.path()), before, "{what} changed the disk");
    }
    // Not enough free space to stage.
    let mut tight = options(d.path(), trusted(&[("k1", 1)]));
    tight.reserve_bytes = u64::MAX / 4;
    let mut u2 = Updater::open(tight).unwrap();
    assert_eq!(code(u2.receive_manifest(&sign(&good()), WALL).unwrap_err()), "insufficient_space");
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn artifact_mismatches_are_rejected_without_touching_current() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    install(&mut u, "1.0.0", &artifact("one", 5_000));
    let models_before = snapshot(&d.path().join("models"));
    let installed_before = u.installed().clone();

    // Right length, wrong bytes: digest mismatch after reassembly.
    let art = artifact("new", 8_000);
    let mut m = manifest(Kind::Model, "centerface", "1.1.0", &art);
    m.artifact.sha256 = sha256_hex(b"something else");
    let e = deliver(&mut u, &sign(&m), &art, 1000).unwrap_err();
    assert_eq!(code(e), "artifact_digest");

    // Chunks that add up to less than the signed length.
    let mut m = manifest(Kind::Model, "centerface", "1.1.1", &art);
    m.artifact.length = 8_001;
    let e = deliver(&mut u, &sign(&m), &art, 1000).unwrap_err();
    assert_eq!(code(e), "artifact_length");

    // More data than the signed length is refused chunk by chunk.
    let mut m = manifest(Kind::Model, "centerface", "1.1.2", &art);
    m.artifact.length = 4_000;
    let e = deliver(&mut u, &sign(&m), &art, 1000).unwrap_err();
    assert_eq!(code(e), "corrupt_chunk");

    assert_eq!(snapshot(&d.path().join("models")), models_before);
    assert_eq!(u.installed(), &installed_before);
    let rejected: Vec<_> =
        u.records().unwrap().into_iter().filter(|r| matches!(r.phase, Phase::Rejected { .. })).collect();
    assert_eq!(rejected.len(), 2);

    // A digest-rejected update may be sent again, correctly this time.
    let good = manifest(Kind::Model, "centerface", "1.1.0", &art);
    let rec = deliver(&mut u, &sign(&good), &art, 1000).unwrap();
    assert_eq!(rec.phase, Phase::Staged);
}

#[test]
fn corrupt_and_truncated_chunks_are_refused_and_good_copies_complete_the_transfer() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let art = artifact("chunks", 10_000);
    let rec = u.receive_manifest(&sign(&manifest(Kind::Model, "centerface", "1.0.0", &art)), WALL).unwrap();
    let chunks = chunk_artifact(&rec.update_id, &art, 1000);

    let mut flipped = chunks[3].clone();
    let mut bytes = flipped.bytes().unwrap();
    bytes[10] ^= 1;
    flipped.data = base64_of(&bytes);
    let mut truncated = chunks[4].clone();
    truncated.data = base64_of(&chunks[4].bytes().unwrap()[..500]);
    let mut bad_id = chunks[0].clone();
    bad_id.update_id = "../../etc".into();
    let mut bad_index = chunks[0].clone();
    bad_index.index = 99;
    for c in [&flipped, &truncated, &bad_id, &bad_index] {
        let e = u.receive_chunk(c).unwrap_err();
        assert!(matches!(e.rejection(), Some(Rejection::CorruptChunk { .. })), "{e}");
    }
    let mut last = None;
    for c in &chunks {
        last = Some(u.receive_chunk(c).unwrap());
    }
    assert_eq!(last.unwrap().phase, Phase::Staged);
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn replay_of_an_old_manifest_after_a_newer_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let (a1, a2) = (artifact("one", 2_000), artifact("two", 2_000));
    let old = sign(&manifest(Kind::Model, "centerface", "1.0.0", &a1));
    let rec = deliver(&mut u, &old, &a1, 500).unwrap();
    u.activate(&rec.update_id).unwrap();
    install(&mut u, "2.0.0", &a2);
    let before = snapshot(d.path());
    // The exact old envelope, and the old version never seen here before.
    assert_eq!(code(u.receive_manifest(&old, WALL).unwrap_err()), "not_newer");
    let mut other = manifest(Kind::Model, "centerface", "1.5.0", &a1);
    other.issued_at += 1;
    assert_eq!(code(u.receive_manifest(&sign(&other), WALL).unwrap_err()), "not_newer");
    // Re-activating the superseded update is refused as well.
    assert!(matches!(u.activate(&rec.update_id), Err(UpdateError::WrongPhase { .. })));
    assert_eq!(snapshot(d.path()), before);
    // Replay protection is persisted.
    drop(u);
    let mut u = open(d.path());
    assert_eq!(code(u.receive_manifest(&old, WALL).unwrap_err()), "not_newer");
}

#[test]
fn a_staged_older_version_cannot_be_activated_after_a_newer_one() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let (a1, a2) = (artifact("one", 2_000), artifact("two", 2_000));
    let r1 = deliver(&mut u, &sign(&manifest(Kind::Model, "centerface", "1.0.0", &a1)), &a1, 500).unwrap();
    install(&mut u, "1.1.0", &a2);
    assert_eq!(code(u.activate(&r1.update_id).unwrap_err()), "not_newer");
    assert!(current_target(d.path()).unwrap().starts_with("1.1.0-"));
}

#[test]
fn key_rotation_accepts_either_trusted_key_and_refuses_retired_ones() {
    let d = tempfile::tempdir().unwrap();
    let mut u = Updater::open(options(d.path(), trusted(&[("k1", 1), ("k2", 2)]))).unwrap();
    let a = artifact("rot", 1_000);
    let m = manifest(Kind::Model, "centerface", "1.0.0", &a);
    let by_k2 = sign_envelope(&serde_json::to_vec(&m).unwrap(), &[("k2", &key(2))]);
    let rec = deliver(&mut u, &by_k2, &a, 400).unwrap();
    assert_eq!(rec.phase, Phase::Staged);
    u.activate(&rec.update_id).unwrap();

    // After rotation only k2 is trusted: k1 is unknown; a bundle signed by
    // both (during the overlap) still passes on k2.
    drop(u);
    let mut u = Updater::open(options(d.path(), trusted(&[("k2", 2)]))).unwrap();
    let m2 = manifest(Kind::Model, "centerface", "1.1.0", &a);
    let by_k1 = sign_envelope(&serde_json::to_vec(&m2).unwrap(), &[("k1", &key(1))]);
    assert_eq!(code(u.receive_manifest(&by_k1, WALL).unwrap_err()), "unknown_key");
    let both = sign_envelope(&serde_json::to_vec(&m2).unwrap(), &[("k1", &key(1)), ("k2", &key(2))]);
    assert_eq!(deliver(&mut u, &both, &a, 400).unwrap().phase, Phase::Staged);
}

#[test]
fn trusted_keys_file_parses_hex_and_base64_and_refuses_junk() {
    let k = key(3).verifying_key().to_bytes();
    let text = format!(
        "# fleet keys\nold {}\nnew {}  # rotated in\n",
        hex::encode(k),
        base64_of(&key(4).verifying_key().to_bytes())
    );
    let keys = TrustedKeys::parse(&text).unwrap();
    assert_eq!(keys.ids().collect::<Vec<_>>(), ["old", "new"]);
    assert!(TrustedKeys::parse("").is_err());
    assert!(TrustedKeys::parse("a/b 00").is_err());
    assert!(TrustedKeys::parse(&format!("a {}\na {}", hex::encode(k), hex::encode(k))).is_err());
}

#[test]
fn expiry_is_judged_against_trusted_time_when_the_clock_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let a = artifact("time", 1_000);
    // The clock says 1970 (no RTC battery): only the build floor counts, so
    // a recent bundle from a technician is accepted.
    let mut m = manifest(Kind::Model, "centerface", "1.0.0", &a);
    m.issued_at = TRUSTED_TIME_FLOOR_UNIX + 50_000;
    m.expires_at = m.issued_at + 86_400;
    let rec = u.receive_manifest(&sign(&m), 0).unwrap();
    assert_eq!(rec.phase, Phase::Received);
    assert_eq!(u.trusted_time_high_water(), m.issued_at);

    // A manifest that expired before the newest verified issued_at is
    // refused even though the wall clock (1970) would let it through.
    let mut stale = manifest(Kind::Model, "other", "1.0.0", &a);
    stale.issued_at = TRUSTED_TIME_FLOOR_UNIX + 10;
    stale.expires_at = TRUSTED_TIME_FLOOR_UNIX + 40_000;
    let e = u.receive_manifest(&sign(&stale), 0).unwrap_err();
    let Some(Rejection::Expired { trusted_now, basis, .. }) = e.rejection() else { panic!("{e}") };
    assert_eq!(*trusted_now, m.issued_at);
    assert!(basis.contains("issued_at"), "{basis}");

    // The high-water mark is persisted.
    drop(u);
    let mut u = open(d.path());
    assert_eq!(code(u.receive_manifest(&sign(&stale), 0).unwrap_err()), "expired");
}

#[test]
fn chunks_out_of_order_with_duplicates_and_a_restart_complete_the_artifact() {
    let d = tempfile::tempdir().unwrap();
    let art = artifact("resume", 50_000);
    let envelope = sign(&manifest(Kind::Model, "centerface", "1.0.0", &art));
    let mut u = open(d.path());
    let id = u.receive_manifest(&envelope, WALL).unwrap().update_id;
    let chunks = chunk_artifact(&id, &art, 3_000);
    let n = chunks.len();
    let mut order: Vec<usize> = (0..n).rev().collect();
    fastrand::seed(7);
    fastrand::shuffle(&mut order);
    let (first, rest) = order.split_at(n / 2);
    for &i in first.iter().chain(first.iter().take(3)) {
        assert_eq!(u.receive_chunk(&chunks[i]).unwrap().phase, Phase::Received);
    }
    // "Restart": the updater is dropped and opened again; the manifest may
    // arrive again (QoS 1 redelivery) and changes nothing.
    drop(u);
    let mut u = open(d.path());
    assert_eq!(u.receive_manifest(&envelope, WALL).unwrap().phase, Phase::Received);
    let report = u.report(&u.record(&id).unwrap().unwrap());
    assert_eq!(report.chunks, Some((first.len() as u32, n as u32)));
    let mut last = None;
    for &i in rest.iter().chain(first.iter()) {
        last = Some(u.receive_chunk(&chunks[i]).unwrap());
    }
    assert_eq!(last.unwrap().phase, Phase::Staged);
    // A late duplicate after staging is harmless.
    assert_eq!(u.receive_chunk(&chunks[0]).unwrap().phase, Phase::Staged);
    u.activate(&id).unwrap();
    assert_eq!(std::fs::read(u.current_model_manifest("centerface").unwrap()).unwrap(), art);
    assert!(!d.path().join("updates").join(&id).join("chunks").exists());
}

#[test]
fn binary_update_is_staged_in_the_inactive_slot_with_a_pending_marker() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let bin = artifact("elf", 20_000);
    let mut m = manifest(Kind::Binary, "sparkd", "0.2.0", &bin);
    m.artifact.file_name = "sparkd".into();
    let rec = deliver(&mut u, &sign(&m), &bin, 8_000).unwrap();
    assert_eq!(rec.phase, Phase::Staged);
    let staged = d.path().join("bin/slot-a/sparkd");
    assert_eq!(std::fs::read(&staged).unwrap(), bin);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&staged).unwrap().permissions().mode() & 0o777, 0o755);
    let rec = u.activate(&rec.update_id).unwrap();
    assert_eq!(rec.phase, Phase::Activating);
    let pending: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("bin/pending.json")).unwrap()).unwrap();
    assert_eq!(pending["slot"], "slot-a");
    assert_eq!(pending["version"], "0.2.0");
    // The next binary goes to the other slot once slot-a runs.
    std::os::unix::fs::symlink("slot-a", d.path().join("bin/active")).unwrap();
    let bin2 = artifact("elf2", 20_000);
    let mut m2 = manifest(Kind::Binary, "sparkd", "0.3.0", &bin2);
    m2.artifact.file_name = "sparkd".into();
    assert_eq!(deliver(&mut u, &sign(&m2), &bin2, 8_000).unwrap().slot, Some(spark_edge::update::BinarySlot::SlotB));
    assert_eq!(std::fs::read(d.path().join("bin/slot-b/sparkd")).unwrap(), bin2);
}

#[test]
fn state_reports_serialize_with_a_state_tag() {
    let d = tempfile::tempdir().unwrap();
    let mut u = open(d.path());
    let a = artifact("r", 100);
    let rec = u.receive_manifest(&sign(&manifest(Kind::Model, "centerface", "1.0.0", &a)), WALL).unwrap();
    let j = serde_json::to_value(u.report(&rec)).unwrap();
    assert_eq!(
        (j["state"].as_str(), j["device_id"].as_str(), j["kind"].as_str()),
        (Some("received"), Some(DEVICE), Some("model"))
    );
    let r = Rejection::Expired { expires_at: 1, trusted_now: 2, basis: "wall clock".into() };
    let j = serde_json::to_value(u.rejection_report("", &r)).unwrap();
    assert_eq!(j["state"], "rejected");
    assert_eq!(j["code"], "expired");
}

// ---- kill -9 at every transition -------------------------------------------

const CHILD_ENV: &str = "SPARK_UPDATE_TEST_CHILD";

/// Runs in a child process (spawned by the tests below): performs one step
/// on the store named by `SPARK_UPDATE_TEST_CHILD` and gets SIGKILLed at the
/// crash point named by `SPARK_UPDATE_TEST_CRASH_AT`.
#[test]
fn crash_child() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else { return };
    let spec = PathBuf::from(spec);
    let dir = spec.parent().unwrap();
    let action = std::fs::read_to_string(&spec).unwrap();
    let mut u = open(dir);
    if action == "rollback" {
        u.rollback(Kind::Model, "centerface", "child rollback").unwrap();
    } else {
        let envelope = std::fs::read(dir.join("new.envelope")).unwrap();
        let art = std::fs::read(dir.join("new.artifact")).unwrap();
        let rec = deliver(&mut u, &envelope, &art, 4096).unwrap();
        u.activate(&rec.update_id).unwrap();
    }
    panic!("the crash point {:?} was never reached", std::env::var(CRASH_ENV));
}

/// Spawns `crash_child` with `point` and SIGKILLs it there.
fn run_child_until(dir: &Path, action: &str, point: &str) {
    let spec = dir.join("child-action");
    std::fs::write(&spec, action).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &spec)
        .env(CRASH_ENV, point)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("SPARK_UPDATE_CRASH_POINT") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let line = line.unwrap_or_else(|_| panic!("child never reached crash point {point}"));
    assert!(line.ends_with(point), "{line}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{point}");
}

fn assert_consistent(dir: &Path, a_old: &[u8], a_new: &[u8]) -> bool {
    let u = open(dir);
    let target = current_target(dir).expect("current always points somewhere");
    let content = std::fs::read(u.current_model_manifest("centerface").unwrap()).unwrap();
    let active = u.installed()["model/centerface"].active.unwrap();
    let is_new = if target.starts_with("1.1.0-") {
        assert_eq!(content, a_new);
        assert_eq!(active, v("1.1.0"));
        true
    } else {
        assert!(target.starts_with("1.0.0-"), "{target}");
        assert_eq!(content, a_old);
        assert_eq!(active, v("1.0.0"));
        false
    };
    // Exactly one record is Active and it is the current one.
    let active_records: Vec<_> = u.records().unwrap().into_iter().filter(|r| r.phase == Phase::Active).collect();
    assert_eq!(active_records.len(), 1, "{active_records:?}");
    assert_eq!(active_records[0].version, active);
    is_new
}

#[test]
fn sigkill_at_every_transition_leaves_old_or_new_active_and_the_update_completes() {
    let points =
        ["received", "chunk", "verified", "staged", "activating", "previous-linked", "swapped", "installed", "active"];
    let (a_old, a_new) = (artifact("old", 9_000), artifact("new", 11_000));
    for point in points {
        let d = tempfile::tempdir().unwrap();
        {
            let mut u = open(d.path());
            install(&mut u, "1.0.0", &a_old);
        }
        let envelope = sign(&manifest(Kind::Model, "centerface", "1.1.0", &a_new));
        std::fs::write(d.path().join("new.envelope"), &envelope).unwrap();
        std::fs::write(d.path().join("new.artifact"), &a_new).unwrap();
        run_child_until(d.path(), "update", point);

        let is_new = assert_consistent(d.path(), &a_old, &a_new);
        // Only a crash at or after the swap may have the new version active.
        let after_swap = ["swapped", "installed", "active"].contains(&point);
        assert!(
            is_new == after_swap || point == "activating" || point == "previous-linked",
            "{point}: is_new={is_new}"
        );

        // Delivering again (what a re-push does) and activating finishes it.
        let mut u = open(d.path());
        let id = spark_edge::update::envelope_update_id(&envelope).unwrap();
        let mut rec = u.record(&id).unwrap().expect("the update is known after the crash");
        if rec.phase.in_progress() {
            rec = u.receive_manifest(&envelope, WALL).unwrap_or_else(|e| panic!("{point}: {e}"));
        }
        if rec.phase == Phase::Received {
            for c in chunk_artifact(&rec.update_id, &a_new, 4096) {
                rec = u.receive_chunk(&c).unwrap();
            }
        }
        if rec.phase == Phase::Staged {
            rec = u.activate(&rec.update_id).unwrap();
        }
        assert_eq!(rec.phase, Phase::Active, "{point}");
        drop(u);
        assert!(assert_consistent(d.path(), &a_old, &a_new), "{point}");
    }
}

#[test]
fn sigkill_during_rollback_leaves_a_consistent_store() {
    let (a_old, a_new) = (artifact("old", 3_000), artifact("new", 3_000));
    let d = tempfile::tempdir().unwrap();
    {
        let mut u = open(d.path());
        install(&mut u, "1.0.0", &a_old);
        install(&mut u, "1.1.0", &a_new);
    }
    run_child_until(d.path(), "rollback", "rolled-back");
    assert!(!assert_consistent(d.path(), &a_old, &a_new), "rollback took effect");
    let u = open(d.path());
    let rolled: Vec<_> =
        u.records().unwrap().into_iter().filter(|r| matches!(r.phase, Phase::RolledBack { .. })).collect();
    assert_eq!(rolled.len(), 1);
    assert_eq!(rolled[0].version, v("1.1.0"));
}
