//! The outbox's single writer thread: group commit.
//!
//! Producers (inference, telemetry, the uplink's acks) send [`Op`]s over one
//! bounded channel; the writer takes whatever is queued (up to the batch
//! limit), applies it in one durable transaction, then answers the appenders.
//! Many appends thus share one fsync, and an append still returns only after
//! the transaction holding it committed.
//!
//! Answers go back in bulk: every appending thread has one answer channel
//! (its *sink*), each append carries a ticket, and after a commit the writer
//! sends each sink a single message with all of its answers. A record thus
//! costs the writer no channel operation of its own; one per-record reply
//! channel cost it about a sixth of its time.
//!
//! Overflow policy: **block**. A full channel makes producers wait; stored
//! records are never dropped here (retention is the store's job).

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering, fence};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};

use super::{Op, OpResult, Outbox, OutboxError, Refusal};
use crate::record::{Stream, now_ms};

/// Depth of the writer's request channel.
const CHANNEL_DEPTH: usize = 4096;
/// Shortest time between two commits that hold only acks. Nobody waits on
/// an ack, and one lost in a crash only means a re-sent record, so acks are
/// gathered: during a drain at tens of thousands of PUBACKs/s this turns
/// hundreds of small commits (each writing pages and syncing) per second
/// into a few dozen, leaving the CPU to the broker link.
const ACK_COMMIT_INTERVAL: Duration = Duration::from_millis(25);

/// The writer's answer to one append.
struct Answer {
    ticket: u64,
    result: Result<OpResult, Arc<OutboxError>>,
    /// The appended body, handed back so the thread that allocated it frees
    /// it: a free from another thread takes glibc's arena lock, which the
    /// producer's own mallocs then contend on.
    body: Option<String>,
}

/// Where an append's answer goes: its thread's sink, under its ticket.
struct ReplyTo {
    sink: Sender<Vec<Answer>>,
    ticket: u64,
}

struct Request {
    op: Op,
    reply: Option<ReplyTo>,
}

/// One thread's answer channel and the answers it holds for later.
///
/// Unbounded by type, bounded by use: it only ever holds answers to this
/// thread's own appends that have not been waited for yet, one message per
/// commit, and the caller holds a [`PendingAppend`] for each of those.
struct Sink {
    tx: Sender<Vec<Answer>>,
    rx: Receiver<Vec<Answer>>,
    next_ticket: u64,
    /// Answers received before their `PendingAppend` asked, kept in ticket
    /// order.
    early: VecDeque<Answer>,
    /// Tickets whose `PendingAppend` was dropped unwaited: their answers
    /// are thrown away on arrival.
    abandoned: HashSet<u64>,
}

impl Sink {
    fn new() -> Self {
        // Unbounded on purpose, yet bounded in effect: it holds at most one
        // answer per append of this thread still in flight, and those are
        // limited by the writer's bounded request channel. A bounded sink
        // could deadlock the writer against a thread blocked submitting.
        let (tx, rx) = unbounded();
        Sink { tx, rx, next_ticket: 0, early: VecDeque::new(), abandoned: HashSet::new() }
    }

    fn take_early(&mut self, ticket: u64) -> Option<Answer> {
        let i = self.early.binary_search_by_key(&ticket, |a| a.ticket).ok()?;
        self.early.remove(i)
    }

    /// The answer for `ticket` if it is here or already sent, without waiting.
    fn find(&mut self, ticket: u64) -> Option<Answer> {
        if let Some(a) = self.take_early(ticket) {
            return Some(a);
        }
        while let Ok(batch) = self.rx.try_recv() {
            if let Some(a) = self.file(batch, Some(ticket)) {
                return Some(a);
            }
        }
        None
    }

    /// Files a batch of answers; returns the one for `ticket`, if there.
    fn file(&mut self, batch: Vec<Answer>, ticket: Option<u64>) -> Option<Answer> {
        let mut found = None;
        for a in batch {
            if Some(a.ticket) == ticket {
                found = Some(a);
            } else if !self.abandoned.remove(&a.ticket) {
                // Nearly always the back; answers from two writers interleave.
                let at = self.early.partition_point(|e| e.ticket < a.ticket);
                self.early.insert(at, a);
            }
        }
        found
    }
}

thread_local! {
    static SINK: RefCell<Sink> = RefCell::new(Sink::new());
}

/// Whether the writer is gathering acks, and how to wake it from that.
///
/// While gathering, the writer sleeps instead of waiting on its channel, so
/// the stream of acks does not wake it once per PUBACK (those wake-ups cost
/// the unbatched drain about a tenth of its rate). An append, which someone
/// waits for, wakes it at once.
#[derive(Default)]
struct Gathering {
    active: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
}

