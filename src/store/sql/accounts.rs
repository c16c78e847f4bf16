//! Accounts: sign-up, login lookups, profiles and roles.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::types::Json;
use sqlx::{Postgres, Sqlite};
use turnout_actors::domain::UserId;
use turnout_actors::store::StoreError;

use super::SqlStore;
use crate::store::{Accounts, UserRecord, micros, unavailable};

macro_rules! impl_accounts {
    ($db:ty) => {
        #[async_trait]
        impl Accounts for SqlStore<$db> {
            async fn create_user(&self, u: &UserRecord) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "INSERT INTO users (id, email, password_hash, display_name, interests, \
                     home_lat, home_lon, role, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (email) DO NOTHING",
                )
                .bind(u.id)
                .bind(&u.email)
                .bind(&u.password_hash)
                .bind(&u.display_name)
                .bind(&u.interests)
                .bind(u.home_lat)
                .bind(u.home_lon)
                .bind(u.role.as_str())
                .bind(u.created_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT id, email, password_hash, display_name, interests, home_lat, home_lon, \
                     role, created_at FROM users WHERE email = $1",
                )
                .bind(email)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT id, email, password_hash, display_name, interests, home_lat, home_lon, \
                     role, created_at FROM users WHERE id = $1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
            }

            async fn update_profile(
                &self,
                id: UserId,
                interests: &[String],
                home: Option<(f64, f64)>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE users SET interests = $1, home_lat = $2, home_lon = $3, updated_at = $4 \
                     WHERE id = $5",
                )
                .bind(Json(interests.to_vec()))
                .bind(home.map(|h| h.0))
                .bind(home.map(|h| h.1))
                .bind(micros(Utc::now()))
                .bind(id.as_uuid())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn set_role(&self, email: &str, role: crate::auth::Role) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE email = $3")
                    .bind(role.as_str())
                    .bind(micros(Utc::now()))
                    .bind(email)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

impl_accounts!(Sqlite);
impl_accounts!(Postgres);
