//! Wire records: the streams a device publishes and the JSON every record is.
//!
//! Owns the record envelope (`device_id`, `stream`, `seq`, `ts`) that cloud
//! consumers rely on; knows nothing about storage or MQTT sessions.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The record streams. The discriminant is the stream's byte in outbox keys:
/// never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Telemetry = 0,
    Inference = 1,
    Events = 2,
    /// Evidence JPEGs of events, in chunks (docs/snapshots.md): the lowest
    /// retention priority, with a byte budget of its own.
    Snapshots = 3,
}

impl Stream {
    /// How many streams there are: the length of per-stream arrays.
    pub const COUNT: usize = 4;
    pub const ALL: [Stream; Self::COUNT] = [Stream::Telemetry, Stream::Inference, Stream::Events, Stream::Snapshots];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::Inference => "inference",
            Stream::Events => "events",
            Stream::Snapshots => "snapshots",
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == b)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a `snapshots` record (one chunk of an evidence JPEG,
/// docs/snapshots.md) sits in its snapshot; the other fields are skipped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ChunkPlace {
    pub snapshot_id: String,
    pub index: u32,
    pub count: u32,
}

impl ChunkPlace {
    /// The place of a stored chunk record's wire JSON; `None` if it is not one.
    pub fn of(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Builds the wire JSON of one record: the envelope fields first, then the
/// fields of `body`, which must be a serialized JSON object.
///
/// Splicing instead of re-serializing keeps the outbox writer (which assigns
/// `seq`) free of per-record serde work.
pub fn encode(device_id: &str, stream: Stream, seq: u64, ts_ms: u64, body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, &device_json(device_id), stream, seq, ts_ms, body);
    out
}

/// `device_id` as a JSON string literal (computed once per outbox).
pub fn device_json(device_id: &str) -> String {
    serde_json::to_string(device_id).unwrap_or_else(|_| "\"\"".into())
}

/// [`encode`] appending to `out`, with the device id already JSON-quoted.
pub fn encode_into(out: &mut Vec<u8>, device_json: &str, stream: Stream, seq: u64, ts_ms: u64, body: &str) {
    let inner = body.trim();
    let inner = inner.strip_prefix('{').and_then(|b| b.strip_suffix('}')).unwrap_or("").trim();
    out.reserve(64 + device_json.len() + inner.len());
    out.extend_from_slice(b"{\"device_id\":");
    out.extend_from_slice(device_json.as_bytes());
    // itoa, not `write!`: this runs once per stored record on the writer thread.
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b",\"stream\":\"");
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(digits.format(seq).as_bytes());
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(digits.format(ts_ms).as_bytes());
    if !inner.is_empty() {
        out.push(b',');
        out.extend_from_slice(inner.as_bytes());
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_record_is_json_with_envelope_and_body() {
        let bytes = encode("dev\"1", Stream::Inference, 42, 1700, r#"{"label":"face","score":0.9}"#);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["device_id"], "dev\"1");
        assert_eq!(v["stream"], "inference");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["ts"], 1700);
        assert_eq!(v["label"], "face");
    }

    #[test]
    fn empty_body_still_gives_an_envelope() {
        let v: serde_json::Value = serde_json::from_slice(&encode("d", Stream::Events, 1, 2, "{}")).unwrap();
        assert_eq!(v["seq"], 1);
    }

    #[test]
    fn stream_bytes_round_trip() {
        for s in Stream::ALL {
            assert_eq!(Stream::from_byte(s as u8), Some(s));
            assert_eq!(Stream::parse(s.as_str()), Some(s));
        }
        assert_eq!(Stream::from_byte(9), None);
    }
}