impl Gathering {
    /// Called after a request that someone waits for was sent.
    fn wake_for_append(&self) {
        // Pairs with the fence in `gather_acks`: either the writer sees the
        // request in the channel, or we see it gathering and unpark it.
        fence(AtomicOrdering::SeqCst);
        if self.active.load(AtomicOrdering::Relaxed)
            && let Some(t) = self.writer.get()
        {
            t.unpark();
        }
    }
}

/// Sends writes to the writer thread. Cloneable; blocking calls.
#[derive(Clone)]
pub struct Appender {
    tx: Sender<Request>,
    gathering: Arc<Gathering>,
    /// Disconnects when the writer thread ends: how a waiting appender
    /// learns that its answer will never come.
    writer_alive: Receiver<()>,
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
    let (alive_tx, writer_alive) = bounded::<()>(0);
    let gathering = Arc::new(Gathering::default());
    let g = gathering.clone();
    let thread = std::thread::Builder::new().name("outbox-writer".into()).spawn(move || {
        let _alive = alive_tx; // dropped when this thread ends, however it ends
        let _ = g.writer.set(std::thread::current());
        run(outbox, rx, batch_max.max(1), on_commit, &g)
    })?;
    Ok(WriterHandle { appender: Appender { tx, gathering, writer_alive }, thread })
}

fn run(
    outbox: Outbox,
    rx: Receiver<Request>,
    batch_max: usize,
    on_commit: Arc<dyn Fn() + Send + Sync>,
    gathering: &Gathering,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(batch_max);
    let mut ops: Vec<Op> = Vec::with_capacity(batch_max);
    let mut backoff = crate::sys::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut last_expire = std::time::Instant::now();
    let mut last_commit = std::time::Instant::now();
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
        if batch.iter().all(|r| matches!(r.op, Op::Ack { .. })) {
            gather_acks(&rx, &mut batch, batch_max, last_commit + ACK_COMMIT_INTERVAL, gathering);
        }
        // Move the ops out (no per-record copy); keep where each answer goes.
        // Acks of adjacent runs of one stream become one range delete.
        ops.clear();
        let mut replies: Vec<Option<ReplyTo>> = Vec::with_capacity(batch.len());
        for r in batch.drain(..) {
            if let (Op::Ack { stream, first, last }, None, Some(Op::Ack { stream: s, last: l, .. }), Some(None)) =
                (&r.op, &r.reply, ops.last_mut(), replies.last())
                && s == stream
                && l.checked_add(1) == Some(*first)
            {
                *l = *last;
                continue;
            }
            ops.push(r.op);
            replies.push(r.reply);
        }
        let appended = ops.iter().any(|o| matches!(o, Op::Append { .. }));
        let committed = outbox.commit(&ops);
        last_commit = std::time::Instant::now();
        let stored = committed.is_ok();
        let results: Vec<Result<OpResult, Arc<OutboxError>>> = match committed {
            Ok(results) => {
                backoff.reset();
                results.into_iter().map(Ok).collect()
            }
            Err(e) => {
                // Nothing of this batch is stored: say so to every appender
                // (they count the loss) and back off so a failing disk is not
                // hammered. Acks are simply retried by the uplink later.
                tracing::error!(error = %crate::error_chain(&e), ops = ops.len(), "outbox commit failed");
                vec![Err(Arc::new(e)); ops.len()]
            }
        };
        answer(replies, results, &mut ops);
        if !stored {
            std::thread::sleep(backoff.next_delay());
        } else if appended {
            on_commit();
        }
    }
}

/// Adds requests to an ack-only `batch` until `due`, the batch is full, or
/// a request that someone waits for (an append) arrives.
fn gather_acks(
    rx: &Receiver<Request>,
    batch: &mut Vec<Request>,
    batch_max: usize,
    due: std::time::Instant,
    gathering: &Gathering,
) {
    gathering.active.store(true, AtomicOrdering::SeqCst);
    fence(AtomicOrdering::SeqCst);
    'gather: while batch.len() < batch_max {
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    let ack = matches!(r.op, Op::Ack { .. });
                    batch.push(r);
                    if !ack {
                        break 'gather;
                    }
                    if batch.len() >= batch_max {
                        break 'gather;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break 'gather, // shutting down: commit what is here
            }
        }
        let now = std::time::Instant::now();
        if now >= due {
            break;
        }
        std::thread::park_timeout(due - now);
    }
    gathering.active.store(false, AtomicOrdering::Relaxed);
}

