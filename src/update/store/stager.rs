//! The chunk stager: a signed manifest opens an update (`Received`), chunks
//! are held one file each until the set is whole, then reassembled and
//! checked against the manifest's length and SHA-256 (`Verified`).

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{ClockFile, Phase, UpdateRecord, Updater, is_update_id, write_json};
use crate::update::clock::trusted_now;
use crate::update::fsio::{crash_point, free_bytes, fsync_dir, remove_any, write_atomic, write_whole};
use crate::update::manifest::{VerifyContext, verify};
use crate::update::wire::{CHUNK_MAX_BYTES, Chunk};
use crate::update::{Rejection, UpdateError};

impl Updater {
    /// Verifies a signed envelope and, if accepted, records the update as
    /// `Received`. A refusal writes nothing. A manifest whose update is under
    /// way (a redelivery) returns its record unchanged; one that finished is
    /// verified again (so a replay of an applied version is refused, and an
    /// update rejected for a corrupt transfer can be sent again).
    pub fn receive_manifest(&mut self, envelope: &[u8], wall_clock: u64) -> Result<UpdateRecord, UpdateError> {
        if let Some(id) = crate::update::wire::envelope_update_id(envelope)
            && let Some(rec) = self.record(&id)?
            && rec.phase.in_progress()
        {
            return Ok(rec);
        }
        let now = trusted_now(self.high_water, wall_clock);
        let cx = VerifyContext {
            keys: &self.opts.keys,
            device_id: &self.opts.device_id,
            group: &self.opts.group,
            now,
            running_version: self.opts.running_version,
            max_artifact_bytes: self.opts.max_artifact_bytes,
            installed: &self.installed,
            hailort: self.hailort.as_deref(),
        };
        let v = verify(envelope, &cx).inspect_err(|r| {
            tracing::info!(target: "audit", code = r.code(), reason = %r, "update manifest rejected");
        })?;
        let m = &v.manifest;

        // Chunks plus the reassembled artifact, plus the reserve.
        let needed = m.artifact.length.saturating_mul(2).saturating_add(self.opts.reserve_bytes);
        let root = &self.opts.state_dir;
        let available = free_bytes(root).map_err(UpdateError::io("checking free space of", root))?;
        if available < needed {
            let r = Rejection::InsufficientSpace { needed, available };
            tracing::info!(target: "audit", update_id = %v.update_id, code = r.code(), reason = %r, "update manifest rejected");
            return Err(r.into());
        }

        if m.issued_at > self.high_water {
            write_json(&self.updates_dir().join("clock.json"), &ClockFile { high_water: m.issued_at })?;
            self.high_water = m.issued_at;
        }
        let dir = self.update_dir(&v.update_id);
        crate::sys::durable::create_dir_all_synced(&dir.join("chunks")).map_err(UpdateError::io("creating", &dir))?;
        write_atomic(&dir.join("envelope.json"), &v.envelope_bytes).map_err(UpdateError::io("writing", &dir))?;
        let mut rec = UpdateRecord {
            update_id: v.update_id.clone(),
            kind: m.kind,
            name: m.name.clone(),
            version: m.version,
            file_name: m.artifact.file_name.clone(),
            length: m.artifact.length,
            sha256: m.artifact.sha256.to_ascii_lowercase(),
            phase: Phase::Received,
            total_chunks: None,
            slot: None,
            updated_ms: 0,
        };
        self.save(&mut rec)?;
        tracing::info!(target: "audit", update_id = %rec.update_id, kind = %rec.kind, name = %rec.name,
            version = %rec.version, key_id = %v.key_id, "update manifest verified; receiving");
        crash_point("received");
        Ok(rec)
    }

    pub(super) fn chunk_path(&self, id: &str, index: u32) -> PathBuf {
        self.update_dir(id).join("chunks").join(format!("{index:08}"))
    }

    pub(super) fn chunk_count(&self, id: &str) -> u32 {
        fs::read_dir(self.update_dir(id).join("chunks"))
            .map(|d| {
                d.filter_map(Result::ok).filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() as u32
            })
            .unwrap_or(0)
    }

