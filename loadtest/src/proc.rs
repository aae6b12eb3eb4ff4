//! Samples the resident memory and CPU time of the gateway processes given with `--pid`,
//! from `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime + stime).

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    pub pid: u32,
    /// None once the process is gone.
    pub rss_kib: Option<u64>,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_pct: Option<f64>,
    /// CPU seconds used since the process started.
    pub cpu_secs: Option<f64>,
}

/// VmRSS in KiB from the text of /proc/<pid>/status.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime in clock ticks from the text of /proc/<pid>/stat. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': state(3) ppid(4) ... utime(14) stime(15), so utime is the 12th here.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The command name of a process, for labels.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Samples a fixed set of processes; CPU percentages are over the time between calls.
pub struct Sampler {
    pids: Vec<u32>,
    ticks_per_sec: f64,
    last: Vec<Option<(u64, Instant)>>,
}

impl Sampler {
    pub fn new(pids: Vec<u32>) -> Sampler {
        // SAFETY: sysconf has no preconditions.
        let tps = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Sampler {
            last: vec![None; pids.len()],
            pids,
            ticks_per_sec: if tps > 0 { tps as f64 } else { 100.0 },
        }
    }

    pub fn sample(&mut self) -> Vec<ProcSample> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.pids.len());
        for (i, &pid) in self.pids.iter().enumerate() {
            let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .as_deref()
                .and_then(parse_vmrss);
            let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat_ticks);
            let cpu_pct = match (ticks, self.last[i]) {
                (Some(t), Some((t0, at0))) => {
                    let wall = now.duration_since(at0).as_secs_f64();
                    (wall > 0.0)
                        .then(|| (t.saturating_sub(t0)) as f64 / self.ticks_per_sec / wall * 100.0)
                }
                _ => None,
            };
            self.last[i] = ticks.map(|t| (t, now));
            out.push(ProcSample {
                pid,
                rss_kib,
                cpu_pct,
                cpu_secs: ticks.map(|t| t as f64 / self.ticks_per_sec),
            });
        }
        out
    }
}

/// Memory and CPU of one process over a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    pub pid: u32,
    pub name: String,
    pub rss_kib_start: Option<u64>,
    /// At the end of the hold: all connections up, nothing pushed yet.
    pub rss_kib_idle: Option<u64>,
    pub rss_kib_peak: Option<u64>,
    pub rss_kib_end: Option<u64>,
    /// CPU seconds used during the run.
    pub cpu_secs_run: Option<f64>,
    /// Mean CPU over the push phase, percent of one core.
    pub cpu_pct_push: Option<f64>,
}

/// A set of processes watched over the phases of a run.
pub struct Watch {
    sampler: Sampler,
    names: Vec<String>,
    first: Vec<ProcSample>,
    idle: Option<Vec<ProcSample>>,
    push_end: Option<Vec<ProcSample>>,
    peak: Vec<Option<u64>>,
    last: Vec<ProcSample>,
}

impl Watch {
    /// Starts watching: the first sample is the baseline.
    pub fn new(pids: Vec<u32>) -> Watch {
        let names = pids.iter().map(|&p| comm(p)).collect();
        let mut sampler = Sampler::new(pids);
        let first = sampler.sample();
        Watch {
            sampler,
            names,
            peak: first.iter().map(|s| s.rss_kib).collect(),
            last: first.clone(),
            first,
            idle: None,
            push_end: None,
        }
    }

    /// The once-a-second sample (CPU over the last second).
    pub fn tick(&mut self) -> Vec<ProcSample> {
        let sample = self.sampler.sample();
        for (p, s) in self.peak.iter_mut().zip(&sample) {
            *p = (*p).max(s.rss_kib);
        }
        self.last = sample.clone();
        sample
    }

    /// End of the hold, start of the pushes.
    pub fn mark_idle(&mut self) {
        self.idle = Some(self.sampler.sample());
    }

    /// End of the pushes (only the first call counts).
    pub fn mark_push_end(&mut self) {
        if self.push_end.is_none() {
            self.push_end = Some(self.sampler.sample());
        }
    }

    /// The usage of each process; `push_secs` is the length of the push phase.
    pub fn usage(&mut self, push_secs: f64) -> Vec<Usage> {
        let end = self.sampler.sample();
        (0..self.first.len())
            .map(|i| {
                let end_rss = end[i].rss_kib.or(self.last[i].rss_kib);
                let end_cpu = end[i].cpu_secs.or(self.last[i].cpu_secs);
                let at = |v: &Option<Vec<ProcSample>>| v.as_ref().and_then(|v| v[i].cpu_secs);
                Usage {
                    pid: self.first[i].pid,
                    name: self.names[i].clone(),
                    rss_kib_start: self.first[i].rss_kib,
                    rss_kib_idle: self.idle.as_ref().and_then(|v| v[i].rss_kib),
                    rss_kib_peak: self.peak[i],
                    rss_kib_end: end_rss,
                    cpu_secs_run: end_cpu.zip(self.first[i].cpu_secs).map(|(e, f)| e - f),
                    cpu_pct_push: match (at(&self.idle), at(&self.push_end)) {
                        (Some(a), Some(b)) if push_secs > 0.0 => Some((b - a) / push_secs * 100.0),
                        _ => None,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\tnode\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t7\n";
        assert_eq!(parse_vmrss(status), Some(123_456));
        assert_eq!(parse_vmrss("Name:\tkthread\n"), None);
    }

    #[test]
    fn stat_ticks_survive_odd_command_names() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 7 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn sampling_this_process_reads_memory_and_cpu() {
        let mut s = Sampler::new(vec![std::process::id()]);
        let first = s.sample()[0];
        assert!(first.rss_kib.unwrap() > 0);
        assert!(first.cpu_pct.is_none(), "no rate on the first sample");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(s.sample()[0].cpu_pct.is_some());
    }

    #[test]
    fn a_missing_process_gives_none() {
        let mut s = Sampler::new(vec![u32::MAX - 1]);
        assert_eq!(s.sample()[0].rss_kib, None);
    }
}
