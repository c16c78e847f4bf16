//! Migrations go down as well as up: the latest one undone keeps what it
//! can of the data, and applied again gives the same schema back.

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, SqlitePool};
use uuid::Uuid;

use crate::helpers::{Backend, fresh_database};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The version before the waitlist offers.
const BEFORE_OFFERS: i64 = 9;

/// A venue, an event holding one offer of two seats, and that offer.
const SEED: [&str; 3] = [
    "INSERT INTO venues (id, owner_id, name, lat, lon, created_at) \
     VALUES ($1, $2, 'Blue Room', 52.37, 4.89, 0)",
    "INSERT INTO events (id, owner_id, venue_id, title, starts_at, capacity, status, \
     active_count, offered_count, waitlist_count, waitlist_mode, version, created_at, updated_at) \
     VALUES ($3, $2, $1, 'Late jazz', 1, 4, 'published', 1, 2, 0, 'offer', 5, 0, 0)",
    "INSERT INTO joins (event_id, user_id, status, order_key, seats, offer_expires_at, \
     joined_at, updated_at) VALUES ($3, $2, 'offered', 4, 2, 99, 1, 1)",
];

/// Writes [`SEED`] into `$pool` (of either backend); the user's id.
macro_rules! seed {
    ($pool:expr) => {{
        let (venue, user, event) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        for statement in SEED {
            sqlx::query(statement)
                .bind(venue)
                .bind(user)
                .bind(event)
                .execute(&$pool)
                .await
                .unwrap();
        }
        user
    }};
}

macro_rules! round_trip {
    ($pool:ty, $migrator:expr, $url:expr) => {{
        let pool = <$pool>::connect(&$url).await.unwrap();
        $migrator.run(&pool).await.unwrap();
        seed!(pool);

        $migrator.undo(&pool, BEFORE_OFFERS).await.unwrap();
        let (status,): (String,) = sqlx::query_as("SELECT status FROM joins")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(status, "waitlisted", "a held offer falls back to the waitlist");
        assert!(
            sqlx::query("SELECT seats FROM joins")
                .fetch_one(&pool)
                .await
                .is_err(),
            "the column is gone"
        );
        assert!(
            sqlx::query("SELECT offered_count FROM events")
                .fetch_one(&pool)
                .await
                .is_err()
        );

        $migrator.run(&pool).await.unwrap();
        let (status, seats, mode): (String, i64, String) = sqlx::query_as(
            "SELECT j.status, j.seats, e.waitlist_mode FROM joins j JOIN events e ON e.id = j.event_id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (status.as_str(), seats, mode.as_str()),
            ("waitlisted", 1, "auto"),
            "up again: the defaults of a log from before offers"
        );
        pool.close().await;
    }};
}

#[tokio::test]
async fn sqlite_migrations_go_down_and_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    round_trip!(sqlx::SqlitePool, SQLITE, url);
}

#[tokio::test]
async fn postgres_migrations_go_down_and_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    round_trip!(sqlx::PgPool, POSTGRES, url);
}

