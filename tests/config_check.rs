//! Configuration mistakes are reported, through the real binary: an unknown
//! key in a file or a misspelt `TURNOUT_…` variable is named with the
//! setting it most likely meant; `turnout config check` exits non-zero on
//! one; production refuses to start with one; development warns.

use std::process::{Command, Output};

/// The binary with `args`, `env` and none of this process's `TURNOUT_…`
/// variables (the test suite's own would be mistakes too).
fn turnout(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnout"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("TURNOUT_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .env("TURNOUT_LOG_LEVEL", "warn")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_prints_the_settings_without_secrets() {
    let checked = turnout(
        &["config", "check"],
        &[
            (
                "TURNOUT_DATABASE_URL",
                "postgres://app:hunter2-secret@db:5432/turnout",
            ),
            (
                "TURNOUT_JWT_SECRETS",
                "a-signing-key-nobody-may-see-0123456789",
            ),
            ("TURNOUT_HTTP__WRITE_TIMEOUT_MS", "2500"),
        ],
    );
    let (stdout, stderr) = (text(&checked.stdout), text(&checked.stderr));
    assert!(checked.status.success(), "{stderr}");
    assert!(stdout.contains("write_timeout_ms: 2500"), "{stdout}");
    assert!(
        stdout.contains("database: postgres://app:***@db:5432/turnout"),
        "where the database is, without its password: {stdout}"
    );
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("nobody-may-see"),
        "{stdout}"
    );
    assert!(stderr.contains("the configuration is valid"), "{stderr}");
}

#[test]
fn a_misspelt_key_in_a_file_or_a_variable_is_named_with_its_nearest_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("turnout.toml");
    std::fs::write(&file, "[http]\nwrite_timout_ms = 2500\n").unwrap();
    let checked = turnout(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[
            ("TURNOUT_CLUSTER__SHARD", "64"),
            // What Kubernetes sets for a Service named turnout: not ours.
            ("TURNOUT_SERVICE_HOST", "10.0.0.7"),
        ],
    );
    let stderr = text(&checked.stderr);
    assert_eq!(checked.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: `http.write_timout_ms` is not a setting; did you mean `http.write_timeout_ms`?"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "error: TURNOUT_CLUSTER__SHARD is not a setting; did you mean TURNOUT_CLUSTER__SHARDS?"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: TURNOUT_SERVICE_HOST is not a setting"),
        "{stderr}"
    );
}

#[test]
fn production_refuses_to_start_with_an_unknown_setting_and_development_warns() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let strong = "6f1c9d2a8b7e4035a1c2d3e4f5061728394a5b6c7d8e9f00";
    let refused = turnout(
        &["migrate"],
        &[
            ("TURNOUT_ENV", "production"),
            ("TURNOUT_JWT_SECRETS", strong),
            ("TURNOUT_DATABASE_URL", &database),
            ("TURNOUT_RATE_LIMITS__JOINS_PER_USR_PER_MINUTE", "5"),
        ],
    );
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("refuses unknown settings")
            && stderr.contains("did you mean TURNOUT_RATE_LIMITS__JOINS_PER_USER_PER_MINUTE?"),
        "{stderr}"
    );

    let warned = turnout(
        &["migrate"],
        &[
            ("TURNOUT_DATABASE_URL", &database),
            ("TURNOUT_DATA_DIR", dir.path().to_str().unwrap()),
            ("TURNOUT_RATE_LIMITS__JOINS_PER_USR_PER_MINUTE", "5"),
        ],
    );
    let logs = format!("{}{}", text(&warned.stdout), text(&warned.stderr));
    assert!(warned.status.success(), "{logs}");
    assert!(
        logs.contains("ignoring an unknown setting")
            && logs.contains("TURNOUT_RATE_LIMITS__JOINS_PER_USR_PER_MINUTE"),
        "{logs}"
    );
}

/// Lists come from a variable comma-separated, one item or several; a
/// signing key's commas stay its own (the key list is split later).
#[test]
fn list_settings_come_from_variables_comma_separated() {
    let checked = turnout(
        &["config", "check"],
        &[
            (
                "TURNOUT_REALTIME__ALLOWED_ORIGINS",
                "https://kiosk.example.org, https://app.example.org",
            ),
            ("TURNOUT_HTTP__CORS_ORIGINS", "https://app.example.org"),
            ("TURNOUT_METRICS__ALLOWED", "10.0.0.7,::1"),
            ("TURNOUT_RATE_LIMITS__TRUSTED_PROXIES", "10.0.0.2, 10.0.0.3"),
            (
                "TURNOUT_JWT_SECRETS",
                "first-key-0123456789abcdef0123456789,second-key-0123456789abcdef012345",
            ),
        ],
    );
    let (stdout, stderr) = (text(&checked.stdout), text(&checked.stderr));
    assert!(checked.status.success(), "{stderr}");
    // The settings as `{:#?}` prints them, without its line breaks.
    let printed: String = stdout.split_whitespace().collect();
    for expected in [
        r#"allowed_origins:["https://kiosk.example.org","https://app.example.org",]"#,
        r#"cors_origins:["https://app.example.org",]"#,
        "allowed:[10.0.0.7,::1,]",
        "trusted_proxies:[10.0.0.2,10.0.0.3,]",
    ] {
        assert!(printed.contains(expected), "{expected} in {stdout}");
    }
    assert!(
        !stdout.contains("\" https://"),
        "items are trimmed: {stdout}"
    );
}
