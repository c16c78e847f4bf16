//! Recommendations in the server: settings, the store as the recommenders'
//! source, loading the catalog at start, and turning committed changes into
//! catalog updates. The ranking itself lives in `turnout_actors::recommend`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde::Deserialize;
use turnout_actors::domain::{EventId, GeoPoint, Tag, UserId, VenueId};
use turnout_actors::recommend::{
    Catalog, EventUpdate, ProfileSeed, RankSettings, RecommendSettings, RecommendationSource,
    Weights,
};
use turnout_actors::store::StoreError;

use crate::store::{Store, from_micros};

/// A user's past joins that feed their profile (besides every upcoming
/// one).
const PROFILE_JOINS: i64 = 500;

/// `[recommendations]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RecommendationsConfig {
    /// Events in each list pushed on the `recs` channel.
    pub list_len: usize,
    /// Extra events each live list keeps ranked, to absorb changes cheaply.
    pub spare: usize,
    pub debounce_ms: u64,
    pub refresh_secs: u64,
    /// A live list without subscribers is kept this long (for resumes).
    pub idle_secs: u64,
    /// Started events are remembered this long (co-attendance history).
    pub retention_days: i64,
    /// Only events starting within this many days are recommended.
    pub horizon_days: i64,
    /// "Near home" radius for gathering candidates.
    pub radius_km: f64,
    /// The city's offset from UTC, for parts of the day.
    pub utc_offset_minutes: i32,
}

impl RecommendationsConfig {
    pub fn settings(&self) -> RecommendSettings {
        RecommendSettings {
            rank: RankSettings {
                weights: Weights::default(),
                horizon_days: self.horizon_days,
                radius_km: self.radius_km,
                utc_offset_minutes: self.utc_offset_minutes,
                ..RankSettings::default()
            },
            list_len: self.list_len,
            spare: self.spare,
            debounce: Duration::from_millis(self.debounce_ms),
            refresh: Duration::from_secs(self.refresh_secs),
            idle: Duration::from_secs(self.idle_secs),
            retention: chrono::Duration::days(self.retention_days),
            ..RecommendSettings::default()
        }
    }
}

/// The store, as recommendations read it.
pub struct StoreSource(pub Arc<dyn Store>);

#[async_trait]
impl RecommendationSource for StoreSource {
    async fn profile(&self, user: UserId) -> Result<ProfileSeed, StoreError> {
        let record = self.0.user(user).await?;
        let joins = self
            .0
            .current_joins_of(user, crate::store::now(), PROFILE_JOINS)
            .await?;
        Ok(ProfileSeed {
            interests: record
                .as_ref()
                .map(|r| {
                    r.interests
                        .0
                        .iter()
                        .filter_map(|t| Tag::parse(t).ok())
                        .collect()
                })
                .unwrap_or_default(),
            home: record
                .and_then(|r| r.home_lat.zip(r.home_lon))
                .map(|(lat, lon)| GeoPoint { lat, lon }),
            joins: joins.into_iter().map(EventId::from).collect(),
        })
    }

    async fn venue(&self, venue: VenueId) -> Result<Option<GeoPoint>, StoreError> {
        Ok(self.0.venue(venue).await?.map(|v| GeoPoint {
            lat: v.lat,
            lon: v.lon,
        }))
    }
}

/// Builds the catalog from the read models: venues, events that started
/// within the retention window or are still to come, and their members in
/// join order (which also rebuilds heat and co-attendance).
pub async fn load_catalog(
    store: &dyn Store,
    settings: &RecommendSettings,
) -> Result<Catalog, StoreError> {
    let now = Utc::now();
    let since = now - settings.retention;
    let mut catalog = Catalog::default();
    for (id, lat, lon) in store.venue_locations().await? {
        catalog.venue_located(VenueId::from(id), GeoPoint { lat, lon });
    }
    let events = store.events_starting_since(since).await?;
    for e in &events {
        catalog.apply(&EventUpdate {
            id: EventId::from(e.id),
            owner: UserId::from(e.owner_id),
            title: e.title.clone(),
            venue: VenueId::from(e.venue_id),
            starts_at: from_micros(e.starts_at),
            tags: e.tags.iter().filter_map(|t| Tag::parse(t).ok()).collect(),
            lifecycle: e.status,
            capacity: e.capacity as u32,
            active: (e.active_count + e.offered_count) as u32,
            offered: e.offered_count as u32,
            waitlist: e.waitlist_count as u32,
            version: e.version as u64,
            joined: Vec::new(),
            left: Vec::new(),
            // When it was created stands in for when it was published (the
            // row keeps no publish time): `updated_at` moves with every
            // join, and would make the busiest events look just announced.
            at: from_micros(e.created_at),
        });
    }
    for (user, event, joined_at) in store.joins_of_events_starting_since(since).await? {
        catalog.joined(
            UserId::from(user),
            EventId::from(event),
            from_micros(joined_at),
        );
    }
    catalog.maintain(now, since);
    let (known, open) = catalog.len();
    tracing::info!(events = known, open, "recommendation catalog loaded");
    Ok(catalog)
}
