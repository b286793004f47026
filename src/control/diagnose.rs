//! Remote diagnostics over MQTT: the signed request, its verification, the
//! replay guard and the chunked answer (docs/diagnostics.md).
//!
//! Owns the wire format both sides share (`spark-fleet diagnose` signs and
//! reassembles, the daemon's diagnose agent verifies and answers) and the
//! pure decision whether a request may be answered. No IO, no clock: the
//! caller passes the trusted time. Signatures are the update envelope's
//! ([`crate::update::open_signed`]), under the same trusted keys; the
//! `purpose` field keeps a diagnose request from ever parsing as an update
//! manifest (both refuse unknown fields) and the other way round.
//!
//! Checks, in order: size (before any parsing), envelope and signature,
//! payload fields, target device, lifetime, expiry, then (stateful, in
//! [`ReplayGuard`]) the nonce.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::update::{SignedError, TrustedKeys, TrustedNow, open_signed};

/// Largest request accepted; a real one is under 1 KiB. Larger ones are
/// refused unread.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// `logs N`: at most this many journal lines.
pub const MAX_LOG_LINES: u32 = 1000;
/// Longest a request may be valid (`expires_at - issued_at`): bounds how
/// long its nonce must be remembered, and how long a captured request could
/// be answered again after a restart (the nonces are not persisted).
pub const MAX_LIFETIME_SECS: u64 = 900;
/// Nonces remembered at once; when full, new requests are refused
/// (`replay_memory_full`) rather than forgetting one that is still valid.
pub const MAX_REMEMBERED: usize = 1024;
/// Bytes of the answer's JSON text one reply message carries.
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Largest answer (JSON text, all chunks); a larger one is replaced by a
/// `too_large` error.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The `purpose` every diagnose request carries.
pub const PURPOSE: &str = "spark-diagnose/1";

/// The topics (under `<prefix>/<device>/diag/`).
pub mod topics {
    /// Where requests arrive (the device subscribes to this only).
    pub fn request(prefix: &str, device: &str) -> String {
        format!("{prefix}/{device}/diag/request")
    }
    /// Where the answer to request `nonce` goes.
    pub fn reply(prefix: &str, device: &str, nonce: &str) -> String {
        format!("{prefix}/{device}/diag/reply/{nonce}")
    }
}

/// What the operator asks for; each is what `sparkctl <cmd> --json` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    Doctor,
    Status,
    Queue,
    /// The last `lines` lines of the daemon's journal.
    Logs {
        lines: u32,
    },
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Doctor => "doctor",
            Command::Status => "status",
            Command::Queue => "queue",
            Command::Logs { .. } => "logs",
        }
    }
}

/// The signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagRequest {
    /// Always [`PURPOSE`].
    pub purpose: String,
    pub device_id: String,
    /// 32 lower-case hex digits of randomness; also names the reply topic.
    pub nonce: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds, judged against trusted time.
    pub expires_at: u64,
    pub command: Command,
}

/// Why a request is not answered. Every variant is a decision; nothing on
/// the device changes because of a request, answered or not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("request of {len} bytes is larger than {MAX_REQUEST_BYTES}")]
    Oversized { len: usize },
    #[error("not signed: {detail}")]
    Unsigned { detail: String },
    #[error("malformed request: {detail}")]
    Malformed { detail: String },
    #[error("no signature by a trusted key (key ids: {key_ids:?})")]
    UnknownKey { key_ids: Vec<String> },
    #[error("the signature by trusted key {key_id} does not verify")]
    BadSignature { key_id: String },
    #[error("for device {target}, this is {device_id}")]
    OtherDevice { target: String, device_id: String },
    #[error("valid for {lifetime_s} s, longer than {MAX_LIFETIME_SECS} s")]
    LifetimeTooLong { lifetime_s: u64 },
    #[error("expired: expires_at {expires_at} is before the trusted time {trusted_now}")]
    Expired { expires_at: u64, trusted_now: u64 },
    #[error("nonce {nonce} was already used")]
    Replayed { nonce: String },
    #[error("{MAX_REMEMBERED} unexpired requests are remembered already; try again later")]
    ReplayMemoryFull,
    #[error("logs asks for {lines} lines; 1 to {MAX_LOG_LINES}")]
    BadLines { lines: u32 },
}

