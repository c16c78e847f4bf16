//! The classic design, for comparison on the same machine: one transaction
//! per join — record the idempotency key, `SELECT … FOR UPDATE` the event's
//! counts row, insert the join as active or waitlisted, update the counts,
//! insert an outbox row. Runs straight against Postgres in its own tables
//! (`rowlock_*`), which it creates and empties.

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::burst::{self, JoinResult};
use crate::invariants::{HotJoinOutcome, Member, Told, check_hot_join};
use crate::report::Report;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rowlock_events (
    id UUID PRIMARY KEY, capacity BIGINT NOT NULL,
    active_count BIGINT NOT NULL DEFAULT 0, waitlist_count BIGINT NOT NULL DEFAULT 0,
    CHECK (active_count <= capacity));
CREATE TABLE IF NOT EXISTS rowlock_joins (
    event_id UUID NOT NULL REFERENCES rowlock_events (id), user_id UUID NOT NULL,
    status TEXT NOT NULL, position BIGINT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, user_id));
CREATE TABLE IF NOT EXISTS rowlock_idempotency (
    key TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS rowlock_outbox (
    id BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL, payload JSONB NOT NULL);
TRUNCATE rowlock_outbox, rowlock_idempotency, rowlock_joins, rowlock_events;
";

async fn join(pool: &PgPool, event: Uuid, user: Uuid, key: &str) -> sqlx::Result<Told> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    sqlx::query("INSERT INTO rowlock_idempotency (key) VALUES ($1)")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let (capacity, active, waiting): (i64, i64, i64) = sqlx::query_as(
        "SELECT capacity, active_count, waitlist_count FROM rowlock_events WHERE id = $1 FOR UPDATE",
    )
    .bind(event)
    .fetch_one(&mut *tx)
    .await?;
    let (status, position) = if active < capacity {
        ("active", None)
    } else {
        ("waitlisted", Some(waiting + 1))
    };
    sqlx::query(
        "INSERT INTO rowlock_joins (event_id, user_id, status, position) VALUES ($1, $2, $3, $4)",
    )
    .bind(event)
    .bind(user)
    .bind(status)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    let (da, dw) = if status == "active" { (1, 0) } else { (0, 1) };
    sqlx::query(
        "UPDATE rowlock_events SET active_count = active_count + $2, waitlist_count = waitlist_count + $3 WHERE id = $1",
    )
    .bind(event)
    .bind(da)
    .bind(dw)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO rowlock_outbox (event_id, payload) VALUES ($1, $2::jsonb)")
        .bind(event)
        .bind(serde_json::json!({ "type": "joined", "user": user, "status": status }).to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Told {
        status: status.to_owned(),
        position: position.map(|p| p as u64),
    })
}

/// Runs the hot-join load against the row-lock design.
pub async fn hot_join(
    database_url: &str,
    users: usize,
    capacity: u64,
    concurrency: usize,
) -> anyhow::Result<Report> {
    // Postgres caps connections; each in-flight join holds one.
    let connections = concurrency.min(80) as u32;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(database_url)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let event = Uuid::now_v7();
    sqlx::query("INSERT INTO rowlock_events (id, capacity) VALUES ($1, $2)")
        .bind(event)
        .bind(capacity as i64)
        .execute(&pool)
        .await?;
    eprintln!(
        "baseline rowlock: {users} users on one event (capacity {capacity}), {connections} connections"
    );

    let joiners: Vec<(Uuid, ())> = (0..users).map(|_| (Uuid::now_v7(), ())).collect();
    let joins_pool = pool.clone();
    let tally = burst::run(joiners, concurrency, move |user, ()| {
        let pool = joins_pool.clone();
        async move {
            match join(&pool, event, user, &Uuid::new_v4().to_string()).await {
                Ok(told) => JoinResult::Acknowledged {
                    kind: "2xx committed".into(),
                    told,
                },
                Err(e) => JoinResult::Refused {
                    kind: format!("error: {e}"),
                },
            }
        }
    })
    .await?;

    let rows: Vec<(Uuid, String, Option<i64>)> =
        sqlx::query_as("SELECT user_id, status, position FROM rowlock_joins WHERE event_id = $1 ORDER BY position NULLS FIRST")
            .bind(event)
            .fetch_all(&pool)
            .await?;
    let roster: Vec<Member> = rows
        .into_iter()
        .map(|(user, status, position)| Member {
            user,
            status,
            position: position.map(|p| p as u64),
        })
        .collect();
    let (active_count, waitlist_count): (i64, i64) =
        sqlx::query_as("SELECT active_count, waitlist_count FROM rowlock_events WHERE id = $1")
            .bind(event)
            .fetch_one(&pool)
            .await?;
    let checks = check_hot_join(&HotJoinOutcome {
        capacity,
        acknowledged: &tally.joiners.acknowledged,
        refused: &tally.joiners.refused,
        unanswered: &tally.joiners.unanswered,
        roster: &roster,
        active_count: active_count as u64,
        waitlist_count: waitlist_count as u64,
    });
    Ok(Report::new(
        "hot-join --baseline rowlock",
        database_url_label(database_url),
        &tally.latency,
        tally.elapsed,
        tally.outcomes,
        checks,
    ))
}

/// The URL without credentials, for the report.
fn database_url_label(url: &str) -> &str {
    url.rsplit_once('@').map_or(url, |(_, host)| host)
}