/// SQLite's log and outbox rebuilt to write fewer pages per commit (13, and
/// the outbox without its UNIQUE (aggregate_id, stream_version) in 15) keep
/// their rows and indexes, down and up again, the outbox numbers a new
/// message after every one before, and the log still takes a version once.
#[tokio::test]
async fn sqlite_tables_rebuilt_for_fewer_pages_keep_their_rows() {
    const BEFORE_REBUILD: i64 = 12;
    const UNIQUE_VERSION: &str = "sqlite_autoindex_outbox_1";
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let pool = SqlitePool::connect(&url).await.unwrap();
    SQLITE.run(&pool).await.unwrap();
    let stream = Uuid::now_v7();
    let fact = |version: i64| {
        sqlx::query(
            "INSERT INTO event_log (stream_id, version, event_type, schema_version, payload, \
             recorded_at) VALUES ($1, $2, 'joined', 1, '{}', 0)",
        )
        .bind(stream)
        .bind(version)
    };
    let message = |version: i64| {
        sqlx::query(
            "INSERT INTO outbox (message_id, topic, aggregate_id, stream_version, event_type, \
             payload, next_attempt_at, created_at) VALUES ($1, 'events', $2, $3, 'joined', '{}', 0, 0)",
        )
        .bind(Uuid::now_v7())
        .bind(stream)
        .bind(version)
    };
    for version in 1..=3 {
        fact(version).execute(&pool).await.unwrap();
        message(version).execute(&pool).await.unwrap();
    }
    let before = log_and_outbox(&pool).await;
    assert_eq!(rebuilt(&pool).await, (true, true));
    let indexes = indexes_of(&pool, "outbox").await;
    assert!(
        !indexes.contains(&UNIQUE_VERSION.to_string()),
        "15 dropped the outbox's UNIQUE (aggregate_id, stream_version): {indexes:?}"
    );

    SQLITE.undo(&pool, BEFORE_REBUILD).await.unwrap();
    assert_eq!(rebuilt(&pool).await, (false, false));
    assert_eq!(log_and_outbox(&pool).await, before, "down keeps the rows");
    let mut with_unique = indexes.clone();
    with_unique.push(UNIQUE_VERSION.to_string());
    with_unique.sort();
    assert_eq!(indexes_of(&pool, "outbox").await, with_unique);
    SQLITE.run(&pool).await.unwrap();
    assert_eq!(rebuilt(&pool).await, (true, true));
    assert_eq!(log_and_outbox(&pool).await, before, "up again keeps them");
    assert_eq!(indexes_of(&pool, "outbox").await, indexes);

    message(4).execute(&pool).await.unwrap();
    let (_, outbox) = log_and_outbox(&pool).await;
    let newest = before.1.iter().map(|(id, _)| *id).max().unwrap();
    assert_eq!(outbox.last().unwrap().1, 4);
    assert!(
        outbox.last().unwrap().0 > newest,
        "a new message comes after"
    );
    assert!(
        fact(3).execute(&pool).await.is_err(),
        "a version is still written once"
    );
    pool.close().await;
}