/// Sends each sink one message with all of its answers from this commit.
fn answer(replies: Vec<Option<ReplyTo>>, results: Vec<Result<OpResult, Arc<OutboxError>>>, ops: &mut Vec<Op>) {
    let mut by_sink: Vec<(Sender<Vec<Answer>>, Vec<Answer>)> = Vec::new();
    for ((reply, result), op) in replies.into_iter().zip(results).zip(ops.drain(..)) {
        let Some(ReplyTo { sink, ticket }) = reply else { continue };
        let body = match op {
            Op::Append { body, .. } => Some(body),
            _ => None,
        };
        let a = Answer { ticket, result, body };
        // Few threads append, so a linear search beats hashing.
        match by_sink.iter_mut().find(|(s, _)| s.same_channel(&sink)) {
            Some((_, answers)) => answers.push(a),
            None => by_sink.push((sink, vec![a])),
        }
    }
    for (sink, answers) in by_sink {
        // A sink whose thread has ended has nobody left to tell.
        let _ = sink.send(answers);
    }
}
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("record refused: {0}")]
    Rejected(Refusal),
    #[error("outbox commit failed")]
    Commit(#[source] Arc<OutboxError>),
    #[error("the outbox writer answered an append with {0:?}")]
    Unexpected(OpResult),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// An append queued with [`Appender::submit`]. Its answer arrives on the
/// submitting thread's sink, so it is waited for on that thread (not `Send`).
pub struct PendingAppend {
    ticket: u64,
    writer_alive: Receiver<()>,
    /// Answer taken (by `wait` or a successful `try_wait`).
    settled: bool,
    _same_thread: PhantomData<*const ()>,
}

impl PendingAppend {
    /// Blocks until the append's transaction committed (or failed).
    pub fn wait(mut self) -> Result<u64, AppendError> {
        self.settled = true;
        let ticket = self.ticket;
        SINK.with(|sink| {
            let mut sink = sink.borrow_mut();
            loop {
                if let Some(a) = sink.find(ticket) {
                    return outcome(a);
                }
                let batch = crossbeam_channel::select! {
                    recv(sink.rx) -> batch => match batch {
                        Ok(batch) => batch,
                        Err(_) => return Err(OutboxError::WriterGone.into()), // unreachable: the sink holds a sender
                    },
                    recv(self.writer_alive) -> _ => {
                        // The writer ended. Answers it sent before that are
                        // already in the sink; anything else never comes.
                        return match sink.find(ticket) {
                            Some(a) => outcome(a),
                            None => Err(OutboxError::WriterGone.into()),
                        };
                    }
                };
                if let Some(a) = sink.file(batch, Some(ticket)) {
                    return outcome(a);
                }
            }
        })
    }

    /// The outcome if the commit already happened; `None` while pending.
    /// After it returned `Some`, the append is settled: drop it.
    pub fn try_wait(&mut self) -> Option<Result<u64, AppendError>> {
        if self.settled {
            return None;
        }
        let ticket = self.ticket;
        let answer = SINK.with(|sink| {
            if let Some(a) = sink.borrow_mut().find(ticket) {
                return Some(Ok(a));
            }
            match self.writer_alive.try_recv() {
                // Answers sent before the writer ended are in the sink by now.
                Err(TryRecvError::Disconnected) => Some(sink.borrow_mut().find(ticket).ok_or(OutboxError::WriterGone)),
                _ => None,
            }
        })?;
        self.settled = true;
        Some(match answer {
            Ok(a) => outcome(a),
            Err(e) => Err(e.into()),
        })
    }
}

impl Drop for PendingAppend {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Nobody will ask: throw the answer away when (or if) it comes. At
        // thread exit the sink may already be gone, and with it the answer.
        let ticket = self.ticket;
        let _ = SINK.try_with(|sink| {
            let mut sink = sink.borrow_mut();
            if sink.take_early(ticket).is_none() {
                sink.abandoned.insert(ticket);
            }
        });
    }
}

