//! Logs, traces and metrics. Logs are structured `tracing` events written
//! off the request path by a background writer; traces are the same
//! `tracing` spans, exported over OTLP when a collector is configured (a
//! join's trace: its request, the event actor's command, the journal commit
//! that carried it — one commit span linked to every command in its batch —
//! the outbox publish and the consumer that handled it); metrics are
//! Prometheus text served at `/metrics`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use secrecy::{ExposeSecret, SecretString};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing::Level;
use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines the background writer dropped because stdout fell behind: it is
/// lossy on purpose, so that a slow log pipe cannot stall requests, and the
/// loss is counted instead (`turnout_log_lines_dropped_total`).
static DROPPED_LOG_LINES: OnceLock<ErrorCounter> = OnceLock::new();

pub fn dropped_log_lines() -> usize {
    DROPPED_LOG_LINES
        .get()
        .map_or(0, ErrorCounter::dropped_lines)
}

/// `[traces]`: OpenTelemetry traces, sent over OTLP/HTTP (protobuf) to a
/// collector. Off unless an endpoint is given.
#[derive(Debug, Clone, Deserialize)]
pub struct TraceSettings {
    /// Where spans are posted, e.g. `http://127.0.0.1:4318/v1/traces`. A
    /// secret: a collector's URL may carry its credentials.
    pub otlp_endpoint: Option<SecretString>,
    pub service_name: String,
    /// The share of traces kept when a request brings no sampling decision
    /// of its own (an incoming `traceparent`'s is followed).
    pub sample_ratio: f64,
}

impl TraceSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.sample_ratio),
            "traces.sample_ratio must be between 0 and 1"
        );
        if let Some(endpoint) = &self.otlp_endpoint {
            let endpoint = endpoint.expose_secret();
            anyhow::ensure!(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "traces.otlp_endpoint must be an http:// or https:// URL (OTLP over HTTP)"
            );
        }
        Ok(())
    }
}

/// What keeps logs and traces flowing; dropping it flushes both.
pub struct Telemetry {
    _logs: WorkerGuard,
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take()
            && let Err(error) = traces.shutdown()
        {
            eprintln!("traces were not all sent: {error}");
        }
    }
}

/// Whether spans are being exported: when not, no trace context is worked
/// out, stored or sent.
static TRACING: AtomicBool = AtomicBool::new(false);

pub fn traces_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Installs the global subscriber: log lines to stdout, and spans to an
/// OTLP collector when one is configured. Call it outside any async
/// runtime (the exporter's HTTP client blocks, on a thread of its own).
pub fn init(format: &str, level: &str, traces: &TraceSettings) -> anyhow::Result<Telemetry> {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let _ = DROPPED_LOG_LINES.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "{level},sqlx=warn,actix_server=warn,actix_web=warn"
            ))
        })
        // Beside RUST_LOG's own directives (a more specific one of its
        // would still win): sqlx warns of a connection parameter it does
        // not know with its value, which may be a password
        // (`?sslpassword=…`), and of a malformed `.pgpass` line with it.
        .add_directive(
            "sqlx_postgres::options=error"
                .parse()
                .expect("a valid directive"),
        );
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        // Colour codes only for a person at a terminal who has not asked
        // for none (https://no-color.org), never in a log file.
        .with_ansi(
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    let logs = if format == "json" {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        logs.boxed()
    };
    let provider = traces
        .otlp_endpoint
        .as_ref()
        .map(|endpoint| tracer_provider(endpoint.expose_secret(), traces))
        .transpose()?;
    // Spans of Turnout's own code only (a target matches by prefix, so
    // this takes the actors crate's too): the log level does not decide
    // what a trace holds, nor does a library's span make one.
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("turnout"))
            .with_filter(Targets::new().with_target("turnout", Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init()?;
    TRACING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry {
        _logs: guard,
        traces: provider,
    })
}

fn tracer_provider(endpoint: &str, settings: &TraceSettings) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}

/// The W3C `traceparent` of `span`, to carry its trace across a process
/// boundary (an outbox row, a stream entry, a forwarded command); none
/// when traces are off.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !traces_on() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// A trace context as W3C Trace Context carries it: the `traceparent`
/// (and `tracestate`) header of a request, or the same fields stored with
/// an outbox row or a stream entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeaders<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` a child of the span `from` names (a request's caller, an
/// outbox row's writer). Call it before `span` is first entered.
pub fn continue_trace(span: &tracing::Span, from: TraceHeaders<'_>) {
    if !traces_on() || from.traceparent.is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&from);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// `span`, continuing the trace a stored or received `traceparent` names
/// (an outbox row's, a stream entry's). Call it on a span not yet entered.
pub fn following(span: tracing::Span, traceparent: &str) -> tracing::Span {
    continue_trace(
        &span,
        TraceHeaders {
            traceparent: Some(traceparent),
            tracestate: None,
        },
    );
    span
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
    "turnout_journal_rechecked_total",
    "turnout_journal_refused_total",
    "turnout_log_lines_dropped_total",
    "turnout_mailbox_full_total",
    "turnout_me_changes_handed_total",
    "turnout_me_follow_reads_total",
    "turnout_me_gaps_total",
    "turnout_outbox_dead_total",
    "turnout_outbox_fenced_total",
    "turnout_outbox_passes_cut_total",
    "turnout_outbox_published_total",
    "turnout_recs_lists_pushed_total",
    "turnout_ws_channel_load_failures_total",
    "turnout_ws_late_changes_dropped_total",
    "turnout_ws_listing_checks_total",
    "turnout_ws_radius_loads_cut_total",
    "turnout_ws_slow_consumers_total",
];

/// Gauges whose value at the start is known to be zero.
const ZERO_AT_START: &[&str] = &[
    "turnout_breaker_open",
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
    for reason in ["address", "network", "server"] {
        metrics::counter!("turnout_ws_connections_refused_total", "reason" => reason).increment(0);
    }
    for read in ["details", "listing"] {
        for source in ["memory", "database"] {
            metrics::counter!("turnout_event_reads_total", "read" => read, "source" => source)
                .increment(0);
        }
    }
    for &name in ZERO_AT_START {
        metrics::gauge!(name).set(0.0);
    }
    // Nothing is behind until a stream consumer reads its group's lag (as
    // it starts, then every 10 s); a node without Redis has no stream.
    metrics::gauge!("turnout_outbox_consumer_lag").set(0.0);
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
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("turnout_journal_batch_size".into()),
                        BATCH,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            // Histogram samples wait in a buffer until they are folded into
            // buckets: without upkeep only a scrape folds them, and a server
            // nobody scrapes grows by every request it times.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP);
                        upkeep.run_upkeep();
                    }
                })
                .expect("the metrics upkeep thread starts");
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);
