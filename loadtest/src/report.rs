//! The results of a run: the JSON document (`--out`), the human summary, and the PNG chart
//! of latency percentiles, connections and deliveries over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::client::CloseReason;
use crate::delivery::Accounting;
use crate::limits::{FailKind, Limits, Plan};
use crate::proc::Usage;
use crate::push::ReportSums;
use crate::scenario::Scenario;
use crate::stats::Percentiles;

/// A latency line of the chart: name, colour, which percentile.
type LatencySeries = (&'static str, RGBColor, fn(&Percentiles) -> f64);

/// The part of the run a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Ramp,
    Hold,
    Push,
    Drain,
    Stop,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub t_s: f64,
    pub phase: Phase,
    /// Connections up (established and not closed).
    pub connections: u64,
    pub failed: u64,
    pub deliveries_per_s: f64,
    pub pushes_per_s: f64,
    /// Latency of the deliveries received in this interval.
    pub latency: Percentiles,
    /// Per `--pid`, in order.
    pub rss_kib: Vec<Option<u64>>,
    pub cpu_pct: Vec<Option<f64>>,
    /// CPU of this tool's processes, summed, percent of one core.
    pub load_cpu_pct: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureLine {
    pub kind: FailKind,
    pub count: u64,
    pub sample: String,
    pub advice: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connections {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub closed_during_run: u64,
    pub close_reasons: BTreeMap<String, u64>,
    /// From the first attempt to the last outcome.
    pub ramp_secs: f64,
    pub connect_rate_per_s: f64,
    pub failures: Vec<FailureLine>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pushes {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Pushes sent per second of the push phase.
    pub rate_per_s: f64,
    /// "http 503" / "transport" → count and a sample.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Time the push API took to answer.
    pub api_latency: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deliveries {
    #[serde(flatten)]
    pub accounting: Accounting,
    pub duplicates: u64,
    pub bad_payload: u64,
    pub other_events: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Acks {
    pub requested: bool,
    /// Acks the load clients sent.
    pub client_sent: u64,
    /// Sums of the push API's reports (with `wait`).
    pub server: Option<ReportSums>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub label: Option<String>,
    pub started_unix_ms: u64,
    pub duration_secs: f64,
    pub scenario: Scenario,
    pub limits: Limits,
    pub plan: Plan,
    pub connections: Connections,
    pub pushes: Pushes,
    pub deliveries: Deliveries,
    /// Push sent (before the HTTP request) to delivery read by the client.
    pub latency: Percentiles,
    pub acks: Acks,
    /// The processes given with --pid.
    pub gateway: Vec<Usage>,
    /// (Σ idle RSS − Σ start RSS) / established, bytes; when --pid was given.
    pub gateway_rss_bytes_per_connection: Option<f64>,
    /// This tool's own processes (parent first, then workers): if their CPU is near 100%
    /// of a core each, the tool, not the gateway, limits the figures.
    pub load: Vec<Usage>,
    pub timeline: Vec<Point>,
    pub advice: Vec<String>,
}

pub fn close_reason_name(r: CloseReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{r:?}"))
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

impl Report {
    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        let _ =
            writeln!(
            s,
            "pushgate-load{}: {:.1} s, {} clients, {} target(s), {} worker process(es), {} source address(es)",
            self.label.as_deref().map(|l| format!(" [{l}]")).unwrap_or_default(),
            self.duration_secs,
            self.scenario.protocol.name(),
            self.scenario.targets.len(),
            self.plan.workers,
            self.plan.sources.max(1),
        );
        let _ = writeln!(
            s,
            "connections  {} established / {} attempted, {} failed, {} closed during the run; \
             ramp {:.1} s = {:.0} conn/s",
            c.established,
            c.attempted,
            c.failed,
            c.closed_during_run,
            c.ramp_secs,
            c.connect_rate_per_s
        );
        for f in &c.failures {
            let _ = writeln!(s, "  failed {:?} x{}: {}", f.kind, f.count, f.sample);
            let _ = writeln!(s, "    -> {}", f.advice);
        }
        for (reason, n) in &c.close_reasons {
            let _ = writeln!(s, "  closed by {reason}: {n}");
        }
        if self.scenario.push == crate::scenario::PushTo::None {
            let _ = writeln!(s, "pushes       none (connections only)");
        } else {
            let p = &self.pushes;
            let _ = writeln!(
                s,
                "pushes       {} sent ({:.1}/s, to {:?}), {} accepted, {} rejected; API answer p50 {} ms p99 {} ms",
                p.sent,
                p.rate_per_s,
                self.scenario.push,
                p.accepted,
                p.rejected,
                ms(p.api_latency.p50_ms),
                ms(p.api_latency.p99_ms)
            );
            for (k, (n, sample)) in &p.errors {
                let _ = writeln!(s, "  {k} x{n}: {sample}");
            }
            let d = &self.deliveries;
            let a = &d.accounting;
            let _ = writeln!(
                s,
                "deliveries   {} expected, {} received, {} lost ({} pushes), {} duplicates, {} unexpected, {} bad payloads",
                a.expected, a.received, a.lost, a.pushes_with_loss, d.duplicates, a.unexpected, d.bad_payload
            );
            let l = &self.latency;
            let _ = writeln!(
                s,
                "latency ms   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms),
                ms(l.mean_ms),
                l.count
            );
        }
        if self.acks.requested {
            let _ = write!(s, "acks         {} sent by clients", self.acks.client_sent);
            if let Some(r) = &self.acks.server {
                let _ = write!(
                    s,
                    "; server reports: {} sockets, {} delivered, {} acked, {} timed out, {} failed",
                    r.sockets, r.delivered, r.acked, r.timed_out, r.failed
                );
            }
            let _ = writeln!(s);
        }
        for g in &self.gateway {
            let _ = writeln!(
                s,
                "gateway      pid {} ({}): RSS start {} idle {} peak {} end {}; CPU {} s, {} during pushes",
                g.pid,
                g.name,
                mib(g.rss_kib_start),
                mib(g.rss_kib_idle),
                mib(g.rss_kib_peak),
                mib(g.rss_kib_end),
                g.cpu_secs_run.map_or("-".into(), |v| format!("{v:.1}")),
                g.cpu_pct_push.map_or("-".into(), |v| format!("{v:.0}%")),
            );
        }
        if !self.load.is_empty() {
            let cpu: Option<f64> = self.load.iter().map(|u| u.cpu_pct_push).sum();
            let rss: u64 = self.load.iter().filter_map(|u| u.rss_kib_peak).sum();
            let _ = writeln!(
                s,
                "load tool    {} process(es): peak RSS {}{}",
                self.load.len(),
                mib(Some(rss)),
                cpu.map_or(String::new(), |c| format!(", CPU {c:.0}% during pushes"))
            );
        }
        if let Some(b) = self.gateway_rss_bytes_per_connection {
            let _ = writeln!(s, "gateway RSS per idle connection: {:.1} KiB", b / 1024.0);
        }
        for a in &self.advice {
            let _ = writeln!(s, "note: {a}");
        }
        s
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Draws the chart: latency percentiles (log scale), connections, deliveries/s.
    pub fn write_chart(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        register_fonts();
        let root = BitMapBackend::new(path, (1200, 1000)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "pushgate-load{} — {} connections, {} push {:.1}/s",
            self.label
                .as_deref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default(),
            self.connections.established,
            format!("{:?}", self.scenario.push).to_lowercase(),
            self.pushes.rate_per_s
        );
        let root = root.titled(&title, ("sans-serif", 22))?;
        let areas = root.split_evenly((3, 1));
        let pts = &self.timeline;
        let t_max = pts.last().map_or(1.0, |p| p.t_s).max(1.0);

        // Latency, ms, on a log scale drawn as log10(ms) on a linear axis (clean decade
        // labels); only points that had deliveries.
        let lat: Vec<&Point> = pts.iter().filter(|p| p.latency.count > 0).collect();
        let hi = lat.iter().map(|p| p.latency.max_ms).fold(1.0_f64, f64::max);
        let lo = lat
            .iter()
            .map(|p| p.latency.p50_ms)
            .fold(f64::INFINITY, f64::min)
            .clamp(0.001, hi);
        let (y_lo, y_hi) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let mut chart = ChartBuilder::on(&areas[0])
            .caption(
                "delivery latency (ms, per second, log scale)",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .y_labels((y_hi - y_lo) as usize + 1)
            .y_label_formatter(&|v| {
                let ms = 10f64.powf(*v);
                if ms >= 1.0 {
                    format!("{ms:.0}")
                } else {
                    format!("{ms}")
                }
            })
            .x_desc("s")
            .y_desc("ms")
            .draw()?;
        let series: [LatencySeries; 4] = [
            ("p50", BLUE, |p| p.p50_ms),
            ("p90", GREEN, |p| p.p90_ms),
            ("p99", RGBColor(230, 140, 0), |p| p.p99_ms),
            ("max", RED, |p| p.max_ms),
        ];
        for (name, color, f) in series {
            chart
                .draw_series(LineSeries::new(
                    lat.iter()
                        .map(|p| (p.t_s, f(&p.latency).max(0.001).log10().max(y_lo))),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;

        // Connections up and failed.
        let c_max = pts
            .iter()
            .map(|p| p.connections.max(p.failed))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let mut chart = ChartBuilder::on(&areas[1])
            .caption("connections", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..c_max)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("s")
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t_s, p.connections as f64)),
                BLUE.stroke_width(2),
            ))?
            .label("up")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t_s, p.failed as f64)),
                RED.stroke_width(2),
            ))?
            .label("failed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;

        // Deliveries per second.
        let d_max = pts
            .iter()
            .map(|p| p.deliveries_per_s)
            .fold(1.0_f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&areas[2])
            .caption("deliveries per second", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..d_max)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("s")
            .draw()?;
        chart.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.t_s, p.deliveries_per_s)),
            BLACK.stroke_width(2),
        ))?;
        root.present()?;
        Ok(())
    }
}

