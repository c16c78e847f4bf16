//! Typed domain values: each can only hold valid data, so code that receives
//! one never re-checks it. Parse at the edge (`parse`/`TryFrom`), trust inside.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a raw value was refused; the message is fit to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValueError {
    pub field: &'static str,
    pub reason: String,
}

impl ValueError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh id; v7 so ids sort by creation time and index well.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies an event (a happening in the city), and its actor and stream.
    EventId
);
uuid_id!(
    /// Identifies a person: a local account or the subject of a trusted token.
    UserId
);
uuid_id!(
    /// Identifies a venue.
    VenueId
);

/// How many people may be active in an event at once: 1 to [`Capacity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Capacity(u32);

impl Capacity {
    /// Larger than any stadium; anything above is a typo or an attack.
    pub const MAX: u32 = 1_000_000;

    pub fn parse(raw: i64) -> Result<Self, ValueError> {
        if raw < 1 {
            return Err(ValueError::new("capacity", "must be at least 1"));
        }
        if raw > i64::from(Self::MAX) {
            return Err(ValueError::new(
                "capacity",
                format!("must be at most {}", Self::MAX),
            ));
        }
        Ok(Self(raw as u32))
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<i64> for Capacity {
    type Error = ValueError;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Capacity> for i64 {
    fn from(c: Capacity) -> Self {
        i64::from(c.0)
    }
}

/// Defines a bounded whole number parsed from a client's `i64`.
macro_rules! bounded_count {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:literal ..= $max:literal, default $default:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "i64", into = "i64")]
        pub struct $name(u32);

        impl $name {
            pub const MIN: u32 = $min;
            pub const MAX: u32 = $max;

            pub fn parse(raw: i64) -> Result<Self, ValueError> {
                if raw < i64::from(Self::MIN) || raw > i64::from(Self::MAX) {
                    return Err(ValueError::new(
                        $field,
                        format!("must be from {} to {}", Self::MIN, Self::MAX),
                    ));
                }
                Ok(Self(raw as u32))
            }

            pub fn get(self) -> usize {
                self.0 as usize
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self($default)
            }
        }

        impl TryFrom<i64> for $name {
            type Error = ValueError;
            fn try_from(raw: i64) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for i64 {
            fn from(n: $name) -> Self {
                i64::from(n.0)
            }
        }
    };
}

bounded_count!(
    /// How many places one party asks for, together: 1 to 20. Also the
    /// largest party an event takes (`max_party`).
    Seats, "seats", 1 ..= 20, default 1
);

bounded_count!(
    /// How long a place offered to a waiting party is held for it, in
    /// seconds: a minute to a week, half an hour unless the event says.
    OfferHold, "offer_hold_secs", 60 ..= 604_800, default 1_800
);

impl OfferHold {
    pub fn duration(self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.0))
    }
}

/// Defines a trimmed text value with a character limit.
/// Characters that change how text around them is shown without being seen:
/// bidirectional embeddings, overrides and isolates, zero-width characters,
/// invisible operators and the byte-order mark. In a title on a venue's
/// screen they spoof ("free beer" reading backwards into something else).
pub fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}'                 // Arabic letter mark
        | '\u{200B}'..='\u{200F}'   // zero-width space, joiners, LRM, RLM
        | '\u{202A}'..='\u{202E}'   // embeddings and overrides
        | '\u{2060}'..='\u{2064}'   // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}'   // isolates
        | '\u{FEFF}'                // byte-order mark
    )
}

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: impl AsRef<str>) -> Result<Self, ValueError> {
                let text = raw.as_ref().trim();
                if text.is_empty() {
                    return Err(ValueError::new($field, "must not be empty"));
                }
                if text.chars().count() > Self::MAX_CHARS {
                    return Err(ValueError::new(
                        $field,
                        format!("must be at most {} characters", Self::MAX_CHARS),
                    ));
                }
                if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    return Err(ValueError::new($field, "must not contain control characters"));
                }
                if text.chars().any(is_invisible_format) {
                    return Err(ValueError::new(
                        $field,
                        "must not contain invisible or direction-changing characters",
                    ));
                }
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Stored text (a fact, a snapshot) was checked when it was
        /// written; a rule tightened since must not make it unreadable.
        impl From<String> for $name {
            fn from(stored: String) -> Self {
                Self(stored)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

bounded_text!(
    /// An event's title.
    Title,
    "title",
    200
);
bounded_text!(
    /// An event's free-text description.
    Description,
    "description",
    5_000
);

/// A topic label such as `jazz` or `open-air`: lowercase letters, digits and
/// dashes, so tags compare exactly and need no escaping anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    pub const MAX_CHARS: usize = 40;
    /// More tags than this on one event is noise.
    pub const MAX_PER_EVENT: usize = 20;

    pub fn parse(raw: impl AsRef<str>) -> Result<Self, ValueError> {
        let tag = raw.as_ref().trim().to_lowercase();
        if tag.is_empty() || tag.len() > Self::MAX_CHARS {
            return Err(ValueError::new(
                "tags",
                format!("each tag must be 1 to {} characters", Self::MAX_CHARS),
            ));
        }
        if !tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ValueError::new(
                "tags",
                format!("tag {tag:?} may hold only letters, digits and '-'"),
            ));
        }
        Ok(Self(tag))
    }

    /// Parses a list, dropping duplicates and keeping first-seen order.
    pub fn parse_list<S: AsRef<str>>(raw: &[S]) -> Result<Vec<Self>, ValueError> {
        if raw.len() > Self::MAX_PER_EVENT {
            return Err(ValueError::new(
                "tags",
                format!("at most {} tags", Self::MAX_PER_EVENT),
            ));
        }
        let mut tags: Vec<Self> = Vec::with_capacity(raw.len());
        for r in raw {
            let tag = Self::parse(r)?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(tags)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tag {
    type Error = ValueError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<Tag> for String {
    fn from(t: Tag) -> Self {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_refuses_zero_negative_and_absurd() {
        assert!(Capacity::parse(0).is_err());
        assert!(Capacity::parse(-5).is_err());
        assert!(Capacity::parse(i64::from(Capacity::MAX) + 1).is_err());
        assert_eq!(Capacity::parse(50).unwrap().get(), 50);
    }

    #[test]
    fn capacity_cannot_be_deserialized_invalid() {
        assert!(serde_json::from_str::<Capacity>("0").is_err());
        assert!(serde_json::from_str::<Capacity>("12").is_ok());
    }

    #[test]
    fn title_is_trimmed_and_bounded() {
        assert_eq!(
            Title::parse("  Jazz night ").unwrap().as_str(),
            "Jazz night"
        );
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse("x".repeat(201)).is_err());
        assert!(Title::parse("bad\u{0}byte").is_err());
        for spoof in [
            "free \u{202E}reeb",
            "a\u{200B}b",
            "\u{2067}x\u{2069}",
            "\u{FEFF}bom",
        ] {
            assert!(Title::parse(spoof).is_err(), "{spoof:?}");
            assert!(Description::parse(spoof).is_err(), "{spoof:?}");
        }
        assert!(
            Title::parse("Café ☕ جاز").is_ok(),
            "scripts and symbols are fine"
        );
    }

    #[test]
    fn tags_are_normalised_and_deduplicated() {
        let tags = Tag::parse_list(&["Jazz", "jazz", "open-air"]).unwrap();
        assert_eq!(
            tags.iter().map(Tag::as_str).collect::<Vec<_>>(),
            ["jazz", "open-air"]
        );
        assert!(Tag::parse("no spaces").is_err());
        assert!(Tag::parse("").is_err());
    }
}
