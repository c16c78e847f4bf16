//! The cluster's membership: its shard count, its nodes' heartbeats and
//! its shard leases.

use async_trait::async_trait;
use sqlx::{Postgres, QueryBuilder, Sqlite};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use super::SqlStore;
use crate::store::{Heartbeat, LeaseRecord, Membership, NodeRecord, unavailable};

// `$in_shard_order`: how the dialect locks a node's lease rows before
// renewing them — in shard order on Postgres, the order commits take their
// shares in (see the journal), so a renewal and a commit never deadlock.
// `$clock`: the database's time now, in unix microseconds.
/// Registers a node, over any row under its id.
const REGISTER_NODE: &str = "INSERT INTO nodes (id, address, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET address = excluded.address, \
     started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at";
/// Registers a node unless a row under its id is there.
const REGISTER_NODE_IF_ABSENT: &str = "INSERT INTO nodes (id, address, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING";

macro_rules! impl_membership {
    ($db:ty, $in_shard_order:literal, $clock:literal) => {
        impl SqlStore<$db> {
            /// Runs one of the statements above for `node`; the rows written.
            async fn insert_node(&self, sql: &'static str, node: &NodeRecord) -> Result<u64, StoreError> {
                let done = sqlx::query(sql)
                    .bind(node.id)
                    .bind(&node.address)
                    .bind(node.started_at)
                    .bind(node.heartbeat_at)
                    .execute(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected())
            }
        }

        #[async_trait]
        impl Membership for SqlStore<$db> {
            async fn clock(&self) -> Result<i64, StoreError> {
                let (now,): (i64,) = sqlx::query_as(concat!("SELECT ", $clock))
                    .fetch_one(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(now)
            }

            async fn shard_count(&self, proposed: i64) -> Result<i64, StoreError> {
                sqlx::query(
                    "INSERT INTO cluster (id, shard_count) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                )
                .bind(proposed)
                .execute(&self.background)
                .await
                .map_err(unavailable)?;
                let (stored,): (i64,) = sqlx::query_as("SELECT shard_count FROM cluster WHERE id = 1")
                    .fetch_one(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(stored)
            }

            async fn register_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
                self.insert_node(REGISTER_NODE, node).await.map(drop)
            }

            async fn register_node_if_absent(&self, node: &NodeRecord) -> Result<bool, StoreError> {
                Ok(self.insert_node(REGISTER_NODE_IF_ABSENT, node).await? == 1)
            }

            async fn heartbeat(&self, node: Uuid, started_at: i64, now: i64) -> Result<Heartbeat, StoreError> {
                let done = sqlx::query("UPDATE nodes SET heartbeat_at = $1 WHERE id = $2 AND started_at = $3")
                    .bind(now)
                    .bind(node)
                    .bind(started_at)
                    .execute(&self.background)
                    .await
                    .map_err(unavailable)?;
                if done.rows_affected() == 1 {
                    return Ok(Heartbeat::Heard);
                }
                let another: Option<i64> = sqlx::query_scalar("SELECT started_at FROM nodes WHERE id = $1")
                    .bind(node)
                    .fetch_optional(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(match another {
                    Some(_) => Heartbeat::Superseded,
                    None => Heartbeat::Gone,
                })
            }

            async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
                sqlx::query_as("SELECT id, address, started_at, heartbeat_at FROM nodes ORDER BY id")
                    .fetch_all(&self.background)
                    .await
                    .map_err(unavailable)
            }

            async fn forget_nodes_silent_since(&self, before: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1")
                    .bind(before)
                    .execute(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected())
            }

            async fn deregister_node(&self, node: Uuid, started_at: i64) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM nodes WHERE id = $1 AND started_at = $2")
                    .bind(node)
                    .bind(started_at)
                    .execute(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }

            async fn seed_leases(&self, shards: i64) -> Result<(), StoreError> {
                // `WHERE true` keeps SQLite from reading ON CONFLICT as a join.
                sqlx::query(
                    "WITH RECURSIVE numbers(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM numbers WHERE n + 1 < $1) \
                     INSERT INTO shard_leases (shard) SELECT n FROM numbers WHERE true \
                     ON CONFLICT (shard) DO NOTHING",
                )
                .bind(shards)
                .execute(&self.background)
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
                sqlx::query_as(
                    "SELECT CAST(shard AS BIGINT) AS shard, node, epoch, expires_at \
                     FROM shard_leases ORDER BY shard",
                )
                .fetch_all(&self.background)
                .await
                .map_err(unavailable)
            }

            async fn take_shard(
                &self,
                shard: i64,
                node: Uuid,
                seen_epoch: i64,
                now: i64,
                expires_at: i64,
            ) -> Result<Option<i64>, StoreError> {
                let taken = sqlx::query(
                    "UPDATE shard_leases SET node = $1, epoch = epoch + 1, expires_at = $2 \
                     WHERE shard = $3 AND epoch = $4 AND (node IS NULL OR node = $1 OR expires_at < $5)",
                )
                .bind(node)
                .bind(expires_at)
                .bind(shard)
                .bind(seen_epoch)
                .bind(now)
                .execute(&self.background)
                .await
                .map_err(unavailable)?;
                Ok((taken.rows_affected() == 1).then_some(seen_epoch + 1))
            }

            async fn renew_shards(
                &self,
                node: Uuid,
                leases: &[(i64, i64)],
                expires_at: i64,
            ) -> Result<Vec<i64>, StoreError> {
                if leases.is_empty() {
                    return Ok(Vec::new());
                }
                // Never earlier than it was: a take of the shard between
                // the renewal's clock and this statement wrote a later one.
                let mut query = QueryBuilder::<$db>::new(
                    "UPDATE shard_leases SET expires_at = CASE WHEN expires_at > ",
                );
                query
                    .push_bind(expires_at)
                    .push(" THEN expires_at ELSE ")
                    .push_bind(expires_at)
                    .push(" END WHERE shard IN (SELECT shard FROM shard_leases WHERE node = ")
                    .push_bind(node)
                    .push(" AND (shard, epoch) IN (VALUES ");
                let mut listed = query.separated(", ");
                for (shard, epoch) in leases {
                    listed
                        .push("(")
                        .push_bind_unseparated(*shard)
                        .push_unseparated(", ")
                        .push_bind_unseparated(*epoch)
                        .push_unseparated(")");
                }
                query
                    .push(") ORDER BY shard")
                    .push($in_shard_order)
                    .push(") RETURNING CAST(shard AS BIGINT)");
                let renewed: Vec<(i64,)> = query
                    .build_query_as()
                    .fetch_all(&self.background)
                    .await
                    .map_err(unavailable)?;
                Ok(renewed.into_iter().map(|(shard,)| shard).collect())
            }

            async fn release_shard(
                &self,
                shard: i64,
                node: Uuid,
                epoch: i64,
            ) -> Result<bool, StoreError> {
                let released = sqlx::query(
                    "UPDATE shard_leases SET node = NULL, expires_at = 0 \
                     WHERE shard = $1 AND node = $2 AND epoch = $3",
                )
                .bind(shard)
                .bind(node)
                .bind(epoch)
                .execute(&self.background)
                .await
                .map_err(unavailable)?;
                Ok(released.rows_affected() == 1)
            }
        }
    };
}

impl_membership!(
    Sqlite,
    "",
    "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
);
impl_membership!(
    Postgres,
    " FOR UPDATE",
    "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
);
