//! Statistics over samples, and the rows of the result tables.

use std::time::Duration;

/// The error type of the harness: any error, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result of the harness.
pub type Res<T> = Result<T, BoxError>;

/// Median and p99 of a set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Number of samples.
    pub n: usize,
    /// The median (the mean of the two middle samples for an even count).
    pub median: Duration,
    /// The 99th percentile (nearest rank); with fewer than 100 samples this is the maximum.
    pub p99: Duration,
}

impl Stats {
    /// The statistics of `samples`, `None` if there are none.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort();
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2
        };
        let rank = ((n as f64) * 0.99).ceil() as usize;
        let p99 = v[rank.clamp(1, n) - 1];
        Some(Stats { n, median, p99 })
    }

    /// "median / p99" in milliseconds.
    pub fn show(&self) -> String {
        format!("{} / {}", ms(self.median), ms(self.p99))
    }
}

/// A duration in milliseconds with a sensible number of digits.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 0.1 {
        format!("{:.1} µs", v * 1e3)
    } else if v < 1.0 {
        format!("{v:.3} ms")
    } else if v < 100.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// A rate with thousands separators.
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", thousands(per_sec.round() as u64))
}

/// An integer with `,` thousands separators.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether a row's target was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The figure meets its target.
    Met,
    /// The figure misses its target.
    Missed,
    /// A figure without a target.
    Info,
}

impl Verdict {
    /// `Met` if `ok`, else `Missed`.
    pub fn check(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn show(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::Info => "—",
        }
    }
}

/// One line of a backend's table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The item number (1–7: the items; 8: the guarded write; 9: the dialects).
    pub item: u8,
    /// What was measured.
    pub measure: String,
    /// The figure through coord.
    pub coord: String,
    /// The raw client's figure, or the reference it is compared with.
    pub reference: String,
    /// The ratio, if any.
    pub ratio: String,
    /// The target, if any.
    pub target: String,
    /// Whether the target was met.
    pub verdict: Verdict,
}

impl Row {
    /// A row with every field given.
    pub fn new(
        item: u8,
        measure: impl Into<String>,
        coord: impl Into<String>,
        reference: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) -> Row {
        Row {
            item,
            measure: measure.into(),
            coord: coord.into(),
            reference: reference.into(),
            ratio: ratio.into(),
            target: target.into(),
            verdict,
        }
    }

    /// A row that only reports a figure (no reference, ratio or target).
    pub fn info(item: u8, measure: impl Into<String>, coord: impl Into<String>) -> Row {
        Row::new(item, measure, coord, "", "", "", Verdict::Info)
    }

    /// A row reporting that a measurement failed.
    pub fn failed(item: u8, measure: &str, e: &BoxError) -> Row {
        let msg = e.to_string().replace('|', "/").replace('\n', " ");
        Row::new(
            item,
            measure,
            format!("failed: {msg}"),
            "",
            "",
            "",
            Verdict::Missed,
        )
    }
}

/// Formats a ratio with two decimals.
pub fn ratio(a: Duration, b: Duration) -> (f64, String) {
    let r = a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    (r, format!("{r:.2}"))
}

/// The markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| # | measure | coord (median / p99) | raw or reference (median / p99) | ratio | target | result |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.item,
            r.measure,
            r.coord,
            r.reference,
            r.ratio,
            r.target,
            r.verdict.show()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!(s.median, Duration::from_micros(50_500));
        assert_eq!(s.p99, Duration::from_millis(99));
        let s = Stats::of(&[Duration::from_millis(3)]).unwrap();
        assert_eq!(
            (s.median, s.p99),
            (Duration::from_millis(3), Duration::from_millis(3))
        );
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
        assert_eq!(ms(Duration::from_micros(250)), "0.250 ms");
        assert_eq!(ms(Duration::from_nanos(1500)), "1.5 µs");
    }
}
