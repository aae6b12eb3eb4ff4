//! Latency histograms (HdrHistogram, microseconds), their percentiles, and the sharded
//! recorder the connection tasks of one process write deliveries into.

use std::sync::Mutex;

use base64::Engine as _;
use hdrhistogram::serialization::{
    Deserializer as HistDeserializer, Serializer as _, V2Serializer,
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, µs (10 minutes); larger values are clamped to it.
pub const HIGHEST_US: u64 = 600_000_000;

/// Largest push number a worker keeps a per-push count for: a stamp with a larger `seq`
/// is not one of ours and is counted as a bad payload instead of growing memory.
pub const MAX_SEQ: u64 = 1 << 24;

/// A histogram of latencies in µs, 1 µs to 10 min, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static histogram bounds are valid")
}

/// A histogram that crosses the worker pipe as base64 of the HdrHistogram V2 encoding.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(new_hist())
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = HistDeserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| serde::de::Error::custom(format!("histogram: {e:?}")))?;
        let mut out = new_hist();
        out.add(&h)
            .map_err(|e| serde::de::Error::custom(format!("histogram: {e:?}")))?;
        Ok(Hist(out))
    }
}

/// Summary of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of a µs histogram; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency between a send stamp and a receive time (both unix ns), in whole µs, at least
/// 1 (a receive clock reading earlier than the stamp records as 1 µs).
pub fn latency_us(sent_ns: u64, received_ns: u64) -> u64 {
    (received_ns.saturating_sub(sent_ns) / 1000).clamp(1, HIGHEST_US)
}

/// Number of shards: connection tasks on different runtime threads rarely share one.
const SHARDS: usize = 16;

/// One shard: latencies since the last tick and first-delivery counts per push.
struct Shard {
    interval: Histogram<u64>,
    /// `by_seq[s]`: connections that received push `s` for the first time.
    by_seq: Vec<u32>,
}

/// Where the connection tasks of one process record deliveries. Each record takes one
/// uncontended-in-practice mutex (std: held for a few hundred ns, never across an await).
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        interval: new_hist(),
                        by_seq: Vec::new(),
                    })
                })
                .collect(),
        }
    }
}

impl Recorder {
    /// Records the first delivery of push `seq` to connection `conn`.
    pub fn record(&self, conn: u64, seq: u32, latency_us: u64) {
        let mut shard = self.shards[conn as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shard.interval.saturating_record(latency_us);
        let i = seq as usize;
        if shard.by_seq.len() <= i {
            shard.by_seq.resize(i + 1, 0);
        }
        shard.by_seq[i] += 1;
    }

    /// Latencies recorded since the last call, merged; the shards start again empty.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut out = new_hist();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds everywhere, so `add` cannot fail.
            let _ = out.add(&shard.interval);
            shard.interval.reset();
        }
        out
    }

    /// First deliveries per push number, summed over shards.
    pub fn by_seq(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            add_counts(&mut out, &shard.by_seq);
        }
        out
    }
}

/// `into[i] += from[i]`, growing `into` as needed.
pub fn add_counts(into: &mut Vec<u32>, from: &[u32]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new_hist();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50_ms, 0.5);
        assert_eq!(p.p90_ms, 0.9);
        assert_eq!(p.p99_ms, 0.99);
        assert_eq!(p.p999_ms, 0.999);
        assert_eq!(p.max_ms, 1.0);
        assert!((p.mean_ms - 0.5005).abs() < 1e-3);
    }

    #[test]
    fn percentiles_keep_three_significant_digits_at_large_values() {
        let mut h = new_hist();
        h.record(123_456).unwrap(); // 123.456 ms
        let p = Percentiles::of(&h);
        let rel = (p.max_ms - 123.456).abs() / 123.456;
        assert!(rel < 1e-3, "{p:?}");
        assert_eq!(p.p50_ms, p.max_ms);
    }

    #[test]
    fn a_tail_shows_only_in_the_high_percentiles() {
        let mut h = new_hist();
        h.record_n(1_000, 990).unwrap();
        h.record_n(100_000, 10).unwrap();
        let p = Percentiles::of(&h);
        assert_eq!(p.p50_ms, 1.0);
        assert_eq!(p.p90_ms, 1.0);
        assert_eq!(p.p99_ms, 1.0);
        assert!((p.p999_ms - 100.0).abs() < 0.1);
    }

    #[test]
    fn empty_histogram_gives_zeros() {
        assert_eq!(Percentiles::of(&new_hist()), Percentiles::default());
    }

    #[test]
    fn latency_is_clamped_to_the_histogram_range() {
        assert_eq!(latency_us(1_000_000, 3_500_000), 2_500);
        assert_eq!(latency_us(5, 1), 1, "clock skew records as 1 µs");
        assert_eq!(latency_us(0, u64::MAX), HIGHEST_US);
    }

    #[test]
    fn hist_survives_the_worker_pipe() {
        let mut h = new_hist();
        for us in [1, 10, 100, 1000, 10_000, 5_000_000] {
            h.record(us).unwrap();
        }
        let json = serde_json::to_string(&Hist(h.clone())).unwrap();
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(Percentiles::of(&back.0), Percentiles::of(&h));
        assert_eq!(back.0.len(), 6);
    }

    #[test]
    fn recorder_merges_shards_and_resets_intervals() {
        let r = Recorder::default();
        for conn in 0..100u64 {
            r.record(conn, (conn % 3) as u32, 1000 + conn);
        }
        let h = r.take_interval();
        assert_eq!(h.len(), 100);
        assert!(r.take_interval().is_empty());
        assert_eq!(r.by_seq(), vec![34, 33, 33]);
    }

    #[test]
    fn add_counts_grows() {
        let mut a = vec![1, 2];
        add_counts(&mut a, &[1, 1, 5]);
        assert_eq!(a, vec![2, 3, 5]);
    }
}
