//! Channel names: what a client subscribes to.

use std::fmt;

use turnout_actors::domain::{EventId, Tag, VenueId};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// One event's live counts and status.
    Event(EventId),
    /// A venue's upcoming published events: what its kiosk shows.
    Venue(VenueId),
    /// City-wide: events published, changed, filling up or cancelled;
    /// optionally only those with a tag.
    Feed { tag: Option<Tag> },
}

impl Channel {
    pub fn parse(name: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown channel {name:?}: expected event:<id>, venue:<id>, feed or feed?tag=<tag>"
            )
        };
        if let Some(id) = name.strip_prefix("event:") {
            return id
                .parse()
                .map(|u: uuid::Uuid| Channel::Event(u.into()))
                .map_err(|_| bad());
        }
        if let Some(id) = name.strip_prefix("venue:") {
            return id
                .parse()
                .map(|u: uuid::Uuid| Channel::Venue(u.into()))
                .map_err(|_| bad());
        }
        if name == "feed" {
            return Ok(Channel::Feed { tag: None });
        }
        if let Some(tag) = name.strip_prefix("feed?tag=") {
            return Tag::parse(tag)
                .map(|t| Channel::Feed { tag: Some(t) })
                .map_err(|e| e.to_string());
        }
        Err(bad())
    }

    /// The label used in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Event(_) => "event",
            Channel::Venue(_) => "venue",
            Channel::Feed { .. } => "feed",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Event(id) => write!(f, "event:{id}"),
            Channel::Venue(id) => write!(f, "venue:{id}"),
            Channel::Feed { tag: None } => f.write_str("feed"),
            Channel::Feed { tag: Some(tag) } => write!(f, "feed?tag={}", tag.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "event:01a2069a-da0a-7681-9539-12485e50749c",
            "venue:01a2069a-d8e7-754d-b993-d3d04cb36f31",
            "feed",
            "feed?tag=jazz",
        ] {
            assert_eq!(Channel::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn bad_names_say_what_is_expected() {
        for name in [
            "",
            "event:",
            "event:42",
            "venue:x",
            "feeds",
            "feed?tag=no spaces",
            "user:me",
        ] {
            assert!(Channel::parse(name).is_err(), "{name}");
        }
    }
}
