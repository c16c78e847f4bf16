//! The read models' queries: events, listings, rosters and a user's joins.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Sqlite};
use turnout_actors::domain::{EventId, MemberStatus, StoredEvent, UserId};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use super::{CHUNK, Dialect, EVENT_COLUMNS, POSITION, SqlStore, live_statuses};
use crate::store::{
    EventFilter, EventReads, EventRecord, MembershipRecord, OffersDue, Place, micros, unavailable,
};

/// The start of a read of `user`'s places, each with its event's version:
/// the statement's `WHERE` goes on from there.
fn places_of<DB>(user: UserId) -> QueryBuilder<DB>
where
    DB: sqlx::Database,
    for<'t> Uuid: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let mut q = QueryBuilder::new(
        "SELECT j.event_id, j.user_id, j.status, j.order_key, j.seats, j.offer_expires_at, \
         j.joined_at, ",
    );
    q.push(POSITION)
        .push(
            " AS position, e.version FROM joins j JOIN events e ON e.id = j.event_id \
             WHERE j.user_id = ",
        )
        .push_bind(user.as_uuid());
    q
}

/// Hands each event its tags from `(event, tag)` rows, each event's in
/// byte order: sorted here, not by the database, whose collation differs
/// between the backends (Postgres's locale ignores a hyphen, SQLite's
/// `BINARY` does not).
fn give_tags(events: &mut [EventRecord], rows: Vec<(Uuid, String)>) {
    let mut by_event: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (id, tag) in rows {
        by_event.entry(id).or_default().push(tag);
    }
    for e in events.iter_mut() {
        e.tags = by_event.remove(&e.id).unwrap_or_default();
        e.tags.sort_unstable();
    }
}

