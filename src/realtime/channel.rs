//! Channel names: what a client subscribes to.

use std::fmt;

use turnout_actors::domain::{EventId, GeoBox, GeoPoint, Tag, VenueId, haversine_km};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// One event's live counts and status.
    Event(EventId),
    /// A venue's upcoming published events: what its kiosk shows.
    Venue(VenueId),
    /// City-wide: events published, changed, filling up or cancelled;
    /// optionally only those with a tag, or at venues within a radius.
    Feed {
        tag: Option<Tag>,
        near: Option<Near>,
    },
}

/// Radii a feed may have, in km: a requested radius is rounded up to the next.
const RADII_KM: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// Centres are rounded to this grid, in micro-degrees (0.01°, about 1 km).
const GRID_E6: f64 = 10_000.0;

/// A circle on the map, kept in whole micro-degrees and metres so that
/// channel names compare and hash exactly. Centres snap to a 0.01° grid and
/// radii up to one of [`RADII_KM`]: each distinct circle is a hub holding
/// its own listing, so a client must not be able to make up thousands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Near {
    lat_e6: i64,
    lon_e6: i64,
    radius_m: u32,
}

impl Near {
    fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(',').map(|p| p.trim().parse::<f64>());
        let (lat, lon, km) = (
            parts.next()?.ok()?,
            parts.next()?.ok()?,
            parts.next()?.ok()?,
        );
        if parts.next().is_some()
            || !(-90.0..=90.0).contains(&lat)
            || !(-180.0..=180.0).contains(&lon)
        {
            return None;
        }
        if !(0.1..=500.0).contains(&km) {
            return None;
        }
        let km = RADII_KM.into_iter().find(|r| *r >= km)?;
        let snap = |degrees: f64| ((degrees * 1e6 / GRID_E6).round() * GRID_E6) as i64;
        Some(Self {
            lat_e6: snap(lat),
            lon_e6: snap(lon),
            radius_m: (km * 1000.0).round() as u32,
        })
    }

    fn centre(&self) -> GeoPoint {
        GeoPoint {
            lat: self.lat_e6 as f64 / 1e6,
            lon: self.lon_e6 as f64 / 1e6,
        }
    }

    pub fn contains(&self, point: GeoPoint) -> bool {
        haversine_km(self.centre(), point) * 1000.0 <= f64::from(self.radius_m)
    }

    /// A box holding the circle: what the database selects venues by.
    pub fn bounds(&self) -> GeoBox {
        GeoBox::around(self.centre(), f64::from(self.radius_m) / 1000.0)
    }
}

impl fmt::Display for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{}",
            self.lat_e6 as f64 / 1e6,
            self.lon_e6 as f64 / 1e6,
            f64::from(self.radius_m) / 1000.0
        )
    }
}

impl Channel {
    pub fn parse(name: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown channel {name:?}: expected event:<id>, venue:<id>, feed, feed?tag=<tag>, feed?near=<lat>,<lon>,<km>, me or recs"
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
            return Ok(Channel::Feed {
                tag: None,
                near: None,
            });
        }
        let Some(query) = name.strip_prefix("feed?") else {
            return Err(bad());
        };
        let (mut tag, mut near) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("tag", value)) if tag.is_none() => {
                    tag = Some(Tag::parse(value).map_err(|e| e.to_string())?)
                }
                Some(("near", value)) if near.is_none() => {
                    near = Some(
                        Near::parse(value)
                            .ok_or("near must be <lat>,<lon>,<km> with 0.1 <= km <= 500")?,
                    )
                }
                _ => return Err(bad()),
            }
        }
        Ok(Channel::Feed { tag, near })
    }

    /// A feed narrowed by tag or place: one of many a client may choose,
    /// each a hub of its own (`realtime.max_filtered_feeds_per_ip`).
    pub fn is_filtered_feed(&self) -> bool {
        matches!(self, Channel::Feed { tag, near } if tag.is_some() || near.is_some())
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
            Channel::Feed {
                tag: None,
                near: None,
            } => f.write_str("feed"),
            Channel::Feed { tag, near } => {
                f.write_str("feed?")?;
                if let Some(tag) = tag {
                    write!(f, "tag={}", tag.as_str())?;
                }
                if let Some(near) = near {
                    write!(f, "{}near={near}", if tag.is_some() { "&" } else { "" })?;
                }
                Ok(())
            }
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
            "feed?near=52.37,4.89,5",
            "feed?tag=jazz&near=52.37,4.89,0.5",
        ] {
            assert_eq!(Channel::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn circles_snap_to_a_grid_and_a_few_radii() {
        for (asked, canonical) in [
            ("feed?near=52.3712,4.8888,3", "feed?near=52.37,4.89,5"),
            ("feed?near=52.368,4.893,5", "feed?near=52.37,4.89,5"),
            (
                "feed?near=-33.8688,151.2093,0.1",
                "feed?near=-33.87,151.21,0.5",
            ),
            ("feed?near=0,0,499", "feed?near=0,0,500"),
        ] {
            assert_eq!(Channel::parse(asked).unwrap().to_string(), canonical);
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
            "feed?near=91,0,5",
            "feed?near=52,4",
            "feed?near=52,4,0",
            "feed?tag=a&tag=b",
            "feed?colour=red",
        ] {
            assert!(Channel::parse(name).is_err(), "{name}");
        }
    }
}

#[cfg(test)]
mod near_tests {
    use super::*;

    #[test]
    fn tag_and_radius_combine() {
        assert!(Channel::parse("feed?tag=jazz&near=52.37,4.89,2.5").is_ok());
    }

    #[test]
    fn a_circle_contains_what_is_inside_it() {
        let Channel::Feed {
            near: Some(near), ..
        } = Channel::parse("feed?near=52.3676,4.9041,10").unwrap()
        else {
            panic!("a near feed");
        };
        assert!(near.contains(GeoPoint {
            lat: 52.37,
            lon: 4.89
        }));
        assert!(
            !near.contains(GeoPoint {
                lat: 51.9244,
                lon: 4.4777
            }),
            "Rotterdam is 57 km away"
        );
    }
}
