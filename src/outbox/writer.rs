//! The outbox's single writer thread: group commit.
//!
//! Producers (inference, telemetry, the uplink's acks) send [`Op`]s over one
//! bounded channel; the writer takes whatever is queued (up to the batch
//! limit), applies it in one durable transaction, then answers each appender.
//! Many appends thus share one fsync, and an append still returns only after
//! the transaction holding it committed.
//!
//! Overflow policy: **block**. A full channel makes producers wait; stored
//! records are never dropped here (retention is the store's job).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use super::{Op, OpResult, Outbox, OutboxError};
use crate::record::{Stream, now_ms};

/// Depth of the writer's request channel.
const CHANNEL_DEPTH: usize = 4096;

/// The writer's answer to one request. It carries the channel's sender back
/// home, so the appender can reuse the channel, while a writer that dies
/// before answering still drops the only sender and disconnects it.
struct Reply {
    result: Result<OpResult, String>,
    sender: Sender<Reply>,
}

struct Request {
    op: Op,
    reply: Option<Sender<Reply>>,
}

impl Request {
    fn answer(reply: Sender<Reply>, result: Result<OpResult, String>) {
        let _ = reply.send(Reply { result, sender: reply.clone() });
    }
}

/// Most reply channels one thread keeps for reuse.
const MAX_SPARE_REPLIES: usize = 8192;