/// The log's versions, and the outbox's ids with their versions.
async fn log_and_outbox(pool: &SqlitePool) -> (Vec<(i64,)>, Vec<(i64, i64)>) {
    let log = sqlx::query_as("SELECT version FROM event_log ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap();
    let outbox = sqlx::query_as("SELECT id, stream_version FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    (log, outbox)
}

/// What migration 13 changes: the log without rowids, the outbox without
/// `AUTOINCREMENT`.
async fn rebuilt(pool: &SqlitePool) -> (bool, bool) {
    (
        table_sql(pool, "event_log").await.contains("WITHOUT ROWID"),
        !table_sql(pool, "outbox").await.contains("AUTOINCREMENT"),
    )
}

async fn table_sql(pool: &SqlitePool, table: &str) -> String {
    let (sql,): (String,) = sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = $1")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
    sql
}

async fn indexes_of(pool: &SqlitePool, table: &str) -> Vec<String> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 ORDER BY name",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    names.into_iter().map(|(name,)| name).collect()
}

/// SQLite's joins as a rowid table under a unique (user, event) (16) keep
/// their rows down and up again, and a person's list, a membership and
/// an event's roster are still read through an index, not a scan.
#[tokio::test]
async fn sqlite_joins_keyed_by_user_keep_their_rows_and_an_index_for_each_read() {
    const BEFORE_KEYED_BY_USER: i64 = 15;
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let pool = SqlitePool::connect(&url).await.unwrap();
    SQLITE.run(&pool).await.unwrap();
    let user = seed!(pool);
    let before = joins(&pool).await;
    let keyed_by_user = ["joins_offers", "joins_roster", "sqlite_autoindex_joins_1"];
    assert_eq!(indexes_of(&pool, "joins").await, keyed_by_user);
    assert!(!table_sql(&pool, "joins").await.contains("WITHOUT ROWID"));

    SQLITE.undo(&pool, BEFORE_KEYED_BY_USER).await.unwrap();
    assert_eq!(joins(&pool).await, before, "down keeps the rows");
    assert!(table_sql(&pool, "joins").await.contains("WITHOUT ROWID"));
    assert!(
        indexes_of(&pool, "joins")
            .await
            .contains(&"joins_by_user".to_string())
    );

    SQLITE.run(&pool).await.unwrap();
    assert_eq!(joins(&pool).await, before, "up again keeps them");
    assert_eq!(indexes_of(&pool, "joins").await, keyed_by_user);
    // The plans on a connection of their own: `EXPLAIN` runs no statement,
    // so a pooled connection that last read the schema before the
    // migration explains with its old indexes.
    pool.close().await;
    let pool = SqlitePool::connect(&url).await.unwrap();
    for (read, index) in [
        (
            "SELECT * FROM joins WHERE user_id = $1 ORDER BY joined_at DESC, event_id DESC LIMIT 20",
            "sqlite_autoindex_joins_1",
        ),
        (
            "SELECT * FROM joins WHERE event_id = $1 AND user_id = $1",
            "sqlite_autoindex_joins_1",
        ),
        (
            "SELECT * FROM joins WHERE event_id = $1 AND status = 'waitlisted' ORDER BY order_key",
            "joins_roster",
        ),
    ] {
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {read}")))
                .bind(user)
                .fetch_all(&pool)
                .await
                .unwrap();
        let steps: Vec<&str> = plan.iter().map(|(.., step)| step.as_str()).collect();
        assert!(
            steps.iter().any(|step| step.contains(index)),
            "{read}: {steps:?}"
        );
    }
    pool.close().await;
}

/// Every row of `joins`, in the user's order.
async fn joins(pool: &SqlitePool) -> Vec<(Uuid, Uuid, String, i64, i64)> {
    sqlx::query_as("SELECT event_id, user_id, status, order_key, seats FROM joins ORDER BY user_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The status checks of the tables a join writes (14) are comparisons:
/// writing a row builds no temporary B-tree of the allowed values, as a
/// check of `IN` with three or more values did for every row, and an
/// unknown status is still refused.
#[tokio::test]
async fn sqlite_status_checks_of_the_tables_a_join_writes_build_no_b_tree() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let pool = SqlitePool::connect(&url).await.unwrap();
    SQLITE.run(&pool).await.unwrap();
    let (venue, user, event) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for statement in SEED.into_iter().take(2) {
        sqlx::query(statement)
            .bind(venue)
            .bind(user)
            .bind(event)
            .execute(&pool)
            .await
            .unwrap();
    }
    // Each binds an event or a stream, a user or a message, and a status.
    let membership = "INSERT INTO joins (event_id, user_id, status, order_key, seats, \
         joined_at, updated_at) VALUES ($1, $2, $3, 1, 1, 0, 0) \
         ON CONFLICT (event_id, user_id) DO UPDATE SET status = excluded.status";
    let message = "INSERT INTO outbox (aggregate_id, message_id, status, topic, \
         stream_version, event_type, payload, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, 'events', 1, 'joined', '{}', 0, 0)";
    let published = "UPDATE outbox SET status = $3, published_at = 0 \
         WHERE aggregate_id = $1 AND message_id = $2";
    for statement in [membership, message, published] {
        let program: Vec<(i64, String)> =
            sqlx::query_as(AssertSqlSafe(format!("EXPLAIN {statement}")))
                .bind(event)
                .bind(user)
                .bind("active")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert!(
            program.iter().all(|(_, opcode)| opcode != "OpenEphemeral"),
            "{statement}: {program:?}"
        );
    }
    let write = |statement: &'static str, status: &'static str| {
        sqlx::query(statement).bind(event).bind(user).bind(status)
    };
    for (statement, known) in [(membership, "waitlisted"), (message, "pending")] {
        assert!(write(statement, "unheard-of").execute(&pool).await.is_err());
        write(statement, known).execute(&pool).await.unwrap();
    }
    assert!(write(published, "sent").execute(&pool).await.is_err());
    write(published, "published").execute(&pool).await.unwrap();
    pool.close().await;
}

/// An event's tags are found through an index on the event, on both
/// backends (18): read for every event read that misses the cache, and
/// rewritten on each edit.
#[tokio::test]
async fn an_events_tags_are_found_by_an_index() {
    const READ: &str = "SELECT event_id, tag FROM event_tags WHERE event_id IN ($1)";
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let pool = SqlitePool::connect(&url).await.unwrap();
    SQLITE.run(&pool).await.unwrap();
    let plan: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {READ}")))
            .bind(Uuid::now_v7())
            .fetch_all(&pool)
            .await
            .unwrap();
    let steps: Vec<&str> = plan.iter().map(|(.., step)| step.as_str()).collect();
    assert!(
        steps
            .iter()
            .any(|step| step.contains("event_tags_by_event")),
        "{steps:?}"
    );
    pool.close().await;

    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    POSTGRES.run(&pool).await.unwrap();
    // An empty table is read whole whatever its indexes: asked not to,
    // the planner shows the index it has.
    let mut connection = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *connection)
        .await
        .unwrap();
    let plan: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!("EXPLAIN {READ}")))
        .bind(Uuid::now_v7())
        .fetch_all(&mut *connection)
        .await
        .unwrap();
    assert!(
        plan.iter()
            .any(|(step,)| step.contains("event_tags_by_event")),
        "{plan:?}"
    );
}
