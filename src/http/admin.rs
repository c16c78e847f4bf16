//! `/v1/admin`: operator endpoints, for tokens with the `admin` role only.
//! Dead outbox messages are listed and put back in the queue here (the
//! runbook is in docs/OPERATIONS.md).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use turnout_actors::placement::{self, NodeId};
use uuid::Uuid;

use super::ErrorCode;
use super::identity::AdminUser;
use super::{ApiError, AppState, pagination};
use crate::store::{OutboxMessage, OutboxStatus, from_micros};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/stats", web::get().to(stats))
        .route("/admin/outbox/dead", web::get().to(dead_messages))
        .route("/admin/outbox/{id}/replay", web::post().to(replay))
        .route("/admin/cluster", web::get().to(cluster));
}

/// An outbox message the relay gave up on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadMessage {
    /// The outbox id: publishing order.
    pub id: i64,
    pub message_id: Uuid,
    pub topic: String,
    pub aggregate_id: Uuid,
    pub stream_version: i64,
    pub event_type: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<OutboxMessage> for DeadMessage {
    fn from(m: OutboxMessage) -> Self {
        Self {
            id: m.id,
            message_id: m.message_id,
            topic: m.topic,
            aggregate_id: m.aggregate_id,
            stream_version: m.stream_version,
            event_type: m.event_type,
            attempts: m.attempts,
            last_error: m.last_error,
            request_id: m.request_id,
            created_at: from_micros(m.created_at),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadPage {
    pub data: Vec<DeadMessage>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub id: i64,
    /// `pending`: the relay publishes it next, ahead of newer messages.
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplayedEnvelope {
    pub data: Replayed,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    pub cursor: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
}

/// Dead outbox messages, oldest first.
#[utoipa::path(get, path = "/v1/admin/outbox/dead", tag = "admin", params(DeadQuery), security(("bearer" = [])),
    responses((status = 200, body = DeadPage), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, description = "not an admin", body = super::ErrorBody)))]
pub async fn dead_messages(
    state: web::Data<AppState>,
    admin: AdminUser,
    query: web::Query<DeadQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after: i64 = pagination::decode(query.cursor.as_deref())?.unwrap_or(0);
    let mut rows = state
        .store
        .outbox(OutboxStatus::Dead, after, limit + 1)
        .await?;
    let next_cursor = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        pagination::encode(&rows.last().map_or(after, |r| r.id))
    });
    tracing::info!(target: "turnout::audit", admin = %admin.0.id.as_uuid(), count = rows.len(), "listed dead outbox messages");
    Ok(HttpResponse::Ok().json(DeadPage {
        data: rows.into_iter().map(DeadMessage::from).collect(),
        next_cursor,
    }))
}

/// Puts a dead outbox message back in the queue.
#[utoipa::path(post, path = "/v1/admin/outbox/{id}/replay", tag = "admin", security(("bearer" = [])),
    params(("id" = i64, Path, description = "the outbox id")),
    responses((status = 200, body = ReplayedEnvelope), (status = 401, body = super::ErrorBody),
        (status = 403, description = "not an admin", body = super::ErrorBody),
        (status = 404, description = "no dead message with this id", body = super::ErrorBody)))]
pub async fn replay(
    state: web::Data<AppState>,
    admin: AdminUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 = id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidPath,
            "the outbox id is a positive integer",
        )
    })?;
    if !state.store.replay_outbox(id).await? {
        return Err(ApiError::NotFound("dead outbox message"));
    }
    tracing::info!(target: "turnout::audit", admin = %admin.0.id.as_uuid(), outbox_id = id, "replayed a dead outbox message");
    Ok(HttpResponse::Ok().json(ReplayedEnvelope {
        data: Replayed {
            id,
            status: "pending",
        },
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Days back from today, 1 to 366; 7 when absent.
    pub days: Option<i64>,
}

/// Facts committed on one UTC day, by kind.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DailyFacts {
    /// `YYYY-MM-DD`
    pub day: String,
    /// `joined`, `left`, `promoted`, `published`, …
    pub event_type: String,
    pub facts: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsEnvelope {
    pub data: Vec<DailyFacts>,
}

/// Facts committed per day and kind, counted by the daily-facts consumer of
/// the outbox (so they trail commits by a moment).
#[utoipa::path(get, path = "/v1/admin/stats", tag = "admin", params(StatsQuery), security(("bearer" = [])),
    responses((status = 200, body = StatsEnvelope), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, description = "not an admin", body = super::ErrorBody)))]
