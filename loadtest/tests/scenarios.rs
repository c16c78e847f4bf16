//! Small runs of the scenarios against a real Turnout server started by the
//! test: every invariant must hold.

mod common;

use turnout_loadtest::Common;
use turnout_loadtest::report::Report;
use turnout_loadtest::scenarios::hot_join::{self, HotJoin};

const KEY: &str = "loadtest-key-loadtest-key-loadtest";

/// Names the first check that failed, with its detail.
fn assert_every_check_passed(report: &Report) {
    for check in &report.checks {
        assert!(check.passed, "{}: {}", check.name, check.detail);
    }
}

fn common_options(target: String) -> Common {
    Common::for_target(target, Some(KEY.into()))
}

/// 300 users at once on one event of capacity 40.
async fn small_hot_join(target: String) -> anyhow::Result<Report> {
    small_hot_join_replaying(target, 0.0).await
}

async fn small_hot_join_replaying(target: String, replays: f64) -> anyhow::Result<Report> {
    hot_join::run(HotJoin {
        common: common_options(target),
        users: 300,
        capacity: 40,
        concurrency: None,
        replays,
        baseline: None,
        database_url: None,
    })
    .await
}

#[actix_web::test]
async fn a_small_hot_join_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;

    let report = small_hot_join(target).await.unwrap();

    assert_every_check_passed(&report);
    // Something answered 2xx; capacity; the waitlist's places; each member
    // once; each 2xx join where it was told; no refused one; nobody unsent;
    // the counts.
    let invariants = report.checks.iter().filter(|c| !c.name.ends_with("(info)"));
    assert_eq!(invariants.count(), 8);
    assert_eq!(report.outcomes.get("201"), Some(&300));
    assert_eq!(report.latency.count, 300);
}

/// A third of the users send their join three times under one key, twice
/// at once and again after the answer, among everyone else's joins: each
/// is answered the same every time and listed once.
#[actix_web::test]
async fn a_hot_join_with_replayed_keys_has_one_effect_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;

    let report = small_hot_join_replaying(target, 1.0 / 3.0).await.unwrap();

    assert_every_check_passed(&report);
    let replays = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("a key sent three times"))
        .expect("the replays are checked");
    assert!(
        replays
            .detail
            .starts_with("100 keys sent three times, 0 answered differently"),
        "{}",
        replays.detail
    );
    assert_eq!(report.outcomes.get("201"), Some(&300));
}

/// The measuring stick answers the hot-join load in the same shapes, so the
/// load tool checks its roster as it checks Turnout's: a yardstick that
/// overbooked or lost a join would flatter nobody.
#[actix_web::test]
async fn the_measuring_stick_keeps_every_invariant_of_a_hot_join() {
    small_hot_join_on_the_stick(&["--workers", "1"]).await;
}

/// The durable stick keeps the same invariants, and its file holds a line
/// for every join it acknowledged, as many active as the event's capacity:
/// a durable stick that wrote less than it answered would measure nothing.
#[actix_web::test]
async fn the_durable_stick_has_every_acknowledged_join_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("joins");
    small_hot_join_on_the_stick(&["--durable", file.to_str().unwrap()]).await;

    // Read once the process is killed.
    let lines = std::fs::read_to_string(&file).unwrap();
    let statuses: Vec<&str> = lines
        .lines()
        .map(|line| line.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(statuses.len(), 300);
    assert_eq!(statuses.iter().filter(|s| **s == "active").count(), 40);
    assert_eq!(statuses.iter().filter(|s| **s == "waitlisted").count(), 260);
}

/// The SQLite stick keeps the same invariants, and once it is killed its
/// database holds the rule's five records for every join it acknowledged:
/// a fact, a membership, an answer and an outbox row each, and the event's
/// counts as of the last. A floor that wrote less would flatter Turnout.
#[actix_web::test]
async fn the_sqlite_stick_has_every_acknowledged_join_committed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("joins.db");
    small_hot_join_on_the_stick(&["--sqlite", file.to_str().unwrap()]).await;

    let db = rusqlite::Connection::open(&file).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM facts"), 300);
    assert_eq!(count("SELECT COUNT(*) FROM answers"), 300);
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'"),
        300
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM memberships WHERE status = 'active'"),
        40
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM memberships WHERE status = 'waitlisted'"),
        260
    );
    let places: Vec<i64> = db
        .prepare("SELECT position FROM memberships WHERE status = 'waitlisted' ORDER BY position")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(places, (1..=260).collect::<Vec<i64>>());
    let counts: (i64, i64, i64) = db
        .query_row(
            "SELECT active_count, waitlist_count, version FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(counts, (40, 260, 300));
}

/// The bare-broadcast stick delivers every update to every client, as the
/// same tool checks Turnout's fan-out.
#[actix_web::test]
async fn the_broadcast_stick_reaches_every_client_in_every_round() {
    use turnout_loadtest::scenarios::ws_fanout::{self, WsFanout};

    let (mut stick, target) = start_stick(env!("CARGO_BIN_EXE_ws-stick"), &[]).await;
    let report = ws_fanout::run(WsFanout {
        common: common_options(target),
        clients: 40,
        rounds: 3,
        source_addresses: 2,
        pause_ms: 0,
    })
    .await;
    let _ = stick.kill();
    let _ = stick.wait();
    let report = report.unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.outcomes.get("201"), Some(&3));
}

