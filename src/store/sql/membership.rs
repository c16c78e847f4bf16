//! The cluster's membership: its shard count and its nodes' heartbeats.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use super::SqlStore;
use crate::store::{Membership, NodeRecord, unavailable};

macro_rules! impl_membership {
    ($db:ty) => {
        #[async_trait]
        impl Membership for SqlStore<$db> {
            async fn shard_count(&self, proposed: i64) -> Result<i64, StoreError> {
                sqlx::query(
                    "INSERT INTO cluster (id, shard_count) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                )
                .bind(proposed)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                let (stored,): (i64,) = sqlx::query_as("SELECT shard_count FROM cluster WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(stored)
            }

            async fn register_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO nodes (id, address, started_at, heartbeat_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
                     started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                )
                .bind(node.id)
                .bind(&node.address)
                .bind(node.started_at)
                .bind(node.heartbeat_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn heartbeat(&self, node: Uuid, now: i64) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE nodes SET heartbeat_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(node)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected() == 1)
            }

            async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
                sqlx::query_as("SELECT id, address, started_at, heartbeat_at FROM nodes ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)
            }

            async fn deregister_node(&self, node: Uuid) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM nodes WHERE id = $1")
                    .bind(node)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    };
}

impl_membership!(Sqlite);
impl_membership!(Postgres);
