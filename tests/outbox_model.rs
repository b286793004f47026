//! Model-based property test of the outbox: any interleaving of appends,
//! acks, restarts (reopening the LMDB files) and retention keeps per-stream
//! order, keeps `seq` strictly increasing across restarts, and never loses a
//! record that was neither acknowledged nor counted as dropped; evidence
//! snapshots stay within their own budget and give way before any other
//! stream loses a record.

use std::collections::VecDeque;

use proptest::prelude::*;
use spark_edge::outbox::{Op, OpResult, Outbox, OutboxOptions};
use spark_edge::record::Stream;

#[derive(Debug, Clone)]
enum Step {
    /// Append `n` records of `size` bytes to a stream, in one commit.
    Append { stream: usize, n: usize, size: usize },
    /// Ack the `n` oldest pending records of a stream (as PUBACKs would).
    AckOldest { stream: usize, n: usize },
    /// Close and reopen the outbox.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..Stream::COUNT, 1..40usize, 10..400usize).prop_map(|(stream, n, size)| Step::Append { stream, n, size }),
        3 => (0..Stream::COUNT, 1..30usize).prop_map(|(stream, n)| Step::AckOldest { stream, n }),
        1 => Just(Step::Restart),
    ]
}

/// The `snapshots` stream's own bound.
const SNAPSHOT_BUDGET: u64 = 6 * 1024;

fn open(dir: &std::path::Path, max_bytes: u64) -> Outbox {
    Outbox::open(
        dir,
        OutboxOptions {
            device_id: "model".into(),
            max_bytes,
            drop_order: vec![Stream::Events, Stream::Inference, Stream::Telemetry],
            snapshots_max_bytes: SNAPSHOT_BUDGET,
            ttl_ms: [0; Stream::COUNT],
        },
    )
    .expect("open outbox")
}

fn stored(o: &Outbox, s: Stream) -> Vec<u64> {
    o.read_after(s, 0, usize::MAX).expect("read").iter().map(|p| p.seq).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn outbox_keeps_order_and_loses_only_acked_or_counted(
        steps in proptest::collection::vec(step(), 1..40),
        bound_kib in 8u64..64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = bound_kib * 1024;
        let mut o = open(dir.path(), max_bytes);
        // Model: pending seqs per stream, the next seq, drops seen so far.
        let mut pending: [VecDeque<u64>; Stream::COUNT] = Default::default();
        let mut next = [1u64; Stream::COUNT];
        let mut dropped = [0u64; Stream::COUNT];
        for st in steps {
            match st {
                Step::Append { stream, n, size } => {
                    let s = Stream::ALL[stream];
                    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(size));
                    let ops: Vec<Op> = (0..n).map(|_| Op::Append { stream: s, ts_ms: 1, body: body.clone() }).collect();
                    let res = o.commit(&ops).unwrap();
                    for r in res {
                        let OpResult::Appended { seq } = r else { panic!("append refused: {r:?}") };
                        prop_assert_eq!(seq, next[stream], "seq strictly increasing, no reuse");
                        next[stream] += 1;
                        pending[stream].push_back(seq);
                    }
                }
                Step::AckOldest { stream, n } => {
                    let s = Stream::ALL[stream];
                    let actual = stored(&o, s);
                    if let (Some(&first), Some(&last)) = (actual.first(), actual.iter().take(n).last()) {
                        o.commit(&[Op::Ack { stream: s, first, last }]).unwrap();
                        pending[stream].retain(|q| *q > last);
                    }
                }
                Step::Restart => {
                    drop(o);
                    o = open(dir.path(), max_bytes);
                }
            }
            // Invariants after every step.
            let c = o.counters();
            let grew: Vec<bool> = (0..Stream::COUNT).map(|i| c[i].dropped > dropped[i]).collect();
            let total: u64 = c.iter().map(|x| x.bytes).sum();
            prop_assert!(total <= max_bytes, "over the bound: {total} > {max_bytes}");
            for (i, s) in Stream::ALL.into_iter().enumerate() {
                let actual = stored(&o, s);
                prop_assert!(actual.windows(2).all(|w| w[0] < w[1]), "order within {s}");
                // Retention removes only from the front of the model's queue,
                // and every removal is counted.
                let newly_dropped = c[i].dropped - dropped[i];
                prop_assert!(pending[i].len() as u64 >= newly_dropped);
                for _ in 0..newly_dropped {
                    pending[i].pop_front();
                }
                dropped[i] = c[i].dropped;
                prop_assert_eq!(actual, Vec::from(pending[i].clone()), "stream {} holds exactly the un-acked, un-dropped records", s);
                prop_assert_eq!(c[i].pending, pending[i].len() as u64);
                prop_assert_eq!(c[i].next_seq, next[i]);
            }
            // Lower-priority streams are emptied before higher ones lose anything.
            let (t, i, e) = (Stream::Telemetry as usize, Stream::Inference as usize, Stream::Events as usize);
            let snaps = Stream::Snapshots as usize;
            prop_assert!(c[snaps].bytes <= SNAPSHOT_BUDGET, "snapshots over their budget: {}", c[snaps].bytes);
            if grew[t] || grew[i] || grew[e] {
                prop_assert!(pending[snaps].is_empty(), "a record dropped while snapshots remained");
            }
            if grew[t] {
                prop_assert!(pending[e].is_empty() && pending[i].is_empty(), "telemetry dropped while events/inference remained");
            }
            if grew[i] {
                prop_assert!(pending[e].is_empty(), "inference dropped while events remained");
            }
        }
    }
}
