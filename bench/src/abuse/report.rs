//! What the abusers did (per kind: attempts, answers by status, bytes),
//! and the verdict: the normal clients' p99 and the server's RSS beside
//! the abuse against the clean run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::figures::percentile;

use super::*;

/// What one kind of abuser saw.
#[derive(Default)]
pub(crate) struct KindReport {
    pub(crate) outcomes: BTreeMap<String, usize>,
    /// How long the server kept each connection it closed.
    pub(crate) held: Vec<Duration>,
    /// Body bytes sent before each answer or close.
    pub(crate) sent: Vec<u64>,
}

/// What the abusers see, by kind, as they go.
#[derive(Default, Clone)]
pub(crate) struct Tally(pub(crate) Arc<Mutex<BTreeMap<&'static str, KindReport>>>);

/// What the abusers saw, by kind, the CPU time they took, and `/metrics`
/// (bytes, series) when they started, halfway and at the end.
pub(crate) struct Report {
    pub(crate) kinds: BTreeMap<&'static str, KindReport>,
    pub(crate) cpu: f64,
    pub(crate) metrics: [(usize, usize); 3],
}

impl Tally {
    pub(crate) fn record(&self, kind: &'static str, outcome: String) {
        let mut r = self.0.lock().expect("report");
        *r.entry(kind)
            .or_default()
            .outcomes
            .entry(outcome)
            .or_default() += 1;
    }

    pub(crate) fn record_exchange(&self, kind: &'static str, e: &Exchange) {
        let outcome = match (&e.failed, e.answer) {
            (Some(why), _) => why.clone(),
            (None, Some(code)) => format!("answered {code}"),
            (None, None) if !e.closed => "open at the end".into(),
            (None, None) if e.held < AT_ONCE => "closed at once".into(),
            (None, None) => "closed by the server".into(),
        };
        let mut r = self.0.lock().expect("report");
        let k = r.entry(kind).or_default();
        *k.outcomes.entry(outcome).or_default() += 1;
        if e.failed.is_none() && e.answer.is_none() && e.closed {
            k.held.push(e.held);
        }
        if e.sent > 0 {
            k.sent.push(e.sent);
        }
    }
}

impl Report {
    pub(crate) fn print(&self) {
        println!(
            "  abusers (127.0.0.2-7, one thread, until the run's end; they used {:.1} s of CPU):",
            self.cpu
        );
        for (kind, k) in &self.kinds {
            let tries: usize = k.outcomes.values().sum();
            let outcomes: Vec<String> = k
                .outcomes
                .iter()
                .map(|(o, n)| format!("{o} x{n}"))
                .collect();
            let mut line = format!("    {kind:<34} {tries:>6}: {}", outcomes.join(", "));
            if !k.held.is_empty() {
                let mut h = k.held.clone();
                h.sort_unstable();
                line += &format!(
                    "; closed after p50 {:.1} s, max {:.1} s",
                    percentile(&h, 0.5).as_secs_f64(),
                    h[h.len() - 1].as_secs_f64()
                );
            }
            if !k.sent.is_empty() {
                let mut s = k.sent.clone();
                s.sort_unstable();
                line += &format!(
                    "; body written p50 {}, max {}",
                    bytes(s[s.len() / 2]),
                    bytes(s[s.len() - 1])
                );
            }
            println!("{line}");
        }
    }
}

pub(crate) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..0x10_0000 => format!("{} KiB", n >> 10),
        _ => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}

/// The size of the server's `/metrics` page: bytes and series (sample
/// lines). Junk paths must not add series: every label is from a fixed
/// set.
pub(crate) async fn metrics_size(http: &reqwest::Client, api: &str) -> Result<(usize, usize)> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Ok((text.len(), series))
}

/// The normal clients' figures in one run.
pub(crate) struct Normal {
    /// p50 and p99 by operation kind.
    pub(crate) latency: BTreeMap<&'static str, [Duration; 2]>,
    pub(crate) per_sec: f64,
}

/// Prints the normal clients' figures clean and beside the abusers, the
/// RSS against `bound` and the `/metrics` sizes; answers whether the
/// target held (every p99 within 2x clean, the RSS peak within the bound).
pub(crate) fn verdict(
    [clean, abused]: [&Normal; 2],
    // The clean run's peak RSS and the abused run's, MiB.
    [clean_peak, rss_peak]: [u64; 2],
    bound: u64,
    clean_metrics: (usize, usize),
    report: &Report,
) -> bool {
    println!(
        "  normal clients, clean and beside the abusers: {:.0} and {:.0} ops/s (closed loop); target: p99 at most 2x clean",
        clean.per_sec, abused.per_sec
    );
    println!(
        "    {:<16} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "op", "p50 ms", "abused", "ratio", "p99 ms", "abused", "ratio"
    );
    let mut p99_held = true;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (op, [p50, p99]) in &clean.latency {
        let Some([a50, a99]) = abused.latency.get(op) else {
            continue;
        };
        let ratio = ms(*a99) / ms(*p99).max(1e-3);
        p99_held &= ratio <= 2.0;
        println!(
            "    {op:<16} {:>9.1} {:>9.1} {:>7.2} {:>9.1} {:>9.1} {ratio:>7.2}{}",
            ms(*p50),
            ms(*a50),
            ms(*a50) / ms(*p50).max(1e-3),
            ms(*p99),
            ms(*a99),
            if ratio > 2.0 { "  p99 over 2x" } else { "" }
        );
    }
    let rss_held = rss_peak <= bound;
    println!(
        "  server RSS beside the abusers: peak {rss_peak} MiB (the clean run's {clean_peak}), bound {bound} MiB (from the clean run's warm RSS): {}",
        if rss_held { "within" } else { "OVER" }
    );
    let (m0, [m1, m2, m3]) = (clean_metrics, report.metrics);
    println!(
        "  /metrics bytes (series): {} ({}) at the clean run's end; beside the abusers {} ({}) at the start, {} ({}) halfway, {} ({}) at the end",
        m0.0, m0.1, m1.0, m1.1, m2.0, m2.1, m3.0, m3.1
    );
    let held = p99_held && rss_held;
    println!(
        "  target (every p99 within 2x clean, RSS peak within the bound): {}",
        if held { "held" } else { "NOT held" }
    );
    held
}