fn outcome(a: Answer) -> Result<u64, AppendError> {
    drop(a.body); // here, on the thread that allocated it
    match a.result {
        Ok(OpResult::Appended { seq }) => Ok(seq),
        Ok(OpResult::Rejected(why)) => Err(AppendError::Rejected(why)),
        Ok(other) => Err(AppendError::Unexpected(other)),
        Err(e) => Err(AppendError::Commit(e)),
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
        let (sink, ticket) = SINK.with(|s| {
            let mut s = s.borrow_mut();
            s.next_ticket += 1;
            (s.tx.clone(), s.next_ticket)
        });
        self.tx
            .send(Request { op: Op::Append { stream, ts_ms, body }, reply: Some(ReplyTo { sink, ticket }) })
            .map_err(|_| OutboxError::WriterGone)?;
        self.gathering.wake_for_append();
        Ok(PendingAppend { ticket, writer_alive: self.writer_alive.clone(), settled: false, _same_thread: PhantomData })
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
            snapshots_max_bytes: u64::MAX,
            ttl_ms: [0; Stream::COUNT],
        };
        Outbox::open(dir, opts).unwrap()
    }

    #[test]
    fn an_append_pending_when_its_writer_ends_reports_the_writer_gone() {
        // Use this thread's sink with a real writer first: it must not keep
        // a later wait from noticing that its own writer ended.
        let dir = tempfile::tempdir().unwrap();
        let w = spawn_writer(open_outbox(dir.path()), 8, Arc::new(|| {})).unwrap();
        assert_eq!(w.appender.append(Stream::Events, "{}".into()).unwrap(), 1);
        assert_eq!(w.appender.append(Stream::Events, "{}".into()).unwrap(), 2);
        w.join();
        // A "writer" that takes the request and ends without answering.
        let (tx, rx) = bounded::<Request>(4);
        let (alive_tx, writer_alive) = bounded::<()>(0);
        let pending = Appender { tx, gathering: Default::default(), writer_alive }
            .submit(Stream::Events, 1, "{}".into())
            .unwrap();
        std::thread::spawn(move || {
            let _alive = alive_tx;
            drop(rx.recv().unwrap());
        })
        .join()
        .unwrap();
        assert!(matches!(pending.wait(), Err(AppendError::Outbox(OutboxError::WriterGone))));
    }

    #[test]
    fn appends_waited_out_of_order_or_dropped_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let w = spawn_writer(open_outbox(dir.path()), 1000, Arc::new(|| {})).unwrap();
        let mut p: Vec<_> = (0..6).map(|_| w.appender.submit(Stream::Events, 1, "{}".into()).unwrap()).collect();
        let sixth = p.pop().unwrap();
        drop(p.remove(4)); // seq 5, never asked for
        let second = p.remove(1);
        assert_eq!(sixth.wait().unwrap(), 6);
        assert_eq!(second.wait().unwrap(), 2);
        let mut first = p.remove(0);
        assert_eq!(first.try_wait().unwrap().unwrap(), 1);
        assert!(first.try_wait().is_none(), "an answer is given once");
        drop(first);
        assert_eq!(p.into_iter().map(|a| a.wait().unwrap()).collect::<Vec<_>>(), vec![3, 4]);
        // Nothing is left behind in this thread's sink.
        assert_eq!(w.appender.append(Stream::Events, "{}".into()).unwrap(), 7);
        SINK.with(|s| {
            let s = s.borrow();
            assert!(s.early.is_empty() && s.abandoned.is_empty(), "sink keeps {} answers", s.early.len());
        });
        w.join();
    }

    #[test]
    fn one_thread_appending_to_two_writers_gets_each_writers_answers() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let w1 = spawn_writer(open_outbox(d1.path()), 64, Arc::new(|| {})).unwrap();
        let w2 = spawn_writer(open_outbox(d2.path()), 64, Arc::new(|| {})).unwrap();
        let mut pending = Vec::new();
        for _ in 0..50 {
            pending.push((1, w1.appender.submit(Stream::Events, 1, "{}".into()).unwrap()));
            pending.push((2, w2.appender.submit(Stream::Events, 1, "{}".into()).unwrap()));
            pending.push((2, w2.appender.submit(Stream::Events, 1, "{}".into()).unwrap()));
        }
        let mut seqs = [Vec::new(), Vec::new()];
        for (which, p) in pending.into_iter().rev() {
            seqs[which - 1].push(p.wait().unwrap());
        }
        seqs.iter_mut().for_each(|s| s.sort());
        assert_eq!(seqs[0], (1..=50).collect::<Vec<_>>());
        assert_eq!(seqs[1], (1..=100).collect::<Vec<_>>());
        w1.join();
        w2.join();
    }

    #[test]
    fn queued_acks_are_gathered_merged_and_all_applied() {
        let dir = tempfile::tempdir().unwrap();
        let o = open_outbox(dir.path());
        let w = spawn_writer(o.clone(), 64, Arc::new(|| {})).unwrap();
        for _ in 0..10 {
            w.appender.append(Stream::Events, "{}".into()).unwrap();
        }
        w.appender.append(Stream::Telemetry, "{}".into()).unwrap();
        for (s, first, last) in [(Stream::Events, 1, 1), (Stream::Events, 2, 2), (Stream::Telemetry, 1, 1)] {
            w.appender.ack(s, first, last).unwrap();
        }
        for (first, last) in [(3, 5), (7, 7)] {
            w.appender.ack(Stream::Events, first, last).unwrap();
        }
        assert_eq!(w.appender.append(Stream::Inference, "{}".into()).unwrap(), 1);
        w.join();
        let left: Vec<u64> = o.read_after(Stream::Events, 0, 100).unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(left, vec![6, 8, 9, 10]);
        assert_eq!(o.counters()[Stream::Events as usize].pending, 4);
        assert_eq!(o.counters()[Stream::Telemetry as usize].pending, 0);
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