pub async fn stats(
    state: web::Data<AppState>,
    _: AdminUser,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let days = match query.days {
        None => 7,
        Some(n) if (1..=366).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "days must be 1 to 366",
            ));
        }
    };
    let since = (Utc::now() - chrono::Duration::days(days - 1))
        .format("%Y-%m-%d")
        .to_string();
    let rows = state.store.daily_facts(&since).await?;
    Ok(HttpResponse::Ok().json(StatsEnvelope {
        data: rows
            .into_iter()
            .map(|(day, event_type, facts)| DailyFacts {
                day,
                event_type,
                facts,
            })
            .collect(),
    }))
}

/// A node of the cluster, as the others see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterNode {
    pub id: Uuid,
    /// Where the other nodes reach it.
    pub address: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Heard from within the lease TTL.
    pub live: bool,
    /// Shards placement gives it among the live nodes.
    pub shards: usize,
    /// Shards whose lease it holds now (this node: as it believes; a node
    /// alone on SQLite holds every shard without leases).
    pub shards_held: usize,
    /// The node that answered.
    pub this_node: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The cluster's shard count, fixed in its database.
    pub shards: u32,
    pub nodes: Vec<ClusterNode>,
    /// Every shard's lease, by shard (none on SQLite, where one node holds
    /// everything).
    pub leases: Vec<ShardLeaseView>,
}

/// A shard's lease: who holds it, since which taking (the epoch), until when.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ShardLeaseView {
    pub shard: i64,
    /// `null` while the shard is free.
    pub node: Option<Uuid>,
    /// Incremented by every taking: the fencing token commits are checked against.
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterEnvelope {
    pub data: ClusterView,
}

/// The cluster's nodes, whether each is live, how many shards placement
/// gives each and how many each holds, and every shard's lease.
#[utoipa::path(get, path = "/v1/admin/cluster", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = ClusterEnvelope),
        (status = 401, body = super::ErrorBody), (status = 403, description = "not an admin", body = super::ErrorBody)))]
pub async fn cluster(state: web::Data<AppState>, _: AdminUser) -> Result<HttpResponse, ApiError> {
    let node = &state.node;
    let now = state.store.clock().await?;
    let registered = state.store.nodes().await?;
    let leases = state.store.leases().await?;
    let held_here = state.commands.held().held().len();
    let live: Vec<NodeId> = registered
        .iter()
        .filter(|n| node.is_live(n.heartbeat_at, now))
        .map(|n| NodeId::from(n.id))
        .collect();
    let placed = placement::owners(node.shards, &live);
    let nodes = registered
        .into_iter()
        .map(|n| ClusterNode {
            live: node.is_live(n.heartbeat_at, now),
            shards: placed
                .iter()
                .filter(|owner| **owner == Some(NodeId::from(n.id)))
                .count(),
            shards_held: if n.id == node.id.as_uuid() {
                held_here
            } else {
                leases
                    .iter()
                    .filter(|l| l.node == Some(n.id) && l.expires_at >= now)
                    .count()
            },
            this_node: n.id == node.id.as_uuid(),
            id: n.id,
            address: n.address,
            started_at: from_micros(n.started_at),
            heartbeat_at: from_micros(n.heartbeat_at),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ClusterEnvelope {
        data: ClusterView {
            shards: node.shards.get(),
            nodes,
            leases: leases
                .into_iter()
                .map(|l| ShardLeaseView {
                    shard: l.shard,
                    node: l.node,
                    epoch: l.epoch,
                    expires_at: from_micros(l.expires_at),
                })
                .collect(),
        },
    }))
}