impl Refusal {
    /// Stable machine-readable name: the counter's label and the reply's code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Oversized { .. } => "oversized",
            Refusal::Unsigned { .. } => "unsigned",
            Refusal::Malformed { .. } => "malformed",
            Refusal::UnknownKey { .. } => "unknown_key",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::OtherDevice { .. } => "other_device",
            Refusal::LifetimeTooLong { .. } => "lifetime_too_long",
            Refusal::Expired { .. } => "expired",
            Refusal::Replayed { .. } => "replayed",
            Refusal::ReplayMemoryFull => "replay_memory_full",
            Refusal::BadLines { .. } => "bad_lines",
        }
    }
}

/// A nonce as [`DiagRequest::nonce`] must be: 32 lower-case hex digits.
pub fn is_nonce(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decides whether `bytes` is a request this device may answer. Pure; the
/// replay check is [`ReplayGuard::admit`], after this.
pub fn verify(bytes: &[u8], keys: &TrustedKeys, device_id: &str, now: TrustedNow) -> Result<DiagRequest, Refusal> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::Oversized { len: bytes.len() });
    }
    let signed = match open_signed(bytes, keys) {
        Ok((signed, _key_id)) => signed,
        Err(SignedError::NoSignatures) => {
            return Err(Refusal::Unsigned { detail: "the envelope has no signature".into() });
        }
        // A bare request, not in an envelope at all.
        Err(SignedError::Malformed { .. }) if serde_json::from_slice::<DiagRequest>(bytes).is_ok() => {
            return Err(Refusal::Unsigned { detail: "a bare request, not in a signed envelope".into() });
        }
        Err(SignedError::Malformed { detail }) => return Err(Refusal::Malformed { detail }),
        Err(SignedError::UnknownKey { key_ids }) => return Err(Refusal::UnknownKey { key_ids }),
        Err(SignedError::BadSignature { key_id }) => return Err(Refusal::BadSignature { key_id }),
    };
    let r: DiagRequest = serde_json::from_slice(&signed).map_err(|e| Refusal::Malformed { detail: e.to_string() })?;
    let malformed = |detail: &str| Refusal::Malformed { detail: detail.into() };
    if r.purpose != PURPOSE {
        return Err(malformed("purpose is not spark-diagnose/1"));
    }
    if !is_nonce(&r.nonce) {
        return Err(malformed("nonce is not 32 lower-case hex digits"));
    }
    if r.device_id != device_id {
        return Err(Refusal::OtherDevice { target: r.device_id, device_id: device_id.into() });
    }
    if r.expires_at < r.issued_at {
        return Err(malformed("expires_at is before issued_at"));
    }
    if r.expires_at - r.issued_at > MAX_LIFETIME_SECS {
        return Err(Refusal::LifetimeTooLong { lifetime_s: r.expires_at - r.issued_at });
    }
    if r.expires_at < now.secs {
        return Err(Refusal::Expired { expires_at: r.expires_at, trusted_now: now.secs });
    }
    if let Command::Logs { lines } = r.command
        && !(1..=MAX_LOG_LINES).contains(&lines)
    {
        return Err(Refusal::BadLines { lines });
    }
    Ok(r)
}

/// The nonce of a request that was refused, when it names one that can be
/// a topic level: the refusal is answered there. Reads the signed bytes
/// without trusting them (an error code is all the answer carries).
pub fn reply_nonce(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return None;
    }
    #[derive(Deserialize)]
    struct Env {
        manifest: String,
    }
    #[derive(Deserialize)]
    struct Named {
        nonce: String,
    }
    let named: Named = match serde_json::from_slice::<Env>(bytes) {
        Ok(env) => serde_json::from_slice(&B64.decode(env.manifest).ok()?).ok()?,
        Err(_) => serde_json::from_slice(bytes).ok()?,
    };
    is_nonce(&named.nonce).then_some(named.nonce)
}

