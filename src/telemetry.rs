//! Logs and metrics. Logs are structured `tracing` events written off the
//! request path by a background writer; metrics are Prometheus text served
//! at `/metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the background writer dropped because stdout fell behind: it is
/// lossy on purpose, so that a slow log pipe cannot stall requests, and the
/// loss is counted instead (`turnout_log_lines_dropped_total`).
static DROPPED_LOG_LINES: OnceLock<ErrorCounter> = OnceLock::new();

pub fn dropped_log_lines() -> usize {
    DROPPED_LOG_LINES
        .get()
        .map_or(0, ErrorCounter::dropped_lines)
}

/// Installs the global log subscriber. Keep the guard alive for the life of
/// the process: dropping it flushes buffered lines.
pub fn init_logs(format: &str, level: &str) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let _ = DROPPED_LOG_LINES.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},sqlx=warn,actix_server=warn,actix_web=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour codes only for a person at a terminal who has not asked
        // for none (https://no-color.org), never in a log file.
        .with_ansi(
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
    guard
}

/// Counters that exist from the start, at zero: a series that first
/// appears at 1 shows no `increase()`, so an alert on the first dead
/// message, lost shard or refused append would never fire; and a dashboard
/// shows a flat line rather than "no data".
const COUNTED_FROM_START: &[&str] = &[
    "turnout_actor_panics_total",
    "turnout_breaker_opened_total",
    "turnout_cluster_handovers_total",
    "turnout_cluster_lease_takeovers_total",
    "turnout_cluster_shards_lost_total",
    "turnout_fanout_dropped_total",
    "turnout_fanout_gaps_total",
    "turnout_journal_fenced_total",
    "turnout_journal_refused_total",
    "turnout_log_lines_dropped_total",
    "turnout_mailbox_full_total",
    "turnout_outbox_dead_total",
    "turnout_outbox_published_total",
    "turnout_recs_lists_pushed_total",
    "turnout_ws_slow_consumers_total",
];

/// Gauges whose value at the start is known to be zero.
const ZERO_AT_START: &[&str] = &[
    "turnout_event_cache_events",
    "turnout_journal_pending",
    "turnout_live_actors",
    "turnout_recs_actors",
    "turnout_ws_connections",
];

/// Installs the recorder before anything records (what is recorded before
/// it goes nowhere) and exports the series that must exist from the start.
pub fn export_from_start() {
    let _ = metrics();
    for &name in COUNTED_FROM_START {
        metrics::counter!(name).increment(0);
    }
    for outcome in ["answered", "not_here", "not_sent", "lost"] {
        metrics::counter!("turnout_forwarded_commands_total", "outcome" => outcome).increment(0);
    }
    for source in ["memory", "database"] {
        metrics::counter!("turnout_event_reads_total", "source" => source).increment(0);
    }
    for &name in ZERO_AT_START {
        metrics::gauge!(name).set(0.0);
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every app
/// in the process, which matters for tests).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const LATENCY: &[f64] = &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            const BATCH: &[f64] = &[
                1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("turnout_journal_batch_size".into()),
                        BATCH,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once")
        })
        .clone()
}
