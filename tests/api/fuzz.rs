//! Fuzzing the JSON bodies of every write endpoint through the real server:
//! raw bytes, broken JSON, and objects with the endpoints' own field names
//! holding hostile values. Whatever arrives, the answer is a 2xx or a 4xx
//! with the error envelope, never a 5xx, and an error names no internals.
//!
//! Cases are drawn by proptest (`TURNOUT_FUZZ_CASES` per endpoint, 200
//! unless set) and sent one at a time; a failure prints the body that
//! caused it, so it can be replayed by hand.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, User, assert_no_leak_but_echo};

/// The field names the write endpoints read, so that generated objects get
/// past `deny_unknown_fields` and reach the validation behind it.
const FIELDS: &[&str] = &[
    "title",
    "description",
    "venue_id",
    "starts_at",
    "ends_at",
    "capacity",
    "tags",
    "name",
    "lat",
    "lon",
    "address",
    "email",
    "password",
    "display_name",
    "interests",
    "home",
    "user_id",
];

/// Values that have broken parsers before: edges of numbers, dates far
/// away, text with controls and direction overrides, ids of the wrong kind.
fn hostile_scalar(venue: uuid::Uuid) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(u64::MAX)),
            Just(json!(1e308)),
            Just(json!(-0.0)),
            Just(json!(90.000001)),
            Just(json!(-180.5)),
        ],
        Just(json!(venue)),
        Just(json!(uuid::Uuid::nil())),
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".prop_map(Value::from),
        (-300_000i64..300_000, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| json!(format!("{y:+07}-{m:02}-{d:02}T20:00:00Z"))),
        (2020i32..2040, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| json!(format!("{y}-{m:02}-{d:02}T20:00:00+02:00"))),
        "\\PC{0,40}".prop_map(Value::from),
        ".{0,12}[\u{0}-\u{1f}\u{202e}\u{2066}\u{200b}\u{feff}].{0,12}".prop_map(Value::from),
        (1usize..5000).prop_map(|n| json!("x".repeat(n))),
        "[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,3}".prop_map(Value::from),
    ]
}

fn hostile_value(venue: uuid::Uuid) -> impl Strategy<Value = Value> {
    hostile_scalar(venue).prop_recursive(2, 16, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![Just("lat".to_owned()), Just("lon".to_owned()), ".{0,6}"],
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: raw bytes, JSON cut short, or an object of known fields.
fn body(venue: uuid::Uuid) -> impl Strategy<Value = Vec<u8>> {
    let object = || {
        prop::collection::btree_map(
            prop_oneof![
                9 => prop::sample::select(FIELDS).prop_map(str::to_owned),
                1 => ".{0,10}",
            ],
            hostile_value(venue),
            0..8,
        )
        .prop_map(|m| {
            Value::Object(m.into_iter().collect())
                .to_string()
                .into_bytes()
        })
    };
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..600),
        6 => object(),
        1 => (object(), any::<prop::sample::Index>()).prop_map(|(bytes, cut)| {
            bytes[..cut.index(bytes.len().max(1)).min(bytes.len())].to_vec()
        }),
        1 => hostile_value(venue).prop_map(|v| v.to_string().into_bytes()),
    ]
}

