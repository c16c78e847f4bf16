//! The frames of protocol version 1: JSON text, each with a `type`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
    Auth {
        token: String,
    },
    /// A struct variant, so that unknown fields are refused here too.
    Ping {},
}

pub fn snapshot(
    channel: &str,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
    data: &Value,
) -> String {
    let mut frame = json!({
        "v": VERSION, "type": "snapshot", "channel": channel,
        "epoch": epoch, "offset": offset, "data": data,
    });
    if let Some(recovered) = recovered {
        frame["recovered"] = json!(recovered);
    }
    frame.to_string()
}

pub fn update(channel: &str, epoch: &str, offset: u64, data: &Value) -> String {
    json!({ "v": VERSION, "type": "update", "channel": channel, "epoch": epoch, "offset": offset, "data": data })
        .to_string()
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
}
