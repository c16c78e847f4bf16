//! Venues and the organisers their owners name.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};
use turnout_actors::domain::{UserId, VenueId};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use super::SqlStore;
use crate::store::{VenueRecord, Venues, unavailable};

macro_rules! impl_venues {
    ($db:ty) => {
        #[async_trait]
        impl Venues for SqlStore<$db> {
            async fn venues_owned(&self, owner: UserId) -> Result<i64, StoreError> {
                sqlx::query_scalar("SELECT count(*) FROM venues WHERE owner_id = $1")
                    .bind(owner.as_uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)
            }

            async fn create_venue(&self, v: &VenueRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO venues (id, owner_id, name, lat, lon, address, time_zone, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(v.id)
                .bind(v.owner_id)
                .bind(&v.name)
                .bind(v.lat)
                .bind(v.lon)
                .bind(&v.address)
                .bind(&v.time_zone)
                .bind(v.created_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn venue(&self, id: VenueId) -> Result<Option<VenueRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT id, owner_id, name, lat, lon, address, time_zone, created_at \
                     FROM venues WHERE id = $1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn set_venue_time_zone(
                &self,
                id: VenueId,
                time_zone: Option<&str>,
            ) -> Result<bool, StoreError> {
                let set = sqlx::query("UPDATE venues SET time_zone = $1 WHERE id = $2")
                    .bind(time_zone)
                    .bind(id.as_uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(set.rows_affected() == 1)
            }

            async fn venue_locations(&self) -> Result<Vec<(Uuid, f64, f64)>, StoreError> {
                sqlx::query_as("SELECT id, lat, lon FROM venues")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)
            }

            async fn add_organizer(
                &self,
                venue: VenueId,
                user: UserId,
                at: i64,
            ) -> Result<(i64, bool), StoreError> {
                let added = sqlx::query(
                    "INSERT INTO venue_organizers (venue_id, user_id, added_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (venue_id, user_id) DO NOTHING",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .bind(at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                if added.rows_affected() == 1 {
                    return Ok((at, true));
                }
                // Named before (maybe by a request racing this one): theirs.
                let (first,): (i64,) = sqlx::query_as(
                    "SELECT added_at FROM venue_organizers WHERE venue_id = $1 AND user_id = $2",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok((first, false))
            }

            async fn remove_organizer(&self, venue: VenueId, user: UserId) -> Result<bool, StoreError> {
                let removed = sqlx::query(
                    "DELETE FROM venue_organizers WHERE venue_id = $1 AND user_id = $2",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(removed.rows_affected() == 1)
            }

            async fn organizers(&self, venue: VenueId) -> Result<Vec<(Uuid, i64)>, StoreError> {
                sqlx::query_as(
                    "SELECT user_id, added_at FROM venue_organizers WHERE venue_id = $1 \
                     ORDER BY added_at, user_id",
                )
                .bind(venue.as_uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn is_organizer(&self, venue: VenueId, user: UserId) -> Result<bool, StoreError> {
                let found: Option<(i64,)> = sqlx::query_as(
                    "SELECT added_at FROM venue_organizers WHERE venue_id = $1 AND user_id = $2",
                )
                .bind(venue.as_uuid())
                .bind(user.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(found.is_some())
            }
        }
    };
}

impl_venues!(Sqlite);
impl_venues!(Postgres);
