//! OpenTelemetry traces, received by a real OTLP/HTTP endpoint started
//! here and decoded from protobuf: a join is one trace — the request (a
//! child of the caller's `traceparent`), the event actor's command, the
//! outbox publish and the consumer that handled it — and the journal commit
//! that carried it is a span of its own, linked to the command.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::{Method, StatusCode};

use crate::helpers::{Backend, JWT_KEY, TestApp, fresh_database};
use crate::process::ServerProcess;

/// An OTLP/HTTP receiver: keeps every span posted to `/v1/traces`.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = web::Data::from(Arc::clone(&spans));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(kept.clone())
                .app_data(web::PayloadConfig::new(16 << 20))
                .route("/v1/traces", web::post().to(receive))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let endpoint = format!("http://{}/v1/traces", server.addrs()[0]);
        actix_web::rt::spawn(server.run());
        Self { endpoint, spans }
    }

    /// Every span received so far of the trace `trace_id`.
    fn trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The spans named `name`, from any trace.
    fn named(&self, name: &str) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

async fn receive(body: web::Bytes, spans: web::Data<Mutex<Vec<Span>>>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    spans.lock().unwrap().extend(
        request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans),
    );
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span of `spans` named `name` whose parent is `parent`.
fn child<'a>(spans: &'a [Span], name: &str, parent: &[u8]) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.name == name && s.parent_span_id == parent)
}

async fn a_join_is_one_trace(backend: Backend, redis: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let collector = Collector::start().await;
    let stream_prefix = format!("turnout-test-{}:", uuid::Uuid::now_v7().simple());
    let mut env = vec![
        ("TURNOUT_TRACES__OTLP_ENDPOINT", collector.endpoint.as_str()),
        // Spans go out every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    if let Some(redis) = &redis {
        env.extend([
            ("TURNOUT_REDIS_URL", redis.as_str()),
            ("TURNOUT_OUTBOX__STREAM_PREFIX", stream_prefix.as_str()),
        ]);
    }
    let server = ServerProcess::start(&url, dir.path(), &env).await;
    let app = TestApp::attach(&server.address, JWT_KEY);
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 10).await;

    // The caller's own trace, which the server continues.
    let trace_id: [u8; 16] = rand::random();
    let caller_span: [u8; 8] = rand::random();
    let joined = app
        .as_user(
            &app.user(),
            Method::POST,
            &format!("/v1/events/{event}/join"),
        )
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header(
            "traceparent",
            format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        joined.status(),
        StatusCode::CREATED,
        "{:?}",
        joined.text().await
    );

    let consumed = |spans: &[Span]| spans.iter().any(|s| s.name == "daily-facts consume");
    let mut trace = Vec::new();
    for _ in 0..150 {
        trace = collector.trace(&trace_id);
        if consumed(&trace) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    let request = child(&trace, "POST /v1/events/{id}/join", &caller_span)
        .unwrap_or_else(|| panic!("the request continues the caller's trace: {names:?}"));
    assert_eq!(request.kind, SpanKind::Server as i32);
    let command = child(&trace, "event join", &request.span_id)
        .unwrap_or_else(|| panic!("the actor's command is the request's child: {names:?}"));
    let publish = child(&trace, "outbox publish", &command.span_id)
        .unwrap_or_else(|| panic!("the outbox publish is the command's child: {names:?}"));
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    let consume = child(&trace, "daily-facts consume", &publish.span_id)
        .unwrap_or_else(|| panic!("the consumer is the publish's child: {names:?}"));
    assert_eq!(consume.kind, SpanKind::Consumer as i32);

    // The commit is a trace of its own, linked to every command it carried.
    let commits = collector.named("journal.commit");
    let carrier = commits
        .iter()
        .find(|c| {
            c.links
                .iter()
                .any(|l| l.trace_id == trace_id && l.span_id == command.span_id)
        })
        .unwrap_or_else(|| panic!("a commit links to the command ({} commits)", commits.len()));
    assert_ne!(carrier.trace_id, trace_id);
    assert!(carrier.parent_span_id.is_empty(), "a commit is a root span");
    drop(server);
}

#[actix_web::test]
async fn sqlite_a_join_is_one_trace() {
    a_join_is_one_trace(Backend::Sqlite, None).await;
}

/// Through Redis: the stream entry carries the trace to the consumer.
#[actix_web::test]
async fn postgres_and_redis_a_join_is_one_trace() {
    let Some(redis) = std::env::var("TURNOUT_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("TURNOUT_TEST_REDIS_URL is not set: skipping the trace through Redis");
        return;
    };
    a_join_is_one_trace(Backend::Postgres, Some(redis)).await;
}
