//! How facts are written to and read from the event log. Each stored fact
//! carries the schema version it was written with; reading upcasts old shapes
//! step by step to the current one, so a fact type can change shape without
//! rewriting history.

use serde_json::Value;

use super::event::DomainEvent;
use super::waitlist::WaitlistPolicy;

/// A fact as it sits in the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stored {event_type} v{version} is newer than this build understands (v{current})")]
    FromTheFuture {
        event_type: String,
        version: i32,
        current: i32,
    },
    #[error("stored {event_type} v{version} cannot be upcast: {reason}")]
    Upcast {
        event_type: String,
        version: i32,
        reason: String,
    },
    #[error("stored {event_type} does not decode: {source}")]
    Shape {
        event_type: String,
        source: serde_json::Error,
    },
}

/// The schema version each fact type is written with today. Bump it when a
/// type changes shape, and add the step from the old shape to `upcast_step`.
pub fn current_schema_version(event_type: &str) -> i32 {
    match event_type {
        // v2: `details.tags` became a list; v1 wrote a comma-separated string.
        // v3 (created): the waitlist policy; before it, today's default.
        "created" => 3,
        "details_changed" => 2,
        // v2: parties — `seats`; before them, everyone came alone.
        "joined" | "left" | "promoted" => 2,
        _ => 1,
    }
}

impl StoredEvent {
    pub fn encode(event: &DomainEvent) -> Self {
        let event_type = event.kind();
        Self {
            event_type: event_type.to_owned(),
            schema_version: current_schema_version(event_type),
            payload: serde_json::to_value(event).expect("domain events always serialise"),
        }
    }

    /// The JSON text of `encode`'s payload, serialised straight from the
    /// event: what a log row stores, without building a tree first.
    pub fn encode_text(event: &DomainEvent) -> String {
        serde_json::to_string(event).expect("domain events always serialise")
    }

    pub fn decode(self) -> Result<DomainEvent, DecodeError> {
        let current = current_schema_version(&self.event_type);
        if self.schema_version > current {
            return Err(DecodeError::FromTheFuture {
                event_type: self.event_type,
                version: self.schema_version,
                current,
            });
        }
        let mut payload = self.payload;
        let mut version = self.schema_version;
        while version < current {
            payload = upcast_step(&self.event_type, version, payload).map_err(|reason| {
                DecodeError::Upcast {
                    event_type: self.event_type.clone(),
                    version,
                    reason,
                }
            })?;
            version += 1;
        }
        serde_json::from_value(payload).map_err(|source| DecodeError::Shape {
            event_type: self.event_type,
            source,
        })
    }
}

/// Adds a field an older shape lacked.
fn insert(payload: &mut Value, field: &str, value: Value) -> Result<(), String> {
    payload
        .as_object_mut()
        .ok_or("the payload is not an object")?
        .insert(field.into(), value);
    Ok(())
}

/// Moves one payload from `version` to `version + 1`.
fn upcast_step(event_type: &str, version: i32, mut payload: Value) -> Result<Value, String> {
    match (event_type, version) {
        ("created" | "details_changed", 1) => {
            let details = payload
                .get_mut("details")
                .and_then(Value::as_object_mut)
                .ok_or("missing details")?;
            let tags: Vec<Value> = match details.get("tags") {
                Some(Value::String(s)) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Value::String(t.to_owned()))
                    .collect(),
                Some(Value::Null) | None => Vec::new(),
                Some(other) => return Err(format!("tags is neither a string nor null: {other}")),
            };
            details.insert("tags".into(), Value::Array(tags));
            Ok(payload)
        }
        ("created", 2) => {
            let policy =
                serde_json::to_value(WaitlistPolicy::default()).expect("a policy serialises");
            insert(&mut payload, "policy", policy)?;
            Ok(payload)
        }
        ("joined" | "left" | "promoted", 1) => {
            insert(&mut payload, "seats", Value::from(1))?;
            Ok(payload)
        }
        _ => Err(format!("no upcaster from v{version}")),
    }
}