/// The small hot join against `http-stick` started with `args`, killed
/// once the load is done: every check passes and every user got a 201.
async fn small_hot_join_on_the_stick(args: &[&str]) {
    let args: Vec<&str> = ["--jwt-key", KEY].iter().chain(args).copied().collect();
    let (mut stick, target) = start_stick(env!("CARGO_BIN_EXE_http-stick"), &args).await;
    let report = small_hot_join(target).await;
    let _ = stick.kill();
    let _ = stick.wait();
    let report = report.unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.outcomes.get("201"), Some(&300));
}

/// Starts a measuring-stick binary on a port of its own; its base URL once
/// it answers.
async fn start_stick(binary: &str, args: &[&str]) -> (std::process::Child, String) {
    let port = turnout::testing::reserved_port();
    let bind = format!("127.0.0.1:{port}");
    let stick = std::process::Command::new(binary)
        .args(["--bind", &bind])
        .args(args)
        .spawn()
        .unwrap();
    let target = format!("http://{bind}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .post(format!("{target}/v1/venues"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (stick, target)
}

/// A run against a server with its rate limits on mostly measures them: the
/// report says so, and how to start the server instead.
#[actix_web::test]
async fn a_run_mostly_rate_limited_warns_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, true).await;
    let report = small_hot_join(target).await.unwrap();
    assert!(report.outcomes.get("429").copied().unwrap_or(0) > 150);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("TURNOUT_RATE_LIMITS__ENABLED=false"));
}

/// The row-lock baseline is a fair comparison only if it is correct too.
#[tokio::test]
async fn the_rowlock_baseline_keeps_every_invariant() {
    let Some(base) = std::env::var("TURNOUT_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("TURNOUT_TEST_POSTGRES_URL is not set: skipping the baseline test");
        return;
    };
    let url = turnout::testing::scratch_postgres_database(&base).await;

    let report = turnout_loadtest::baseline::hot_join(&url, 200, 30, 200)
        .await
        .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(
        report.outcomes.get("2xx committed"),
        Some(&200),
        "{:?}",
        report.outcomes
    );
}

/// Spread over several events at a fixed rate (open model): every event
/// keeps every invariant.
#[actix_web::test]
async fn a_small_spread_join_at_a_fixed_rate_keeps_every_invariant() {
    use turnout_loadtest::scenarios::spread_join::{self, SpreadJoin};

    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;
    let report = spread_join::run(SpreadJoin {
        common: common_options(target),
        events: 4,
        users: 200,
        capacity: 30,
        rate: Some(400.0),
        concurrency: 50,
    })
    .await
    .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.outcomes.get("201"), Some(&200));
    assert_eq!(report.latency.count, 200);
}

/// The churn options at the command line's defaults (one-seat joins, every
/// event promoting at once in strict order), against `common`.
fn churn_defaults(common: Common, seed: u64) -> turnout_loadtest::scenarios::churn::Churn {
    turnout_loadtest::scenarios::churn::Churn {
        common,
        events: 50,
        ops: 200,
        capacity: 10,
        leave_ratio: 0.4,
        max_party: 1,
        offers: 0.0,
        first_fit: 0.0,
        answer_ratio: 0.5,
        decline_ratio: 0.3,
        offer_hold_secs: 600,
        seed,
        me_watchers: 0,
        source_addresses: 1,
    }
}

/// Joins and leaves on several events: every answer, roster and count
/// matches the tool's model.
#[actix_web::test]
async fn a_small_churn_matches_the_model() {
    use turnout_loadtest::scenarios::churn::{self, Churn};

    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;
    let report = churn::run(Churn {
        events: 4,
        ops: 60,
        capacity: 3,
        leave_ratio: 0.4,
        ..churn_defaults(common_options(target), 3)
    })
    .await
    .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.latency.count, 240);
    assert!(report.outcomes.contains_key("200"), "{:?}", report.outcomes);
}

