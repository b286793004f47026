//! Speech segmentation: per-window speech probabilities in, speech
//! segments out. Pure; positions are sample counts of the 16 kHz stream.
//!
//! The rule is Silero's own streaming one (`VADIterator`): a window at or
//! above `threshold` starts (or continues) speech; speech ends after
//! `min_silence_ms` of windows below `threshold - 0.15` (hysteresis, so a
//! probability hovering around the threshold does not chop a sentence),
//! and the segment ends where that silence began. Segments shorter than
//! `min_speech_ms` are not reported. No padding is added.

/// Segmenter settings in 16 kHz samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentConfig {
    pub threshold: f32,
    /// Below this a window counts as silence (threshold - 0.15, at least 0.01).
    pub neg_threshold: f32,
    pub min_speech_samples: u64,
    pub min_silence_samples: u64,
}

impl SegmentConfig {
    pub fn new(threshold: f32, min_speech_ms: u64, min_silence_ms: u64, sample_rate: u32) -> Self {
        let per_ms = sample_rate as u64;
        Self {
            threshold,
            neg_threshold: (threshold - 0.15).max(0.01),
            min_speech_samples: min_speech_ms * per_ms / 1000,
            min_silence_samples: min_silence_ms * per_ms / 1000,
        }
    }
}

/// One stretch of speech, in stream samples `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub max_prob: f32,
}

/// The streaming state machine.
#[derive(Debug, Clone)]
pub struct Segmenter {
    config: SegmentConfig,
    /// Start and peak probability of the speech in progress.
    open: Option<(u64, f32)>,
    /// Where the current run of silence inside speech began.
    silence_from: Option<u64>,
}

impl Segmenter {
    pub fn new(config: SegmentConfig) -> Self {
        Self { config, open: None, silence_from: None }
    }

    /// Feeds the probability of the window `[start, start + len)`; returns a
    /// segment when this window closes one.
    pub fn push(&mut self, start: u64, len: u64, prob: f32) -> Option<Segment> {
        let c = self.config;
        if prob >= c.threshold {
            self.silence_from = None;
            match &mut self.open {
                Some((_, max)) => *max = max.max(prob),
                None => self.open = Some((start, prob)),
            }
            return None;
        }
        let (seg_start, max_prob) = self.open?;
        if prob < c.neg_threshold {
            let silent_since = *self.silence_from.get_or_insert(start);
            if start + len - silent_since >= c.min_silence_samples {
                self.open = None;
                self.silence_from = None;
                return self.report(seg_start, silent_since, max_prob);
            }
        }
        None
    }

    /// Ends the stream at `pos` (shutdown, device lost, gap in the audio):
    /// reports the speech in progress, if long enough.
    pub fn flush(&mut self, pos: u64) -> Option<Segment> {
        let (start, max_prob) = self.open.take()?;
        let end = self.silence_from.take().unwrap_or(pos);
        self.report(start, end, max_prob)
    }

    pub fn in_speech(&self) -> bool {
        self.open.is_some()
    }

    fn report(&self, start: u64, end: u64, max_prob: f32) -> Option<Segment> {
        (end.saturating_sub(start) >= self.config.min_speech_samples).then_some(Segment { start, end, max_prob })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 512;

    /// Runs per-window probabilities through a segmenter (250 ms minimum
    /// speech, 300 ms minimum silence at 16 kHz), flushing at the end.
    fn segments(probs: &[f32]) -> Vec<Segment> {
        let mut s = Segmenter::new(SegmentConfig::new(0.5, 250, 300, 16_000));
        let mut out: Vec<Segment> = probs.iter().enumerate().filter_map(|(i, p)| s.push(i as u64 * W, W, *p)).collect();
        out.extend(s.flush(probs.len() as u64 * W));
        out
    }

    fn run(parts: &[(f32, usize)]) -> Vec<f32> {
        parts.iter().flat_map(|&(p, n)| std::iter::repeat_n(p, n)).collect()
    }

    #[test]
    fn one_utterance_between_silences() {
        // 1 s silence, 1 s speech, 1 s silence (31.25 windows per second).
        let probs = run(&[(0.02, 31), (0.9, 31), (0.02, 31)]);
        let s = segments(&probs);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].start, s[0].end), (31 * W, 62 * W));
        assert_eq!(s[0].max_prob, 0.9);
    }

    #[test]
    fn short_pauses_do_not_split_and_long_ones_do() {
        // 200 ms pause (6 windows) < 300 ms: one segment.
        let s = segments(&run(&[(0.9, 20), (0.05, 6), (0.8, 20), (0.0, 40)]));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].start, s[0].end), (0, 46 * W));
        // 500 ms pause (16 windows): two.
        let s = segments(&run(&[(0.9, 20), (0.05, 16), (0.8, 20), (0.0, 40)]));
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].end, 20 * W);
        assert_eq!(s[1].start, 36 * W);
    }

    #[test]
    fn probabilities_between_the_thresholds_keep_speech_going() {
        // 0.4 is below 0.5 but above 0.35: neither starts nor ends speech.
        let s = segments(&run(&[(0.4, 10), (0.9, 10), (0.4, 40), (0.0, 20)]));
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].start, s[0].end), (10 * W, 60 * W));
    }

    #[test]
    fn blips_shorter_than_min_speech_are_not_reported() {
        // 3 windows = 96 ms < 250 ms.
        assert!(segments(&run(&[(0.0, 10), (0.95, 3), (0.0, 40)])).is_empty());
        assert!(segments(&run(&[(0.0, 100)])).is_empty());
    }

    #[test]
    fn flush_reports_speech_still_in_progress() {
        let s = segments(&run(&[(0.0, 5), (0.9, 20)]));
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].start, s[0].end), (5 * W, 25 * W));
    }
}