    pub(super) fn chunk_bytes_held(&self, id: &str) -> u64 {
        fs::read_dir(self.update_dir(id).join("chunks"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Stores one chunk (idempotent: a chunk already held is skipped). When
    /// the last one arrives the artifact is reassembled, verified and staged.
    /// A refused chunk is not stored and the transfer goes on.
    pub fn receive_chunk(&mut self, chunk: &Chunk) -> Result<UpdateRecord, UpdateError> {
        let corrupt = |detail: String| -> UpdateError {
            Rejection::CorruptChunk { update_id: chunk.update_id.clone(), index: chunk.index, detail }.into()
        };
        if !is_update_id(&chunk.update_id) {
            return Err(corrupt("update_id is not 32 lower-case hex digits".into()));
        }
        let Some(mut rec) = self.record(&chunk.update_id)? else {
            return Err(UpdateError::UnknownUpdate { update_id: chunk.update_id.clone() });
        };
        if rec.phase != Phase::Received {
            return Ok(rec); // late duplicate
        }
        let (total, len) = (chunk.total as u64, rec.length);
        if total == 0 || total > len.max(1) || len > total * CHUNK_MAX_BYTES as u64 {
            return Err(corrupt(format!("total {total} does not fit an artifact of {len} bytes")));
        }
        if let Some(t) = rec.total_chunks
            && t != chunk.total
        {
            return Err(corrupt(format!("total {} differs from the transfer's {t}", chunk.total)));
        }
        if chunk.index >= chunk.total {
            return Err(corrupt(format!("index is not below total {}", chunk.total)));
        }
        let bytes = chunk.bytes().map_err(|e| corrupt(format!("data is not base64: {e}")))?;
        if bytes.len() > CHUNK_MAX_BYTES {
            return Err(corrupt(format!("{} bytes, more than {CHUNK_MAX_BYTES}", bytes.len())));
        }
        let actual = crate::inference::model::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&chunk.sha256_of_chunk) {
            return Err(corrupt(format!(
                "truncated or corrupt: SHA-256 {actual}, the chunk says {}",
                chunk.sha256_of_chunk
            )));
        }
        let path = self.chunk_path(&rec.update_id, chunk.index);
        if !path.exists() {
            if self.chunk_bytes_held(&rec.update_id) + bytes.len() as u64 > len {
                return Err(corrupt(format!("more data than the artifact's {len} bytes")));
            }
            // Whole or absent after a cut; a lost one is sent again (no folder sync).
            write_whole(&path, &bytes).map_err(UpdateError::io("writing chunk", &path))?;
        }
        if rec.total_chunks.is_none() {
            rec.total_chunks = Some(chunk.total);
            self.save(&mut rec)?;
        }
        crash_point("chunk");
        if self.chunk_count(&rec.update_id) == chunk.total {
            self.assemble(&mut rec)?;
        }
        Ok(rec)
    }

    pub(super) fn reject(&self, rec: &mut UpdateRecord, r: Rejection) -> Result<UpdateError, UpdateError> {
        let dir = self.update_dir(&rec.update_id);
        for p in [dir.join("chunks"), dir.join("artifact"), dir.join("artifact.partial")] {
            remove_any(&p).map_err(UpdateError::io("removing", &p))?;
        }
        rec.phase = Phase::rejected(&r);
        self.save(rec)?;
        Self::audit(rec);
        Ok(r.into())
    }

    /// Concatenates the chunks, checks length and SHA-256, then stages.
    pub(super) fn assemble(&self, rec: &mut UpdateRecord) -> Result<(), UpdateError> {
        let dir = self.update_dir(&rec.update_id);
        let total = rec.total_chunks.unwrap_or(0);
        let partial = dir.join("artifact.partial");
        let mut hasher = Sha256::new();
        let mut length = 0u64;
        {
            let mut out = fs::File::create(&partial).map_err(UpdateError::io("creating", &partial))?;
            let mut buf = Vec::new();
            for i in 0..total {
                let p = self.chunk_path(&rec.update_id, i);
                buf.clear();
                fs::File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .map_err(UpdateError::io("reading chunk", &p))?;
                hasher.update(&buf);
                length += buf.len() as u64;
                out.write_all(&buf).map_err(UpdateError::io("writing", &partial))?;
            }
            out.sync_all().map_err(UpdateError::io("syncing", &partial))?;
        }
        if length != rec.length {
            return Err(self.reject(rec, Rejection::ArtifactLength { expected: rec.length, actual: length })?);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != rec.sha256 {
            return Err(self.reject(rec, Rejection::ArtifactDigest { expected: rec.sha256.clone(), actual })?);
        }
        let artifact = dir.join("artifact");
        fs::rename(&partial, &artifact).map_err(UpdateError::io("renaming", &partial))?;
        fsync_dir(&dir).map_err(UpdateError::io("syncing", &dir))?;
        rec.phase = Phase::Verified;
        self.save(rec)?;
        Self::audit(rec);
        crash_point("verified");
        remove_any(&dir.join("chunks")).map_err(UpdateError::io("removing chunks of", &dir))?;
        self.place(rec)
    }
}
