//! The frames of protocol version 1: JSON text, each with a `type`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const VERSION: u8 = 1;

/// Where a subscriber stands in a channel's stream of updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        channel: String,
        since: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    /// Secret: a frame printed for a log line shows no token.
    Auth {
        token: secrecy::SecretString,
    },
    /// A struct variant, so that unknown fields are refused here too.
    Ping {},
}

/// A snapshot or an update, serialised straight from the data: no
/// intermediate JSON tree per frame.
#[derive(Serialize)]
struct ChannelFrame<'a, T: Serialize> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    /// For an update caused by a commit: when it committed, so that a client
    /// can tell how fresh it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    committed_at: Option<DateTime<Utc>>,
    data: &'a T,
}

fn channel_frame<T: Serialize>(
    kind: &'static str,
    channel: &str,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
    committed_at: Option<DateTime<Utc>>,
    data: &T,
) -> String {
    serde_json::to_string(&ChannelFrame {
        v: VERSION,
        kind,
        channel,
        epoch,
        offset,
        recovered,
        committed_at,
        data,
    })
    .expect("frames serialise")
}

/// Reads a client's frame; the only way frames are parsed.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, serde_json::Error> {
    serde_json::from_str(text)
}

pub fn snapshot<T: Serialize>(
    channel: &str,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
    data: &T,
) -> String {
    channel_frame("snapshot", channel, epoch, offset, recovered, None, data)
}

/// An update; `committed_at` when a commit caused it.
pub fn update<T: Serialize>(
    channel: &str,
    epoch: &str,
    offset: u64,
    committed_at: Option<DateTime<Utc>>,
    data: &T,
) -> String {
    channel_frame("update", channel, epoch, offset, None, committed_at, data)
}

/// A resume that worked: the missed updates follow, from `offset + 1`.
pub fn resumed(channel: &str, epoch: &str, offset: u64) -> String {
    json!({ "v": VERSION, "type": "resumed", "channel": channel, "epoch": epoch, "offset": offset, "recovered": true })
        .to_string()
}

pub fn unsubscribed(channel: &str) -> String {
    json!({ "v": VERSION, "type": "unsubscribed", "channel": channel }).to_string()
}

pub fn authenticated(user_id: &str) -> String {
    json!({ "v": VERSION, "type": "authenticated", "user_id": user_id }).to_string()
}

pub fn pong() -> String {
    json!({ "v": VERSION, "type": "pong" }).to_string()
}

pub fn error(code: &str, message: &str) -> String {
    json!({ "v": VERSION, "type": "error", "code": code, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_strictly() {
        assert!(matches!(
            serde_json::from_str(
                r#"{"type":"subscribe","channel":"feed","since":{"epoch":"a1","offset":3}}"#
            ),
            Ok(ClientFrame::Subscribe {
                since: Some(Position { offset: 3, .. }),
                ..
            })
        ));
        assert!(matches!(
            serde_json::from_str(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping {})
        ));
        for bad in [
            r#"{"type":"subscribe"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"ping","x":1}"#,
            "[]",
            "{",
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_auth_frame_printed_shows_no_token() {
        let frame = r#"{"type":"auth","token":"eyJ.secret-token.sig"}"#;
        let parsed = parse_client_frame(frame).unwrap();
        assert!(!format!("{parsed:?}").contains("secret-token"));
        let raw = crate::realtime::inbound::Incoming::Text(frame.into());
        assert!(!format!("{raw:?}").contains("secret-token"));
    }
}