/// Parties of one to three seats, half the events making offers (accepted
/// or declined as the run goes), half of each kind filling first-fit: every
/// answer, roster and count still matches the tool's model. Offers are held
/// far longer than the run; their running out is tested by the server's
/// own tests (tests/api/offers.rs). Each event's first 30 joiners watch
/// `me` and end told their places as the model has them: promoted,
/// offered, moved up the waitlist, left or declined.
#[actix_web::test]
async fn a_small_churn_with_parties_and_offers_matches_the_model() {
    use turnout_loadtest::scenarios::churn::{self, Churn};

    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;
    let report = churn::run(Churn {
        events: 4,
        ops: 80,
        capacity: 5,
        leave_ratio: 0.35,
        max_party: 3,
        offers: 0.5,
        first_fit: 0.5,
        me_watchers: 30,
        ..churn_defaults(common_options(target), 11)
    })
    .await
    .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.latency.count, 320);
    let operations = report
        .checks
        .iter()
        .find(|c| c.name == "operations (info)")
        .expect("the scenario tallies its operations");
    // "… N accepts, M declines; P parties promoted, O offered; …"
    let tally = |what: &str| -> u64 {
        let words: Vec<&str> = operations.detail.split([' ', ',', ';']).collect();
        let at = words.iter().position(|w| *w == what).unwrap();
        words[at - 1].parse().unwrap()
    };
    // Parties were promoted (auto mode) and offered, offers accepted and
    // declined.
    for what in ["parties", "offered", "accepts", "declines"] {
        assert!(tally(what) > 0, "no {what}: {}", operations.detail);
    }
    assert!(
        operations
            .detail
            .contains("2 events in offer mode, 2 first-fit"),
        "{}",
        operations.detail
    );
    // The watchers ended active, waiting, gone and refused (an offer is
    // answered within a few operations, so few end holding one): the
    // check covered each way a place ends.
    let watched = report
        .checks
        .iter()
        .find(|c| c.name.starts_with("every watcher of me was told"))
        .expect("the scenario checks its watchers");
    for status in ["active", "waitlisted", "left", "declined"] {
        assert!(
            watched.detail.contains(&format!(" {status}")),
            "no watcher ended {status}: {}",
            watched.detail
        );
    }
}

/// Through two nodes of a cluster, round-robin: every answer still matches
/// the model (each event decided by one actor, whichever node was called),
/// and the report counts each node's answers. With Redis linking the
/// nodes, each event's first 20 joiners watch `me`, half of them on the
/// node that does not hold the event, and end told their places as the
/// model has them.
#[actix_web::test]
async fn a_churn_through_two_nodes_matches_the_model() {
    use turnout_loadtest::scenarios::churn::{self, Churn};

    let dir = tempfile::tempdir().unwrap();
    let Some(targets) = common::cluster(&dir, KEY, 2).await else {
        eprintln!("TURNOUT_TEST_POSTGRES_URL is not set: skipping the two-node churn");
        return;
    };
    if common::redis_url().is_none() {
        eprintln!("TURNOUT_TEST_REDIS_URL is not set: the two-node churn watches no `me`");
    }
    let mut options = common_options(targets[0].clone());
    options.targets = targets.clone();
    let report = churn::run(Churn {
        events: 6,
        ops: 40,
        capacity: 3,
        leave_ratio: 0.4,
        me_watchers: if common::redis_url().is_some() { 20 } else { 0 },
        ..churn_defaults(options, 5)
    })
    .await
    .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.by_target.len(), 2, "{:?}", report.by_target);
    for target in &targets {
        let answered: u64 = report.by_target[target].values().sum();
        assert!(answered > 0, "{target} took part: {:?}", report.by_target);
    }
}

/// Reads, joins and subscribers together: the joins keep every event's
/// invariants, no read shows an overbooking, every subscriber sees each
/// update once, in order, and ends at its event's counts, and every person
/// watching `me` is told their place (active or waiting) as their join was
/// answered.
#[actix_web::test]
async fn a_small_mixed_load_keeps_every_invariant() {
    use turnout_loadtest::scenarios::mixed::{self, Mixed};

    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;
    let report = mixed::run(Mixed {
        common: common_options(target),
        events: 3,
        capacity: 20,
        duration: 1.0,
        join_rate: 120.0,
        read_rate: 200.0,
        list_every: 4,
        subscribers: 30,
        me_watchers: 20,
        source_addresses: 1,
        concurrency: 50,
    })
    .await
    .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.outcomes.get("201"), Some(&120));
    assert_eq!(report.outcomes.get("200"), Some(&200));
    let subscribers = report
        .checks
        .iter()
        .find(|c| c.name == "every subscriber saw each update once, in order")
        .expect("the subscriber check ran");
    let updates: u64 = subscribers
        .detail
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        updates >= 30,
        "each of the 30 subscribers saw its event fill: {}",
        subscribers.detail
    );
    let watchers = report
        .checks
        .iter()
        .find(|c| c.name == "every watcher of me was told its place as its join was answered")
        .expect("the me check ran");
    assert!(
        watchers.detail.starts_with("0/20 not told"),
        "{}",
        watchers.detail
    );
}

/// Clients spread over two source addresses, with idle spells between the
/// rounds: every round's update reaches every client.
#[actix_web::test]
async fn a_small_ws_fanout_reaches_every_client_in_every_round() {
    use turnout_loadtest::scenarios::ws_fanout::{self, WsFanout};

    let dir = tempfile::tempdir().unwrap();
    let target = common::server(&dir, KEY, false).await;
    let report = ws_fanout::run(WsFanout {
        common: common_options(target),
        clients: 40,
        rounds: 3,
        source_addresses: 2,
        pause_ms: 100,
    })
    .await
    .unwrap();
    assert_every_check_passed(&report);
    assert_eq!(report.outcomes.get("201"), Some(&3));
    let rounds = report
        .checks
        .iter()
        .find(|c| c.name == "every round reached every client")
        .expect("the rounds check ran");
    assert_eq!(rounds.detail, "3/3 rounds complete");
}