/// The nonces of answered requests, each kept until its request expires.
/// Bounded by [`MAX_REMEMBERED`]; in memory only (see docs/diagnostics.md:
/// persisting them would make every request write to the device).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<String, u64>,
}

impl ReplayGuard {
    /// Remembers `r`'s nonce, or refuses it as a replay (or when full).
    pub fn admit(&mut self, r: &DiagRequest, now: TrustedNow) -> Result<(), Refusal> {
        self.seen.retain(|_, expires_at| *expires_at >= now.secs);
        if self.seen.contains_key(&r.nonce) {
            return Err(Refusal::Replayed { nonce: r.nonce.clone() });
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(Refusal::ReplayMemoryFull);
        }
        self.seen.insert(r.nonce.clone(), r.expires_at);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The answer before chunking: the JSON `sparkctl <cmd> --json` prints, or
/// an error with a code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Result(serde_json::Value),
    Error(AnswerError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerError {
    /// A [`Refusal::code`], or `no_journal`, `journal_failed`, `failed`, `too_large`.
    pub code: String,
    pub message: String,
}

/// One reply message: piece `index` of `count` of the answer's JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyChunk {
    pub nonce: String,
    pub device_id: String,
    pub index: u32,
    pub count: u32,
    pub data: String,
}

/// Splits `answer` into reply messages of at most [`CHUNK_BYTES`] of text
/// each (on character boundaries). An answer above [`MAX_ANSWER_BYTES`]
/// becomes a `too_large` error.
pub fn chunk_answer(nonce: &str, device_id: &str, answer: &Answer) -> Vec<ReplyChunk> {
    let too_large = |len: usize| {
        Answer::Error(AnswerError {
            code: "too_large".into(),
            message: format!("the answer is {len} bytes, more than {MAX_ANSWER_BYTES}"),
        })
    };
    let mut text = serde_json::to_string(answer).unwrap_or_default();
    if text.len() > MAX_ANSWER_BYTES {
        text = serde_json::to_string(&too_large(text.len())).unwrap_or_default();
    }
    let mut pieces = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() || pieces.is_empty() {
        let mut end = rest.len().min(CHUNK_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    let count = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| ReplyChunk {
            nonce: nonce.into(),
            device_id: device_id.into(),
            index: i as u32,
            count,
            data: p.into(),
        })
        .collect()
}

/// Why reply messages do not make an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassembleError {
    #[error("reply message is not a diagnose reply chunk: {detail}")]
    NotAChunk { detail: String },
    #[error("reply chunk {index} of {count} is out of range")]
    BadIndex { index: u32, count: u32 },
    #[error("reply chunks disagree on their count ({first} and {other})")]
    CountChanged { first: u32, other: u32 },
    #[error("the answer would exceed {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("the reassembled answer does not parse: {detail}")]
    BadAnswer { detail: String },
}

/// Collects reply chunks of one request (duplicates are ignored: QoS 1
/// may deliver one twice).
#[derive(Debug, Default)]
pub struct Reassembly {
    count: Option<u32>,
    pieces: std::collections::BTreeMap<u32, String>,
    bytes: usize,
}

impl Reassembly {
    /// Adds one reply message; `Ok(Some)` once the answer is whole.
    pub fn add(&mut self, payload: &[u8]) -> Result<Option<Answer>, ReassembleError> {
        if payload.len() > CHUNK_BYTES * 8 + 4096 {
            return Err(ReassembleError::TooLarge);
        }
        let c: ReplyChunk =
            serde_json::from_slice(payload).map_err(|e| ReassembleError::NotAChunk { detail: e.to_string() })?;
        let max_count = MAX_ANSWER_BYTES.div_ceil(CHUNK_BYTES) as u32 + 1;
        if c.count == 0 || c.count > max_count || c.index >= c.count {
            return Err(ReassembleError::BadIndex { index: c.index, count: c.count });
        }
        match self.count {
            Some(n) if n != c.count => return Err(ReassembleError::CountChanged { first: n, other: c.count }),
            _ => self.count = Some(c.count),
        }
        if !self.pieces.contains_key(&c.index) {
            self.bytes += c.data.len();
            if self.bytes > MAX_ANSWER_BYTES {
                return Err(ReassembleError::TooLarge);
            }
            self.pieces.insert(c.index, c.data);
        }
        if self.pieces.len() as u32 != c.count {
            return Ok(None);
        }
        let text: String = self.pieces.values().map(String::as_str).collect();
        serde_json::from_str(&text).map(Some).map_err(|e| ReassembleError::BadAnswer { detail: e.to_string() })
    }
}

/// Signs `request` with `signers` (the fleet key) into the envelope the
/// device takes.
pub fn sign_request(request: &DiagRequest, signers: &[(&str, &ed25519_dalek::SigningKey)]) -> Vec<u8> {
    let payload = serde_json::to_vec(request).unwrap_or_default();
    crate::update::sign_envelope(&payload, signers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{TRUSTED_TIME_FLOOR_UNIX, TimeBasis, TrustedKey};

    const NOW: u64 = TRUSTED_TIME_FLOOR_UNIX + 1000;
    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> TrustedNow {
        TrustedNow { secs: NOW, basis: TimeBasis::WallClock }
    }

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn keys() -> TrustedKeys {
        TrustedKeys::new(vec![TrustedKey { key_id: "fleet".into(), key: key(1).verifying_key() }])
    }

    fn request(command: Command) -> DiagRequest {
        DiagRequest {
            purpose: PURPOSE.into(),
            device_id: "dev-1".into(),
            nonce: NONCE.into(),
            issued_at: NOW - 10,
            expires_at: NOW + 60,
            command,
        }
    }

    fn signed(r: &DiagRequest) -> Vec<u8> {
        sign_request(r, &[("fleet", &key(1))])
    }

    fn code(bytes: &[u8]) -> &'static str {
        verify(bytes, &keys(), "dev-1", now()).unwrap_err().code()
    }

    #[test]
    fn a_signed_request_for_this_device_verifies() {
        for c in [Command::Doctor, Command::Status, Command::Queue, Command::Logs { lines: 50 }] {
            assert_eq!(verify(&signed(&request(c)), &keys(), "dev-1", now()).unwrap(), request(c));
        }
    }

    #[test]
    fn unsigned_forged_and_foreign_requests_are_refused_by_reason() {
        let r = request(Command::Status);
        let bare = serde_json::to_vec(&r).unwrap();
        assert_eq!(code(&bare), "unsigned");
        let mut env: serde_json::Value = serde_json::from_slice(&signed(&r)).unwrap();
        env["signatures"] = serde_json::json!([]);
        assert_eq!(code(&serde_json::to_vec(&env).unwrap()), "unsigned");
        assert_eq!(code(&sign_request(&r, &[("fleet", &key(2))])), "bad_signature");
        assert_eq!(code(&sign_request(&r, &[("other", &key(1))])), "unknown_key");
        // The signed bytes changed after signing.
        let mut tampered = request(Command::Logs { lines: 5 });
        let sig = serde_json::from_slice::<serde_json::Value>(&signed(&tampered)).unwrap()["signatures"].clone();
        tampered.command = Command::Logs { lines: 6 };
        let forged =
            serde_json::json!({"manifest": B64.encode(serde_json::to_vec(&tampered).unwrap()), "signatures": sig});
        assert_eq!(code(&serde_json::to_vec(&forged).unwrap()), "bad_signature");
        assert_eq!(code(b"not json"), "malformed");
        assert_eq!(code(&vec![b' '; MAX_REQUEST_BYTES + 1]), "oversized");
    }

    #[test]
    fn target_lifetime_expiry_and_bounds_are_checked() {
        let mut r = request(Command::Status);
        r.device_id = "dev-2".into();
        assert_eq!(code(&signed(&r)), "other_device");
        let mut r = request(Command::Status);
        r.expires_at = r.issued_at + MAX_LIFETIME_SECS + 1;
        assert_eq!(code(&signed(&r)), "lifetime_too_long");
        let mut r = request(Command::Status);
        r.issued_at = NOW - 100;
        r.expires_at = NOW - 1;
        assert_eq!(code(&signed(&r)), "expired");
        assert_eq!(code(&signed(&request(Command::Logs { lines: MAX_LOG_LINES + 1 }))), "bad_lines");
        assert_eq!(code(&signed(&request(Command::Logs { lines: 0 }))), "bad_lines");
        let mut r = request(Command::Status);
        r.nonce = "../../x".into();
        assert_eq!(code(&signed(&r)), "malformed");
        let mut r = request(Command::Status);
        r.purpose = "update".into();
        assert_eq!(code(&signed(&r)), "malformed");
    }

    #[test]
    fn an_update_manifest_envelope_is_not_a_diagnose_request_and_back() {
        let manifest = br#"{"kind":"model","name":"m","version":"1.0.0","targets":{"devices":["dev-1"]},"artifact":{"file_name":"a","length":1,"sha256":"00"},"issued_at":1,"expires_at":2}"#;
        let env = crate::update::sign_envelope(manifest, &[("fleet", &key(1))]);
        assert_eq!(code(&env), "malformed");
        let diag = signed(&request(Command::Status));
        assert!(crate::update::open_envelope(&diag, &keys()).is_err());
    }

    #[test]
    fn nonces_are_refused_a_second_time_until_they_expire_and_memory_is_bounded() {
        let mut g = ReplayGuard::default();
        let r = request(Command::Status);
        g.admit(&r, now()).unwrap();
        assert_eq!(g.admit(&r, now()).unwrap_err().code(), "replayed");
        // Once expired it is forgotten (verify refuses it as expired anyway).
        let later = TrustedNow { secs: r.expires_at + 1, basis: TimeBasis::WallClock };
        assert!(g.admit(&request(Command::Queue), later).is_ok());
        assert_eq!(g.len(), 1);
        let mut g = ReplayGuard::default();
        for i in 0..MAX_REMEMBERED {
            let mut r = request(Command::Status);
            r.nonce = format!("{i:032x}");
            g.admit(&r, now()).unwrap();
        }
        let mut r = request(Command::Status);
        r.nonce = "f".repeat(32);
        assert_eq!(g.admit(&r, now()).unwrap_err().code(), "replay_memory_full");
    }

    #[test]
    fn refused_requests_name_their_reply_nonce_only_when_it_is_safe() {
        let r = request(Command::Status);
        assert_eq!(reply_nonce(&sign_request(&r, &[("fleet", &key(2))])).as_deref(), Some(NONCE));
        assert_eq!(reply_nonce(&serde_json::to_vec(&r).unwrap()).as_deref(), Some(NONCE));
        let mut bad = r.clone();
        bad.nonce = "a/b/#".into();
        assert_eq!(reply_nonce(&signed(&bad)), None);
        assert_eq!(reply_nonce(b"garbage"), None);
    }

    #[test]
    fn answers_chunk_and_reassemble_in_any_order_with_duplicates() {
        let lines: Vec<String> = (0..5000).map(|i| format!("line {i} é")).collect();
        let answer = Answer::Result(serde_json::json!({ "lines": lines }));
        let chunks = chunk_answer(NONCE, "dev-1", &answer);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.data.len() <= CHUNK_BYTES));
        let mut re = Reassembly::default();
        let mut got = None;
        for c in chunks.iter().rev().chain(chunks.iter().take(1)) {
            if let Some(a) = re.add(&serde_json::to_vec(c).unwrap()).unwrap() {
                got = Some(a);
            }
        }
        assert_eq!(got, Some(answer));
        let big = Answer::Result(serde_json::Value::String("x".repeat(MAX_ANSWER_BYTES)));
        let chunks = chunk_answer(NONCE, "dev-1", &big);
        assert_eq!(chunks.len(), 1);
        let a = Reassembly::default().add(&serde_json::to_vec(&chunks[0]).unwrap()).unwrap().unwrap();
        assert!(matches!(a, Answer::Error(e) if e.code == "too_large"));
        assert!(Reassembly::default().add(br#"{"nonce":"x","device_id":"d","index":3,"count":2,"data":""}"#).is_err());
    }
}