macro_rules! impl_reads {
    ($db:ty) => {
        impl SqlStore<$db> {
            async fn tags_for(&self, events: &mut [EventRecord]) -> Result<(), StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<$db>::new("SELECT event_id, tag FROM event_tags WHERE event_id IN (");
                let mut ids = q.separated(", ");
                for e in events.iter() {
                    ids.push_bind(e.id);
                }
                q.push(")");
                let rows: Vec<(Uuid, String)> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                give_tags(events, rows);
                Ok(())
            }
        }

        #[async_trait]
        impl EventReads for SqlStore<$db> {
            async fn event(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS).push(" FROM events e WHERE e.id = ").push_bind(id.as_uuid());
                let found: Option<EventRecord> =
                    q.build_query_as().fetch_optional(&self.pool).await.map_err(unavailable)?;
                let mut found: Vec<EventRecord> = found.into_iter().collect();
                self.tags_for(&mut found).await?;
                Ok(found.pop())
            }

            async fn upcoming_events_owned(
                &self,
                owner: UserId,
                now: i64,
            ) -> Result<i64, StoreError> {
                sqlx::query_scalar(
                    "SELECT count(*) FROM events \
                     WHERE owner_id = $1 AND starts_at > $2 AND status <> 'cancelled'",
                )
                .bind(owner.as_uuid())
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn list_events(&self, f: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS).push(" FROM events e WHERE e.status = 'published'");
                if let Some(venue) = f.venue_id {
                    q.push(" AND e.venue_id = ").push_bind(venue.as_uuid());
                }
                if let Some(from) = f.from {
                    q.push(" AND e.starts_at >= ").push_bind(micros(from));
                }
                if let Some(to) = f.to {
                    q.push(" AND e.starts_at < ").push_bind(micros(to));
                }
                if let Some(area) = f.within {
                    q.push(" AND e.venue_id IN (SELECT v.id FROM venues v WHERE v.lat BETWEEN ")
                        .push_bind(area.south)
                        .push(" AND ")
                        .push_bind(area.north)
                        .push(" AND v.lon BETWEEN ")
                        .push_bind(area.west)
                        .push(" AND ")
                        .push_bind(area.east)
                        .push(")");
                }
                if let Some(tag) = &f.tag {
                    q.push(" AND EXISTS (SELECT 1 FROM event_tags t WHERE t.event_id = e.id AND t.tag = ")
                        .push_bind(tag.clone())
                        .push(")");
                }
                if let Some((starts_at, id)) = f.after {
                    q.push(" AND (e.starts_at > ")
                        .push_bind(starts_at)
                        .push(" OR (e.starts_at = ")
                        .push_bind(starts_at)
                        .push(" AND e.id > ")
                        .push_bind(id)
                        .push("))");
                }
                q.push(" ORDER BY e.starts_at, e.id LIMIT ").push_bind(f.limit);
                let mut events: Vec<EventRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                self.tags_for(&mut events).await?;
                Ok(events)
            }

            async fn attendees(
                &self,
                event: EventId,
                after: Option<(i64, i64)>,
                limit: i64,
            ) -> Result<Vec<MembershipRecord>, StoreError> {
                // The active, then those on offer, then the waiting, each in
                // order: one index range (`joins_roster`) per status, so a page
                // deep in a long roster reads its own rows, not the whole
                // membership sorted again. All from one snapshot: a waiter
                // promoted between two of the reads would be in neither
                // group (and behind the page's cursor for good), and the
                // count that numbers the waiters would be off by the moves.
                const GROUPS: [(i64, &str); 3] = [(0, "active"), (1, "offered"), (2, "waitlisted")];
                let mut snapshot = self
                    .pool
                    .begin_with(<$db as Dialect>::SNAPSHOT_READ)
                    .await
                    .map_err(unavailable)?;
                let mut rows: Vec<MembershipRecord> = Vec::new();
                for (group, status) in GROUPS {
                    let left = limit - rows.len() as i64;
                    let from = match after {
                        Some((after_group, _)) if group < after_group => continue,
                        Some((after_group, order_key)) if group == after_group => order_key,
                        _ => i64::MIN,
                    };
                    if left <= 0 {
                        break;
                    }
                    let page: Vec<MembershipRecord> = sqlx::query_as(
                        "SELECT event_id, user_id, status, order_key, seats, offer_expires_at, \
                         joined_at, CAST(NULL AS BIGINT) AS position FROM joins \
                         WHERE event_id = $1 AND status = $2 AND order_key > $3 \
                         ORDER BY order_key LIMIT $4",
                    )
                    .bind(event.as_uuid())
                    .bind(status)
                    .bind(from)
                    .bind(left)
                    .fetch_all(&mut *snapshot)
                    .await
                    .map_err(unavailable)?;
                    rows.extend(page);
                }
                // Waiters are listed in order, so one count numbers the page:
                // the first waiter here has as many ahead as precede it.
                if let Some(first) = rows.iter().position(|m| m.status == MemberStatus::Waitlisted) {
                    let (ahead,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM joins WHERE event_id = $1 AND status = 'waitlisted' \
                         AND order_key < $2",
                    )
                    .bind(event.as_uuid())
                    .bind(rows[first].order_key)
                    .fetch_one(&mut *snapshot)
                    .await
                    .map_err(unavailable)?;
                    for (i, m) in rows[first..].iter_mut().enumerate() {
                        m.position = Some(ahead + 1 + i as i64);
                    }
                }
                snapshot.commit().await.map_err(unavailable)?;
                Ok(rows)
            }

            async fn joins_of(
                &self,
                user: UserId,
                before: Option<(i64, Uuid)>,
                limit: i64,
            ) -> Result<Vec<(MembershipRecord, EventRecord)>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT j.event_id, j.user_id, j.status, j.order_key, j.seats, j.offer_expires_at, \
                     j.joined_at, ",
                );
                q.push(POSITION).push(" AS position FROM joins j WHERE j.user_id = ").push_bind(user.as_uuid());
                // What the caller ended themselves is gone from their list;
                // what ended for them (an expired offer, a cancelled event) stays.
                q.push(" AND j.status NOT IN ('left', 'declined')");
                if let Some((joined_at, event_id)) = before {
                    q.push(" AND (j.joined_at < ")
                        .push_bind(joined_at)
                        .push(" OR (j.joined_at = ")
                        .push_bind(joined_at)
                        .push(" AND j.event_id < ")
                        .push_bind(event_id)
                        .push("))");
                }
                q.push(" ORDER BY j.joined_at DESC, j.event_id DESC LIMIT ").push_bind(limit);
                let memberships: Vec<MembershipRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                if memberships.is_empty() {
                    return Ok(Vec::new());
                }
                // The cards in one query, not one per membership.
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS).push(" FROM events e WHERE e.id IN (");
                let mut ids = q.separated(", ");
                for m in &memberships {
                    ids.push_bind(m.event_id);
                }
                q.push(")");
                let mut events: Vec<EventRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                self.tags_for(&mut events).await?;
                let mut by_id: HashMap<Uuid, EventRecord> = events.into_iter().map(|e| (e.id, e)).collect();
                Ok(memberships
                    .into_iter()
                    .filter_map(|m| by_id.remove(&m.event_id).map(|e| (m, e)))
                    .collect())
            }

            async fn live_places_of(&self, user: UserId, limit: i64) -> Result<Vec<Place>, StoreError> {
                let mut q = places_of::<$db>(user);
                q.push(concat!(" AND j.status IN ", live_statuses!(),
                        " ORDER BY j.joined_at DESC, j.event_id DESC LIMIT "))
                    .push_bind(limit);
                q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)
            }

            async fn places_in(&self, user: UserId, events: &[EventId]) -> Result<Vec<Place>, StoreError> {
                let mut places = Vec::with_capacity(events.len());
                for chunk in events.chunks(CHUNK) {
                    let mut q = places_of::<$db>(user);
                    q.push(" AND j.event_id IN (");
                    let mut listed = q.separated(", ");
                    for event in chunk {
                        listed.push_bind(event.as_uuid());
                    }
                    q.push(")");
                    places.extend(
                        q.build_query_as::<Place>()
                            .fetch_all(&self.pool)
                            .await
                            .map_err(unavailable)?,
                    );
                }
                Ok(places)
            }

            async fn history(
                &self,
                event: EventId,
                after: i64,
                limit: i64,
            ) -> Result<Vec<(i64, StoredEvent)>, StoreError> {
                let rows: Vec<(i64, String, i64, Json<serde_json::Value>)> = sqlx::query_as(
                    "SELECT version, event_type, schema_version, payload FROM event_log \
                     WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3",
                )
                .bind(event.as_uuid())
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(rows
                    .into_iter()
                    .map(|(version, event_type, schema_version, Json(payload))| {
                        let stored = StoredEvent {
                            event_type,
                            schema_version: schema_version as i32,
                            payload,
                        };
                        (version, stored)
                    })
                    .collect())
            }

            async fn events_with_offers_due(
                &self,
                by: DateTime<Utc>,
                after: Option<OffersDue>,
                limit: i64,
            ) -> Result<Vec<OffersDue>, StoreError> {
                let after = after.map_or((i64::MIN, Uuid::nil()), |a| (a.due, a.event.as_uuid()));
                let due: Vec<(Uuid, i64)> = sqlx::query_as(
                    "SELECT event_id, MIN(offer_expires_at) AS due FROM joins \
                     WHERE status = 'offered' AND offer_expires_at <= $1 \
                     GROUP BY event_id HAVING (MIN(offer_expires_at), event_id) > ($2, $3) \
                     ORDER BY due, event_id LIMIT $4",
                )
                .bind(micros(by))
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.background)
                .await
                .map_err(unavailable)?;
                Ok(due
                    .into_iter()
                    .map(|(event, due)| OffersDue {
                        due,
                        event: EventId::from(event),
                    })
                    .collect())
            }

            async fn current_joins_of(
                &self,
                user: UserId,
                now: DateTime<Utc>,
                recent: i64,
            ) -> Result<Vec<Uuid>, StoreError> {
                let joins: Vec<(Uuid,)> = sqlx::query_as(concat!(
                    "SELECT j.event_id FROM joins j JOIN events e ON e.id = j.event_id \
                     WHERE j.user_id = $1 AND j.status IN ", live_statuses!(), " \
                     AND (e.starts_at >= $2 OR j.event_id IN (\
                       SELECT k.event_id FROM joins k WHERE k.user_id = $3 \
                       AND k.status IN ", live_statuses!(), " \
                       ORDER BY k.joined_at DESC, k.event_id DESC LIMIT $4)) \
                     ORDER BY j.joined_at, j.event_id"
                ))
                .bind(user.as_uuid())
                .bind(micros(now))
                .bind(user.as_uuid())
                .bind(recent)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(joins.into_iter().map(|(id,)| id).collect())
            }

            async fn events_starting_since(&self, since: DateTime<Utc>) -> Result<Vec<EventRecord>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT ");
                q.push(EVENT_COLUMNS)
                    .push(" FROM events e WHERE e.starts_at >= ")
                    .push_bind(micros(since));
                let mut events: Vec<EventRecord> =
                    q.build_query_as().fetch_all(&self.pool).await.map_err(unavailable)?;
                let tags: Vec<(Uuid, String)> = sqlx::query_as(
                    "SELECT t.event_id, t.tag FROM event_tags t JOIN events e ON e.id = t.event_id \
                     WHERE e.starts_at >= $1",
                )
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                give_tags(&mut events, tags);
                Ok(events)
            }

            async fn joins_of_events_starting_since(
                &self,
                since: DateTime<Utc>,
            ) -> Result<Vec<(Uuid, Uuid, i64)>, StoreError> {
                sqlx::query_as(
                    concat!("SELECT j.user_id, j.event_id, j.joined_at FROM joins j JOIN events e ON e.id = j.event_id \
                     WHERE e.starts_at >= $1 AND j.status IN ", live_statuses!(), " \
                     ORDER BY j.joined_at, j.event_id"),
                )
                .bind(micros(since))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)
            }
        }
    };
}

impl_reads!(Sqlite);
impl_reads!(Postgres);
