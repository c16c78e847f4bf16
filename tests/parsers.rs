//! Property tests of every parser that sees client input outside the HTTP
//! JSON bodies (those are fuzzed through the real server by schemathesis,
//! `.ci/conformance`): WebSocket frames and channel names, and the typed
//! values. Whatever the input: no panic, and what is accepted round-trips.

use proptest::prelude::*;
use serde_json::{Value, json};
use turnout::auth::{DisplayName, Email, Password};
use turnout::realtime::Channel;
use turnout_actors::domain::{Capacity, Description, Tag, Title};

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("channel".to_owned()),
                    Just("since".to_owned()),
                    Just("token".to_owned()),
                    Just("epoch".to_owned()),
                    Just("offset".to_owned()),
                    ".{0,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames shaped like the real ones, with arbitrary field values.
fn frame_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("subscribe"),
            Just("unsubscribe"),
            Just("auth"),
            Just("ping"),
            Just("dance"),
        ],
        json_value(),
        json_value(),
    )
        .prop_map(|(kind, a, b)| json!({ "type": kind, "channel": a, "since": b }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn websocket_frames_never_panic(text in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        ".{0,200}",
        json_value().prop_map(|v| v.to_string()),
        frame_like().prop_map(|v| v.to_string()),
    ]) {
        let _ = turnout::realtime::parse_client_frame(&text);
    }

    #[test]
    fn channel_names_never_panic_and_accepted_ones_round_trip(name in prop_oneof![
        ".{0,80}",
        "(event|venue):[0-9a-f-]{0,40}",
        "feed(\\?(tag=[a-z ]{0,12}|near=[-0-9.,]{0,24})(&(tag|near)=[-a-z0-9.,]{0,12})?)?",
    ]) {
        if let Ok(channel) = Channel::parse(&name) {
            let again = Channel::parse(&channel.to_string()).expect("a printed channel parses");
            prop_assert_eq!(again, channel);
        }
    }

    #[test]
    fn typed_values_never_panic(raw in ".{0,300}", n in any::<i64>()) {
        // What is accepted is trimmed and never empty.
        for value in [
            Tag::parse(&raw).map(|t| t.as_str().to_owned()),
            Title::parse(&raw).map(String::from),
            Description::parse(&raw).map(String::from),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert!(!value.is_empty() && value.trim() == value, "{:?}", value);
        }
        let _ = Email::parse(&raw);
        let _ = DisplayName::parse(&raw);
        let _ = Password::parse(raw.clone());
        if let Ok(capacity) = Capacity::try_from(n) {
            prop_assert!(n > 0 && i64::from(capacity) == n);
        }
    }
}