thread_local! {
    /// Reply channels whose answer was taken, ready for this thread's next
    /// append: an append then costs no channel allocation, and the writer's
    /// reply frees nothing across threads (glibc serialises such frees on
    /// the allocating thread's arena).
    static SPARE_REPLIES: std::cell::RefCell<Vec<(Sender<Reply>, Receiver<Reply>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends writes to the writer thread. Cloneable; blocking calls.
#[derive(Clone)]
pub struct Appender {
    tx: Sender<Request>,
}

/// Owner's handle: join on shutdown.
pub struct WriterHandle {
    pub appender: Appender,
    thread: JoinHandle<()>,
}

impl WriterHandle {
    /// Waits for the writer to commit everything queued. The writer stops once
    /// every [`Appender`] clone has been dropped.
    pub fn join(self) {
        drop(self.appender);
        let _ = self.thread.join();
    }
}

/// Starts the writer thread. `on_commit` runs after every commit that
/// appended records (the uplink uses it as a wake-up).
pub fn spawn_writer(
    outbox: Outbox,
    batch_max: usize,
    on_commit: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<WriterHandle> {
    let (tx, rx) = bounded::<Request>(CHANNEL_DEPTH);
    let thread = std::thread::Builder::new()
        .name("outbox-writer".into())
        .spawn(move || run(outbox, rx, batch_max.max(1), on_commit))?;
    Ok(WriterHandle { appender: Appender { tx }, thread })
}

fn run(outbox: Outbox, rx: Receiver<Request>, batch_max: usize, on_commit: Arc<dyn Fn() + Send + Sync>) {
    let mut batch: Vec<Request> = Vec::with_capacity(batch_max);
    let mut ops: Vec<Op> = Vec::with_capacity(batch_max);
    let mut backoff = Duration::from_millis(50);
    let mut last_expire = std::time::Instant::now();
    loop {
        // Wake at least once a second so time-to-live is enforced while idle.
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        if last_expire.elapsed() >= Duration::from_secs(1) {
            last_expire = std::time::Instant::now();
            batch.push(Request { op: Op::Expire { now_ms: now_ms() }, reply: None });
        }
        match first {
            Some(r) => batch.push(r),
            None if batch.is_empty() => continue,
            None => {}
        }
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Move the ops out (no per-record copy); keep the reply channels.
        ops.clear();
        let mut replies: Vec<Option<Sender<Reply>>> = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            ops.push(r.op);
            replies.push(r.reply);
        }
        let appended = ops.iter().any(|o| matches!(o, Op::Append { .. }));
        match outbox.commit(&ops) {
            Ok(results) => {
                backoff = Duration::from_millis(50);
                for (reply, res) in replies.into_iter().zip(results) {
                    if let Some(reply) = reply {
                        Request::answer(reply, Ok(res));
                    }
                }
                if appended {
                    on_commit();
                }
            }
            Err(e) => {
                // Nothing of this batch is stored: say so to every appender
                // (they count the loss) and back off so a failing disk is not
                // hammered. Acks are simply retried by the uplink later.
                let msg = format!("{:#}", anyhow::Error::new(e));
                tracing::error!(error = %msg, ops = ops.len(), "outbox commit failed");
                for reply in replies.into_iter().flatten() {
                    Request::answer(reply, Err(msg.clone()));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("record refused: {0}")]
    Rejected(String),
    #[error("outbox commit failed: {0}")]
    Commit(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// An append queued with [`Appender::submit`].
pub struct PendingAppend {
    answer: Receiver<Reply>,
}

impl PendingAppend {
    /// Blocks until the append's transaction committed (or failed).
    pub fn wait(self) -> Result<u64, AppendError> {
        let Reply { result, sender } = self.answer.recv().map_err(|_| OutboxError::WriterGone)?;
        // Empty again, and `sender` is its only sender: keep it for reuse.
        SPARE_REPLIES.with(|s| {
            let mut spares = s.borrow_mut();
            if spares.len() < MAX_SPARE_REPLIES {
                spares.push((sender, self.answer));
            }
        });
        Self::outcome(result)
    }

    /// The outcome if the commit already happened.
    pub fn try_wait(&self) -> Option<Result<u64, AppendError>> {
        match self.answer.try_recv() {
            Ok(r) => Some(Self::outcome(r.result)),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Err(OutboxError::WriterGone.into())),
        }
    }

    fn outcome(r: Result<OpResult, String>) -> Result<u64, AppendError> {
        match r {
            Ok(OpResult::Appended { seq }) => Ok(seq),
            Ok(OpResult::Rejected(why)) => Err(AppendError::Rejected(why)),
            Ok(other) => Err(AppendError::Commit(format!("unexpected result {other:?}"))),
            Err(msg) => Err(AppendError::Commit(msg)),
        }
    }
}

impl Appender {
    /// Appends one record and waits for its commit; returns its `seq`.
    pub fn append(&self, stream: Stream, body: String) -> Result<u64, AppendError> {
        self.append_at(stream, now_ms(), body)
    }

    pub fn append_at(&self, stream: Stream, ts_ms: u64, body: String) -> Result<u64, AppendError> {
        self.submit(stream, ts_ms, body)?.wait()
    }

    /// Queues an append and returns at once; [`PendingAppend::wait`] gives
    /// its outcome after the commit. Lets one producer keep many appends in
    /// one group commit.
    pub fn submit(&self, stream: Stream, ts_ms: u64, body: String) -> Result<PendingAppend, AppendError> {
        let (reply, answer) = SPARE_REPLIES.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| bounded(1));
        self.tx
            .send(Request { op: Op::Append { stream, ts_ms, body }, reply: Some(reply) })
            .map_err(|_| OutboxError::WriterGone)?;
        Ok(PendingAppend { answer })
    }

    /// Like [`Appender::ack`] but never blocks: `Ok(false)` when the
    /// writer's channel is full right now.
    pub fn try_ack(&self, stream: Stream, first: u64, last: u64) -> Result<bool, OutboxError> {
        match self.tx.try_send(Request { op: Op::Ack { stream, first, last }, reply: None }) {
            Ok(()) => Ok(true),
            Err(crossbeam_channel::TrySendError::Full(_)) => Ok(false),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(OutboxError::WriterGone),
        }
    }

    /// Queues an acknowledgement of `first..=last` of `stream` without
    /// waiting for its commit. Blocks only while the writer's channel is full.
    pub fn ack(&self, stream: Stream, first: u64, last: u64) -> Result<(), OutboxError> {
        self.tx.send(Request { op: Op::Ack { stream, first, last }, reply: None }).map_err(|_| OutboxError::WriterGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxOptions;

    fn open_outbox(dir: &std::path::Path) -> Outbox {
        let opts = OutboxOptions {
            device_id: "d".into(),
            max_bytes: 1 << 26,
            drop_order: Stream::ALL.to_vec(),
            ttl_ms: [0; 3],
        };
        Outbox::open(dir, opts).unwrap()
    }

    #[test]
    fn a_request_dropped_unanswered_reports_the_writer_gone() {
        // Warm this thread's spare channels first: a reused channel must
        // disconnect just like a new one.
        let dir = tempfile::tempdir().unwrap();
        let o = open_outbox(dir.path());
        let w = spawn_writer(o, 8, Arc::new(|| {})).unwrap();
        assert_eq!(w.appender.append(Stream::Events, "{}".into()).unwrap(), 1);
        assert_eq!(w.appender.append(Stream::Events, "{}".into()).unwrap(), 2);
        w.join();
        // A "writer" that takes the request and dies without answering.
        let (tx, rx) = bounded::<Request>(4);
        let pending = Appender { tx }.submit(Stream::Events, 1, "{}".into()).unwrap();
        drop(rx.recv().unwrap());
        assert!(matches!(pending.wait(), Err(AppendError::Outbox(OutboxError::WriterGone))));
    }

    #[test]
    fn concurrent_appends_get_unique_increasing_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let o = open_outbox(dir.path());
        let w = spawn_writer(o.clone(), 64, Arc::new(|| {})).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let a = w.appender.clone();
                std::thread::spawn(move || {
                    (0..50).map(|_| a.append(Stream::Inference, "{}".into()).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        assert_eq!(all, (1..=200).collect::<Vec<_>>());
        w.join();
        assert_eq!(o.counters()[Stream::Inference as usize].pending, 200);
    }
}
