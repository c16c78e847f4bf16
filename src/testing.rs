//! Test support shared by the server's and the load tool's suites: a
//! Postgres database of its own for every test that runs against the real
//! server, and ports for the servers tests start as processes.
//!
//! Each database is named after the machine (its boot and process
//! namespace) and the process that made it, and the first a process makes
//! is preceded by a sweep of this machine's whose process has ended. So a
//! developer's repeated `cargo test` does not pile databases up, and one
//! stays until a later test process starts, to be looked at when its test
//! failed. Another machine's databases on a shared Postgres are never
//! touched: whether their process runs cannot be told from here.

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
    let machine = machine();
    if let Some(machine) = &machine
        && !SWEPT.swap(true, Ordering::AcqRel)
    {
        sweep(&admin, machine).await;
    }
    // At most 49 bytes: Postgres cuts names at 63.
    let name = format!(
        "{PREFIX}{}_{}_{}",
        machine.as_deref().unwrap_or("00000000"),
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..16]
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create a test database");
    admin.close().await;
    with_database(base_url, &name)
}

/// Drops this machine's test databases whose process has ended (and the
/// connections a server they started may still hold). Those of a suite
/// from before databases were named after their maker are dropped too,
/// unless something is connected to them.
async fn sweep(admin: &PgPool, machine: &str) {
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT datname FROM pg_database WHERE datname LIKE 'turnout\_test\_%'",
    )
    .fetch_all(admin)
    .await
    .unwrap_or_default();
    for name in names {
        let drops = match maker(&name) {
            Some((theirs, pid))
                if theirs == machine && !Path::new(&format!("/proc/{pid}")).exists() =>
            {
                // `FORCE` is Postgres 13's: before it, plainly.
                vec![
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    format!("DROP DATABASE IF EXISTS {name}"),
                ]
            }
            Some(_) => continue,
            None => vec![format!("DROP DATABASE IF EXISTS {name}")],
        };
        for drop in drops {
            // A database still in use is left to its user.
            if sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(admin)
                .await
                .is_ok()
            {
                break;
            }
        }
    }
}

/// This machine, as far as processes go: its boot and its process
/// namespace, as 8 hex digits; none without `/proc`.
fn machine() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    // FNV-1a: stable across builds and toolchains, unlike std's hasher.
    let hash = format!("{}{}", boot.trim(), namespace.display())
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    Some(format!("{hash:08x}"))
}

/// The machine and process that made a test database, from its name
/// (`turnout_test_<machine>_<pid>_<random>`).
fn maker(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.strip_prefix(PREFIX)?.split('_');
    let (machine, pid, random) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none()
        && machine.len() == 8
        && hex(machine)
        && random.len() == 16
        && hex(random))
    .then_some(())?;
    Some((machine, pid.parse().ok()?))
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

/// A port for a server the tests start and restart where a proxy expects
/// it: outside the kernel's range for automatic ports (`bind(0)`, outgoing
/// connections; `/proc/sys/net/ipv4/ip_local_port_range`), below it where
/// there is room (from 10000) and above it otherwise, so nothing in this
/// process is handed it while the server is down or not up yet; never the
/// same twice. Each test binary starts at an offset of its own.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let automatic: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|range| {
            range
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (first, last) = match automatic[..] {
        [first, last] => (first, last),
        _ => (32_768, 60_999),
    };
    let (from, span) = if first > LOWEST + 1_000 {
        (LOWEST, first - LOWEST)
    } else {
        (last + 1, 65_535 - last)
    };
    assert!(
        span > 0,
        "no port outside the automatic range {first}-{last}"
    );
    let start = std::process::id() % span;
    loop {
        let taken = TAKEN.fetch_add(1, Ordering::Relaxed);
        assert!(taken < span, "every port from {from} is taken");
        let port = u16::try_from(from + (start + taken) % span).expect("a port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_names_its_maker() {
        let here = machine().expect("Linux has /proc");
        assert_eq!(here.len(), 8);
        assert_eq!(machine(), Some(here.clone()), "the same machine each time");
        let name = format!("{PREFIX}{here}_4242_0123456789abcdef");
        assert_eq!(maker(&name), Some((here.as_str(), 4242)));
        assert!(name.len() <= 63);
        // An older suite's names, and others'.
        assert_eq!(maker(&format!("{PREFIX}{}", Uuid::new_v4().simple())), None);
        assert_eq!(
            maker(&format!("{PREFIX}4242_{}", Uuid::new_v4().simple())),
            None
        );
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
        let here = machine().expect("Linux has /proc");
        let named = |machine: &str, pid: u32| {
            format!(
                "{PREFIX}{machine}_{pid}_{}",
                &Uuid::new_v4().simple().to_string()[..16]
            )
        };
        // No process has the largest pid.
        let ended = named(&here, u32::MAX);
        let running = named(&here, std::process::id());
        let elsewhere = named("0badf00d", u32::MAX);
        for name in [&ended, &running, &elsewhere] {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
        }
        sweep(&admin, &here).await;
        let mut left: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname = ANY($1)")
                .bind(vec![ended.clone(), running.clone(), elsewhere.clone()])
                .fetch_all(&admin)
                .await
                .unwrap();
        left.sort();
        let mut kept = vec![running.clone(), elsewhere.clone()];
        kept.sort();
        assert_eq!(
            left, kept,
            "{ended} dropped; this process's and another machine's kept"
        );
        for name in [running, elsewhere] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
        }
    }
}
