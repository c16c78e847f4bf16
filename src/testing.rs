//! Test support shared by the server's and the load tool's suites: a
//! Postgres database of its own for every test that runs against the real
//! server.
//!
//! Each database is named after the process that made it, and the first a
//! process makes is preceded by a sweep of those whose process has ended.
//! So a developer's repeated `cargo test` leaves at most the last run's
//! databases behind, and a test's database outlives the test, to be looked
//! at when it failed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use uuid::Uuid;

/// What every test database's name starts with.
const PREFIX: &str = "turnout_test_";

/// Whether this process has swept already.
static SWEPT: AtomicBool = AtomicBool::new(false);

/// Creates a database of its own next to `base_url`'s and answers its URL
/// (the base URL's host, credentials and options, another database).
///
/// # Panics
/// When Postgres does not answer or refuses: a suite told where Postgres
/// is must fail rather than skip.
pub async fn scratch_postgres_database(base_url: &str) -> String {
    let admin = PgPool::connect(base_url)
        .await
        .expect("TURNOUT_TEST_POSTGRES_URL is set but Postgres does not answer");
    if !SWEPT.swap(true, Ordering::AcqRel) {
        sweep(&admin).await;
    }
    let name = format!("{PREFIX}{}_{}", std::process::id(), Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create a test database");
    admin.close().await;
    with_database(base_url, &name)
}

/// Drops the test databases whose process has ended. Those of a suite
/// from before databases were named after their process are dropped too,
/// unless something is connected to them. Where processes cannot be
/// looked up (no `/proc`), nothing is dropped.
async fn sweep(admin: &PgPool) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT datname FROM pg_database WHERE datname LIKE 'turnout\_test\_%'",
    )
    .fetch_all(admin)
    .await
    .unwrap_or_default();
    for name in names {
        let drop = match maker(&name) {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => continue,
            // Its process is gone; a server it started may still hold a
            // connection (a crash test's child), and would fail next anyway.
            Some(_) => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            None => format!("DROP DATABASE IF EXISTS {name}"),
        };
        // A database in use by an older suite is left to it.
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(admin).await;
    }
}

/// The process that made a test database, from its name
/// (`turnout_test_<pid>_<uuid>`).
fn maker(name: &str) -> Option<u32> {
    let (pid, uuid) = name.strip_prefix(PREFIX)?.split_once('_')?;
    Uuid::try_parse(uuid).ok()?;
    pid.parse().ok()
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (before_query, query) = url
        .split_once('?')
        .map_or((url, None), |(a, b)| (a, Some(b)));
    let slash = before_query.rfind('/').expect("a URL with a path");
    let prefix = if before_query[..slash].ends_with('/') {
        before_query
    } else {
        &before_query[..slash]
    };
    let base = format!("{}/{}", prefix.trim_end_matches('/'), name);
    match query {
        Some(q) => format!("{base}?{q}"),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_names_its_maker() {
        let name = format!("{PREFIX}4242_{}", Uuid::new_v4().simple());
        assert_eq!(maker(&name), Some(4242));
        assert_eq!(maker(&format!("{PREFIX}{}", Uuid::new_v4().simple())), None);
        assert_eq!(maker("turnout_bench"), None);
    }

    #[test]
    fn the_database_is_swapped_and_the_rest_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/test?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h/test", "x"),
            "postgres://u@h/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }

    #[tokio::test]
    async fn a_sweep_drops_the_databases_of_ended_processes_only() {
        let Some(base) = std::env::var("TURNOUT_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("TURNOUT_TEST_POSTGRES_URL is not set: skipping the sweep's test");
            return;
        };
        let admin = PgPool::connect(&base).await.expect("Postgres answers");
        // No process has the largest pid.
        let ended = format!("{PREFIX}{}_{}", u32::MAX, Uuid::new_v4().simple());
        let running = format!("{PREFIX}{}_{}", std::process::id(), Uuid::new_v4().simple());
        for name in [&ended, &running] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
        }
        sweep(&admin).await;
        let left: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname = ANY($1)")
                .bind(vec![ended.clone(), running.clone()])
                .fetch_all(&admin)
                .await
                .unwrap();
        assert_eq!(
            left,
            vec![running.clone()],
            "{ended} dropped, {running} kept"
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {running}")))
            .execute(&admin)
            .await
            .unwrap();
    }
}
