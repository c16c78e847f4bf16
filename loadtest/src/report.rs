//! What a run measured: latency percentiles (HdrHistogram), throughput,
//! errors by kind, and the invariant checks; printed and written as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 1 µs to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            passed,
            detail: detail.into(),
        }
    }

    /// The rate a run achieved, against the one it meant to send at (none:
    /// flat out), for information.
    pub fn rate(achieved: f64, intended: Option<f64>) -> Self {
        let detail = match intended {
            Some(rate) => format!("achieved {achieved:.0}/s of {rate:.0}/s intended"),
            None => format!("achieved {achieved:.0}/s flat out"),
        };
        Self::new("rate (info)", true, detail)
    }

    /// The seconds of a run (by when each request was meant to go) whose
    /// slowest answer was slowest, for information: a stall shows as one
    /// or two seconds far above the rest, and when it came says what ran
    /// then (a checkpoint, a purge, a scrape).
    pub fn slowest_seconds(requests: impl IntoIterator<Item = (Duration, Duration)>) -> Self {
        let worst = slowest_seconds(requests, 3);
        let detail = worst
            .iter()
            .map(|(second, took)| format!("at {second} s: {:.1} ms", took.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ");
        Self::new("slowest seconds (info)", true, detail)
    }
}

/// The `top` seconds of a run with the longest answer, slowest first, from
/// each request's intended send time (since the start) and how long it
/// took.
pub fn slowest_seconds(
    requests: impl IntoIterator<Item = (Duration, Duration)>,
    top: usize,
) -> Vec<(u64, Duration)> {
    let mut worst: BTreeMap<u64, Duration> = BTreeMap::new();
    for (sent, took) in requests {
        let slowest = worst.entry(sent.as_secs()).or_default();
        *slowest = (*slowest).max(took);
    }
    let mut worst: Vec<(u64, Duration)> = worst.into_iter().collect();
    worst.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    worst.truncate(top);
    worst
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub requests: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    /// What was answered 2xx, per second: a server answering fast errors
    /// is not fast.
    pub ok_per_s: f64,
    pub latency: Percentiles,
    /// "201", "503", "timeout", "connect", … → count.
    pub outcomes: BTreeMap<String, u64>,
    pub error_rate: f64,
    pub checks: Vec<Check>,
    /// What makes the figures mean something else than they seem.
    pub warnings: Vec<String>,
    /// With several targets: each one's load-step outcomes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_target: BTreeMap<String, BTreeMap<String, u64>>,
}

/// How to start a server that a load from one machine measures, not limits.
pub const LOAD_TEST_SERVER: &str = "TURNOUT_RATE_LIMITS__ENABLED=false \
    TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0 TURNOUT_REALTIME__MAX_CONNECTIONS_PER_IP=0";

/// A warning when most answers were 429: the run measured the server's rate
/// limits, not its speed.
fn rate_limited_warning(outcomes: &BTreeMap<String, u64>, requests: u64) -> Option<String> {
    let limited = outcomes.get("429").copied().unwrap_or(0);
    (requests > 0 && limited * 2 > requests).then(|| {
        format!(
            "{limited} of {requests} answers were 429 rate_limited: this run measured the \
             server's rate limits, not its speed. Start the server for a load test with \
             {LOAD_TEST_SERVER}"
        )
    })
}

impl Report {
    pub fn new(
        scenario: &str,
        target: &str,
        latency: &Histogram<u64>,
        elapsed: Duration,
        outcomes: BTreeMap<String, u64>,
        checks: Vec<Check>,
    ) -> Self {
        let requests: u64 = outcomes.values().sum();
        let errors = requests - answered_2xx(&outcomes) as u64;
        // Checks on what the server holds pass trivially when it took
        // nothing: a server answering only errors must not read "all pass".
        let mut checks = checks;
        checks.insert(
            0,
            Check::new(
                "some requests were answered 2xx",
                errors < requests,
                format!("{} of {requests} answered 2xx", requests - errors),
            ),
        );
        Self {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            requests,
            elapsed_s: elapsed.as_secs_f64(),
            throughput_per_s: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            ok_per_s: (requests - errors) as f64 / elapsed.as_secs_f64().max(1e-9),
            latency: Percentiles::of(latency),
            outcomes: outcomes.clone(),
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            checks,
            warnings: rate_limited_warning(&outcomes, requests)
                .into_iter()
                .collect(),
            by_target: BTreeMap::new(),
        }
    }

    /// The outcomes per target (see [`crate::api::Api::outcomes_by_target`]).
    pub fn by_target(mut self, outcomes: BTreeMap<String, BTreeMap<String, u64>>) -> Self {
        self.by_target = outcomes;
        self
    }

    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn print(&self) {
        let l = &self.latency;
        println!("scenario     {} against {}", self.scenario, self.target);
        println!(
            "requests     {} in {:.3} s = {:.0}/s ({:.0}/s answered 2xx)",
            self.requests, self.elapsed_s, self.throughput_per_s, self.ok_per_s
        );
        println!(
            "latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!(
            "outcomes     {}  (error rate {:.4})",
            outcomes.join(", "),
            self.error_rate
        );
        for (target, outcomes) in &self.by_target {
            let outcomes: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("  via        {target}  {}", outcomes.join(", "));
        }
        for c in &self.checks {
            println!(
                "{}  {} — {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        for warning in &self.warnings {
            println!("WARNING  {warning}");
            eprintln!("\n*** WARNING: {warning} ***\n");
        }
    }
}

/// How many of `outcomes` (outcome kind → count) were answered 2xx.
pub fn answered_2xx(outcomes: &BTreeMap<String, u64>) -> usize {
    outcomes
        .iter()
        .filter(|(kind, _)| kind.starts_with('2'))
        .map(|(_, count)| *count as usize)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_seconds_are_those_with_the_longest_answer() {
        let ms = Duration::from_millis;
        let requests = [
            (ms(100), ms(5)),
            (ms(900), ms(700)), // second 0
            (ms(1_200), ms(3)), // second 1
            (ms(2_500), ms(40)),
            (ms(2_600), ms(1_500)), // second 2
            (ms(3_000), ms(40)),    // second 3
        ];
        assert_eq!(
            slowest_seconds(requests, 3),
            vec![(2, ms(1_500)), (0, ms(700)), (3, ms(40))]
        );
        assert!(slowest_seconds([], 3).is_empty());
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = latency_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
    }

    /// A report of a run of one second with these outcomes and checks.
    fn one_second_of(outcomes: BTreeMap<String, u64>, checks: Vec<Check>) -> Report {
        Report::new(
            "t",
            "x",
            &latency_histogram(),
            Duration::from_secs(1),
            outcomes,
            checks,
        )
    }

    #[test]
    fn errors_are_every_non_2xx_outcome() {
        let outcomes = BTreeMap::from([
            ("201".to_owned(), 90),
            ("503".to_owned(), 5),
            ("timeout".to_owned(), 5),
        ]);
        let report = one_second_of(outcomes, vec![]);
        assert_eq!(report.requests, 100);
        assert!((report.error_rate - 0.10).abs() < 1e-9);
        assert!(report.invariants_hold());
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn a_run_mostly_refused_for_rate_limits_says_so() {
        let outcomes = BTreeMap::from([("201".to_owned(), 10), ("429".to_owned(), 90)]);
        let report = one_second_of(outcomes, vec![]);
        assert_eq!(report.warnings.len(), 1);
        assert!(report.warnings[0].contains("TURNOUT_RATE_LIMITS__ENABLED=false"));
    }

    #[test]
    fn a_run_the_server_answered_only_with_errors_fails() {
        let outcomes = BTreeMap::from([("503".to_owned(), 95), ("timeout".to_owned(), 5)]);
        let always = vec![Check::new("counts match", true, String::new())];
        let report = one_second_of(outcomes, always);
        assert!(!report.invariants_hold(), "{:?}", report.checks);
    }
}