fn cases() -> u32 {
    std::env::var("TURNOUT_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

#[actix_web::test]
async fn write_endpoints_answer_any_body_without_a_server_error() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.user();
    let venue = app.venue(&owner).await;
    let event = app.published_event(&owner, 5).await;
    let member: User = app.register("fuzz@example.com").await;
    let endpoints = [
        (Method::POST, "/v1/auth/register".to_owned(), None),
        (Method::POST, "/v1/auth/login".to_owned(), None),
        (Method::PATCH, "/v1/me".to_owned(), Some(&member)),
        (Method::POST, "/v1/venues".to_owned(), Some(&owner)),
        (
            Method::POST,
            format!("/v1/venues/{venue}/organizers"),
            Some(&owner),
        ),
        (Method::POST, "/v1/events".to_owned(), Some(&owner)),
        (Method::PATCH, format!("/v1/events/{event}"), Some(&owner)),
    ];

    let mut runner = TestRunner::new(Config {
        cases: cases(),
        ..Config::default()
    });
    let strategy = body(venue);
    for (method, path, user) in &endpoints {
        let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
        for _ in 0..cases() {
            let bytes = strategy.new_tree(&mut runner).unwrap().current();
            let request = app.request(method.clone(), path);
            let request = match user {
                Some(user) => request.bearer_auth(&user.token),
                None => request,
            };
            let response = request
                .header("content-type", "application/json")
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            assert!(
                status.is_success() || status.is_client_error(),
                "{method} {path} answered {status} to {shown:?}"
            );
            if status.is_client_error() && status != StatusCode::METHOD_NOT_ALLOWED {
                let error: Value = response.json().await.unwrap_or_else(|e| {
                    panic!("{method} {path} {status} to {shown:?}: no JSON error body: {e}")
                });
                assert!(
                    error["error"]["code"].is_string(),
                    "{method} {path} {status} to {shown:?}: {error}"
                );
                assert_no_leak_but_echo(&error, &shown);
            }
            *statuses.entry(status.as_u16()).or_default() += 1;
        }
        // Some bodies must get past the parser, or the fuzzing is shallow.
        assert!(
            statuses.keys().any(|s| *s != 400),
            "{method} {path}: only 400s ({statuses:?})"
        );
        eprintln!("{method} {path}: {statuses:?}");
    }

    // Nothing the fuzzing sent broke the event or its venue.
    let card = app.event(event).await;
    assert_eq!(card["id"], json!(event), "{card}");
    assert!(card["capacity"].as_i64().unwrap() >= 1, "{card}");
    assert_eq!(card["status"], "published", "{card}");
}

/// A client frame: raw bytes (as text or binary), or an object shaped like
/// the protocol's frames with hostile values.
fn frame(event: uuid::Uuid) -> impl Strategy<Value = tokio_tungstenite::tungstenite::Message> {
    use tokio_tungstenite::tungstenite::Message;
    let shaped = (
        prop::sample::select(&["subscribe", "unsubscribe", "auth", "ping", "dance"][..]),
        prop_oneof![
            Just(json!(format!("event:{event}"))),
            Just(json!("feed?near=52.37,4.89,2")),
            "(event|venue|feed|recs)[:?][-a-z0-9=.,&]{0,40}".prop_map(Value::from),
            hostile_value(event),
        ],
        hostile_value(event),
        hostile_value(event),
    )
        .prop_map(|(kind, channel, since, token)| {
            json!({ "type": kind, "channel": channel, "since": since, "token": token })
        });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| Message::text(String::from_utf8_lossy(&b).into_owned())),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Message::binary),
        6 => shaped.prop_map(|v| Message::text(v.to_string())),
    ]
}

/// Every WebSocket frame a client can send is answered with protocol frames
/// or a policy close, and the server goes on serving everyone else.
#[actix_web::test]
async fn websocket_frames_of_any_shape_break_nothing() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = crate::helpers::spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.user();
    let event = app.published_event(&owner, 5).await;
    let mut runner = TestRunner::new(Config::default());
    let strategy = frame(event);
    let mut socket = crate::realtime::connect(&app).await;
    let (mut answers, mut closes) = (0, 0);
    for _ in 0..cases() {
        let sent = strategy.new_tree(&mut runner).unwrap().current();
        let shown = format!("{sent:?}");
        let open = socket.send(sent).await.is_ok()
            && socket
                .send(Message::text(json!({ "type": "ping" }).to_string()))
                .await
                .is_ok();
        // Read up to the pong that answers our ping: everything before it
        // answers the fuzzed frame.
        let mut closed = !open;
        while !closed {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer within 10 s after {shown}"));
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let answer: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{text:?} after {shown}: not JSON: {e}"));
                    let kind = answer["type"].as_str().unwrap_or_else(|| {
                        panic!("{answer} after {shown}: no type");
                    });
                    if kind == "error" {
                        assert!(answer["code"].is_string(), "{answer} after {shown}");
                        assert_no_leak_but_echo(&answer, &shown);
                    }
                    answers += 1;
                    if kind == "pong" {
                        break;
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    let code = close.map(|c| u16::from(c.code));
                    assert!(
                        matches!(code, Some(1008 | 1003 | 1009 | 4000..=4999)),
                        "closed with {code:?} after {shown}"
                    );
                    closed = true;
                }
                Some(Ok(_)) => {}
                // Every frame sent is a whole text or binary message: a
                // session that ends says why, with a close frame first.
                None | Some(Err(_)) => {
                    panic!("the connection dropped without a close frame after {shown}: {frame:?}")
                }
            }
        }
        if closed {
            closes += 1;
            socket = crate::realtime::connect(&app).await;
        }
    }
    eprintln!("{answers} answers, {closes} closes");

    let health = app.request(Method::GET, "/health").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let mut fresh = crate::realtime::connect(&app).await;
    let snapshot = crate::realtime::subscribe(&mut fresh, &format!("event:{event}"), None).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
}
