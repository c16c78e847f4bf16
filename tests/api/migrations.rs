//! Migrations go down as well as up: the latest one undone keeps what it
//! can of the data, and applied again gives the same schema back.

use sqlx::migrate::Migrator;
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

macro_rules! round_trip {
    ($pool:ty, $migrator:expr, $url:expr) => {{
        let pool = <$pool>::connect(&$url).await.unwrap();
        $migrator.run(&pool).await.unwrap();
        let (venue, user, event) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        for statement in SEED {
            sqlx::query(statement)
                .bind(venue)
                .bind(user)
                .bind(event)
                .execute(&pool)
                .await
                .unwrap();
        }

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