/// Registers the embedded DejaVu Sans as "sans-serif", so text renders without
/// fontconfig or any font installed on the host.
fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Settings;

    fn report() -> Report {
        let scenario = Scenario::resolve(Settings::default()).unwrap();
        let limits = Limits {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            port_range: (32768, 60999),
            somaxconn: 4096,
            syn_backlog: 2048,
            file_max: 1 << 20,
        };
        let plan = Plan::new(&scenario, &limits);
        let timeline = (1..=5)
            .map(|t| Point {
                t_s: t as f64,
                phase: Phase::Push,
                connections: 1000,
                failed: 0,
                deliveries_per_s: 1000.0,
                pushes_per_s: 1.0,
                latency: Percentiles {
                    count: 1000,
                    mean_ms: 2.0,
                    p50_ms: 1.5,
                    p90_ms: 3.0,
                    p99_ms: 8.0,
                    p999_ms: 9.0,
                    max_ms: 12.0,
                },
                rss_kib: vec![],
                cpu_pct: vec![],
                load_cpu_pct: 10.0,
            })
            .collect();
        Report {
            tool: "pushgate-load test".into(),
            label: Some("unit".into()),
            started_unix_ms: 0,
            duration_secs: 5.0,
            scenario,
            limits,
            plan,
            connections: Connections {
                attempted: 1000,
                established: 1000,
                ..Connections::default()
            },
            pushes: Pushes::default(),
            deliveries: Deliveries::default(),
            latency: Percentiles::default(),
            acks: Acks::default(),
            gateway: vec![],
            gateway_rss_bytes_per_connection: None,
            load: vec![],
            timeline,
            advice: vec![],
        }
    }

    #[test]
    fn embedded_font_draws_text_without_system_fonts() {
        register_fonts();
        let (w, h) = (200u32, 40u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.draw(&Text::new("p99 ms", (5, 5), ("sans-serif", 24).into_font()))
                .unwrap();
            root.present().unwrap();
        }
        let inked = buf.chunks(3).filter(|px| px[0] < 128).count();
        assert!(inked > 50, "only {inked} dark pixels: text did not render");
    }

    #[test]
    fn summary_names_the_headline_figures() {
        let s = report().summary();
        assert!(s.contains("1000 established / 1000 attempted"), "{s}");
        assert!(s.contains("latency ms"), "{s}");
        assert!(s.contains("[unit]"), "{s}");
        assert!(s.contains("Socket.IO clients"), "{s}");
    }

    #[test]
    fn json_and_chart_files_are_written() {
        let dir = std::env::temp_dir().join(format!("pushgate-load-test-{}", std::process::id()));
        let r = report();
        r.write_json(&dir.join("r.json")).unwrap();
        r.write_chart(&dir.join("r.png")).unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("r.json")).unwrap()).unwrap();
        assert_eq!(back["connections"]["established"], 1000);
        assert_eq!(back["timeline"].as_array().unwrap().len(), 5);
        let png = std::fs::read(dir.join("r.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let _ = std::fs::remove_dir_all(dir);
    }
}
