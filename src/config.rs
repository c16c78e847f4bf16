//! Settings, layered: the compiled-in `config/default.toml`, then an optional
//! file, then `TURNOUT_*` environment variables, then command-line flags.

use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::store::PoolSettings;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub env: Environment,
    pub bind: String,
    /// May carry a password: printed only through [`redact_url`].
    pub database_url: SecretString,
    pub redis_url: Option<SecretString>,
    pub data_dir: String,
    pub log_format: String,
    pub log_level: String,
    /// Comma-separated HS256 keys; the first signs, any verifies.
    pub jwt_secrets: Option<SecretString>,
    pub auth: AuthSettings,
    pub database: PoolSettings,
    pub journal: JournalConfig,
    pub actors: ActorConfig,
    pub http: HttpSettings,
    pub idempotency: IdempotencySettings,
    pub offers: OfferSettings,
    pub realtime: crate::realtime::RealtimeSettings,
    pub recommendations: crate::recommendations::RecommendationsConfig,
    pub outbox: crate::outbox::OutboxSettings,
    pub rate_limits: crate::http::rate_limit::RateLimitSettings,
    pub quotas: QuotaSettings,
    pub metrics: crate::http::ops::MetricsSettings,
    pub cluster: crate::cluster::ClusterSettings,
    pub traces: crate::telemetry::TraceSettings,
    /// Keys the sources gave that no setting has (a typo, an old name):
    /// warned about at start, refused in production.
    #[serde(skip)]
    pub unknown: Vec<UnknownSetting>,
}

/// A key a settings file or a `TURNOUT_…` variable gave that no setting
/// has, with the known key nearest to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    /// Dotted, as in a file: `http.write_timout_ms`.
    pub key: String,
    /// The variable that gave it, if one did.
    pub variable: Option<String>,
    pub nearest: Option<String>,
}

impl UnknownSetting {
    /// From a file, inside a known section, or close to a known key: meant
    /// as a setting. A variable with an unrelated name may be someone
    /// else's — Kubernetes gives a Service named `turnout` variables such
    /// as `TURNOUT_SERVICE_HOST` — so it is only warned about.
    pub fn is_surely_a_mistake(&self) -> bool {
        self.variable.is_none() || self.key.contains('.') || self.nearest.is_some()
    }
}

impl std::fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variable {
            Some(variable) => write!(f, "{variable} is not a setting")?,
            None => write!(f, "`{}` is not a setting", self.key)?,
        }
        match (&self.nearest, &self.variable) {
            (Some(nearest), Some(_)) => write!(f, "; did you mean {}?", variable_name(nearest)),
            (Some(nearest), None) => write!(f, "; did you mean `{nearest}`?"),
            (None, _) => write!(f, " (config/default.toml lists every setting)"),
        }
    }
}

/// The variable that sets a dotted key: `http.write_timeout_ms` →
/// `TURNOUT_HTTP__WRITE_TIMEOUT_MS`.
fn variable_name(key: &str) -> String {
    format!("TURNOUT_{}", key.replace('.', "__").to_uppercase())
}

/// Every key config/default.toml names, set or shown commented out
/// (`# redis_url = …`): the file is the list of settings.
fn known_keys() -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    let is_key = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    for line in DEFAULTS.lines().map(str::trim) {
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']'))
            && name.split('.').all(is_key)
        {
            section = name.to_owned();
            keys.push(section.clone());
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if is_key(key) {
            keys.push(if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    keys
}

/// The known key a mistaken one most likely meant, if any is close.
fn nearest(key: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), k))
        .filter(|(distance, _)| *distance <= (key.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k.clone())
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub issuer: String,
    pub token_ttl_secs: u64,
    /// Tokens whose `exp - iat` is longer are refused.
    pub max_token_lifetime_secs: u64,
    pub lockout: crate::auth::LockoutSettings,
    pub hashing: crate::auth::HashingSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JournalConfig {
    pub max_pending: usize,
    pub max_batch: usize,
    pub commit_timeout_ms: u64,
    pub linger_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActorConfig {
    pub mailbox_capacity: usize,
    pub idle_timeout_secs: u64,
    pub snapshot_every: u64,
    pub threads: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub write_timeout_ms: u64,
    /// Browser origins allowed by CORS; `*` means any (not in production).
    #[serde(deserialize_with = "trimmed_list")]
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    /// A request body must have arrived this long after it is first read,
    /// or 408; 0: no deadline.
    pub body_timeout_secs: u64,
    /// Open HTTP connections per client address; 0: no cap.
    pub max_connections_per_ip: usize,
    pub workers: usize,
    pub shutdown_timeout_secs: u64,
    /// Sent data left unacknowledged this long drops the connection (the
    /// socket's `TCP_USER_TIMEOUT`); 0 keeps the system's default.
    pub tcp_user_timeout_secs: u64,
    pub breaker: crate::http::breaker::BreakerSettings,
    /// Terminate TLS here (HTTPS and WSS) instead of at a proxy.
    pub tls: Option<TlsSettings>,
    /// Events whose `GET /v1/events/{id}` answer is held in memory.
    pub cached_events: usize,
    /// How long a stopping node waits for its open connections to close.
    pub drain_secs: u64,
}

/// `[quotas]`: what one account may own at once; 0: no cap. Each created
/// row is memory on every node (the catalog of open events, the listings)
/// and rows in the database, so a stranger's account must not grow them
/// without bound. Each count and its create are one step on a node
/// (`http::quotas`). Like the rate limits, they are abuse limits, and
/// `rate_limits.enabled = false` (a load test from one machine) lifts them
/// too.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct QuotaSettings {
    /// Events not yet started and not cancelled, drafts included.
    pub upcoming_events_per_owner: i64,
    pub venues_per_owner: i64,
    /// Accounts a venue's owner names to put events on it (a venue's
    /// organiser list is answered whole).
    pub organizers_per_venue: i64,
}

impl Settings {
    /// The quotas in force: none while the rate limits are off.
    pub fn quotas_in_force(&self) -> QuotaSettings {
        match self.rate_limits.enabled {
            true => self.quotas,
            false => QuotaSettings::default(),
        }
    }
}

/// `[http.tls]`: PEM files.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSettings {
    /// The certificate chain, leaf first.
    pub cert_path: String,
    pub key_path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    pub ttl_hours: i64,
    pub purge_interval_secs: u64,
}

/// Waitlist offers: how the server keeps their deadlines.
#[derive(Debug, Clone, Deserialize)]
pub struct OfferSettings {
    /// How often the server looks for offers running out within the next
    /// two sweeps, and wakes their events (after a restart or a shard
    /// moving here, nobody else would): each event then keeps its own
    /// deadline to the millisecond.
    pub sweep_secs: u64,
    /// How long before an offer runs out its holder is warned on the `me`
    /// channel.
    pub warn_before_secs: u64,
}

impl OfferSettings {
    pub fn sweep_period(&self) -> Duration {
        Duration::from_secs(self.sweep_secs.max(1))
    }

    /// How far ahead each sweep looks: two sweeps.
    pub fn sweep_horizon(&self) -> Duration {
        self.sweep_period() * 2
    }

    /// How far ahead of an offer's deadline a sweep is sure to have woken
    /// its event: the last sweep before the deadline wakes it at least one
    /// sweep before. An idle event actor whose next deadline is further off
    /// may leave memory.
    pub fn woken_within(&self) -> Duration {
        self.sweep_horizon() + self.sweep_period()
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<String>,
    pub bind: Option<String>,
    pub database_url: Option<SecretString>,
    pub redis_url: Option<SecretString>,
}

/// The settings that hold lists, which a `TURNOUT_…` variable gives
/// comma-separated (`TURNOUT_HTTP__CORS_ORIGINS=https://a.example,https://b.example`).
const LIST_SETTINGS: [&str; 4] = [
    "http.cors_origins",
    "realtime.allowed_origins",
    "rate_limits.trusted_proxies",
    "metrics.allowed",
];

/// For each of [`LIST_SETTINGS`] (`#[serde(deserialize_with)]`): its items
/// trimmed, then parsed, so `a, b` in a variable is `a` and `b`, not `a`
/// and ` b`, whatever the items are.
pub fn trimmed_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|item| {
            let item = item.trim();
            item.parse()
                .map_err(|e| serde::de::Error::custom(format!("{item:?}: {e}")))
        })
        .collect()
}

impl Settings {
    pub fn load(overrides: &Overrides) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = &overrides.config_file {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let mut variables = config::Environment::with_prefix("TURNOUT")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        // Lists in a variable are comma-separated; every other value stays
        // one string, commas and all (the key lists are split later).
        for key in LIST_SETTINGS {
            variables = variables.with_list_parse_key(key);
        }
        builder = builder.add_source(variables);
        let secret =
            |url: &Option<SecretString>| url.as_ref().map(|u| u.expose_secret().to_owned());
        for (key, value) in [
            ("bind", overrides.bind.clone()),
            ("database_url", secret(&overrides.database_url)),
            ("redis_url", secret(&overrides.redis_url)),
        ] {
            builder = builder.set_override_option(key, value)?;
        }
        let mut ignored = Vec::new();
        let mut settings: Settings = serde_ignored::deserialize(builder.build()?, |path| {
            ignored.push(path.to_string());
        })
        .context("invalid configuration")?;
        let known = known_keys();
        settings.unknown = ignored
            .into_iter()
            .map(|key| UnknownSetting {
                variable: Some(variable_name(&key)).filter(|v| std::env::var_os(v).is_some()),
                nearest: nearest(&key, &known),
                key,
            })
            .collect();
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 366 * 24 * 3600;
        let refused: Vec<&UnknownSetting> = self
            .unknown
            .iter()
            .filter(|u| u.is_surely_a_mistake())
            .collect();
        if self.env == Environment::Production && !refused.is_empty() {
            let mistakes: Vec<String> = refused.iter().map(ToString::to_string).collect();
            anyhow::bail!(
                "TURNOUT_ENV=production refuses unknown settings: {}",
                mistakes.join("; ")
            );
        }
        if self.env == Environment::Production {
            let keys = self.jwt_keys();
            anyhow::ensure!(
                !keys.is_empty(),
                "TURNOUT_ENV=production needs TURNOUT_JWT_SECRETS (comma-separated keys of at least 32 bytes)"
            );
            strong_keys(&keys, "TURNOUT_JWT_SECRETS")?;
            // The nodes' keys sign forwarded commands, which act as any
            // user: as strong as the users' own.
            let internal = self.cluster.internal_keys();
            strong_keys(
                &internal,
                "cluster.internal_secrets (TURNOUT_CLUSTER__INTERNAL_SECRETS)",
            )?;
            // And not the users' keys, which an identity provider or a load
            // tester may hold: a node's command skips the checks of a
            // user's request (venue rights, rate limits, text). On SQLite
            // the node is alone and forwards nothing.
            if !crate::store::is_embedded(self.database_url.expose_secret()) {
                anyhow::ensure!(
                    !internal.is_empty(),
                    "TURNOUT_ENV=production on Postgres needs \
                     TURNOUT_CLUSTER__INTERNAL_SECRETS, keys of the nodes' own: \
                     without them nodes sign forwarded commands with the JWT keys"
                );
                let is_a_jwt_key =
                    |i: &SecretString| keys.iter().any(|k| k.expose_secret() == i.expose_secret());
                anyhow::ensure!(
                    !is_a_jwt_key(&internal[0]),
                    "cluster.internal_secrets must not sign with a key of TURNOUT_JWT_SECRETS"
                );
                // Later keys only verify: a JWT key among them lets nodes
                // of a release that signed with it be rolled over.
                if internal[1..].iter().any(is_a_jwt_key) {
                    eprintln!(
                        "warning: cluster.internal_secrets still admits tokens signed with a JWT \
                         key: drop it once every node signs with the first key"
                    );
                }
            }
            anyhow::ensure!(
                !self.http.cors_origins.iter().any(|o| o == "*")
                    && !self.realtime.allowed_origins.iter().any(|o| o == "*"),
                "a wildcard origin (\"*\") is refused in production: list the origins"
            );
        }
        anyhow::ensure!(
            self.http.max_body_bytes > 0,
            "http.max_body_bytes must be positive"
        );
        anyhow::ensure!(
            self.realtime.hub_threads > 0,
            "realtime.hub_threads must be at least 1"
        );
        anyhow::ensure!(
            self.realtime.venue_hubs_percent <= 100,
            "realtime.venue_hubs_percent ({}) is a share of realtime.max_hubs: at most 100",
            self.realtime.venue_hubs_percent
        );
        // Values that parse but would break the server, not configure it.
        for (fine, refusal) in [
            (
                self.journal.max_batch > 0,
                "journal.max_batch must be at least 1 (a commit of none takes no appends)",
            ),
            (
                self.journal.max_pending > 0,
                "journal.max_pending must be at least 1",
            ),
            (
                self.journal.commit_timeout_ms >= 100,
                "journal.commit_timeout_ms must be at least 100 (a commit needs a round trip \
                 and a sync to disk)",
            ),
            (
                self.database.max_connections > 0,
                "database.max_connections must be at least 1",
            ),
            (
                self.database.acquire_timeout_ms > 0,
                "database.acquire_timeout_ms must be positive",
            ),
            (
                self.database.idle_timeout_secs > 0,
                "database.idle_timeout_secs must be positive (0 would close every idle \
                 connection at once, not keep them)",
            ),
            (
                self.idempotency.ttl_hours > 0,
                "idempotency.ttl_hours must be positive (a key kept for no time lets a \
                 retry run twice)",
            ),
            (
                self.idempotency.purge_interval_secs > 0,
                "idempotency.purge_interval_secs must be positive",
            ),
            (self.outbox.batch > 0, "outbox.batch must be at least 1"),
            (
                self.outbox.poll_ms > 0,
                "outbox.poll_ms must be positive (0 would ask the database without pause)",
            ),
            (
                self.cluster.heartbeat_ms > 0,
                "cluster.heartbeat_ms must be positive",
            ),
            (
                self.auth.lockout.lock_after > 0,
                "auth.lockout.lock_after must be at least 1 (0 would lock every login out)",
            ),
            (
                self.auth.hashing.concurrency <= 64,
                "auth.hashing.concurrency must be at most 64 (0: one per core): each \
                 password hash takes about 19 MiB while it runs",
            ),
            (
                self.quotas.upcoming_events_per_owner >= 0
                    && self.quotas.venues_per_owner >= 0
                    && self.quotas.organizers_per_venue >= 0,
                "quotas must be 0 (no cap) or more",
            ),
            (
                self.auth.lockout.lock_secs > 0,
                "auth.lockout.lock_secs must be positive (0 would count no failure, and \
                 lock nothing out)",
            ),
            (
                self.auth.token_ttl_secs > 0
                    && self.auth.token_ttl_secs <= self.auth.max_token_lifetime_secs,
                "auth.token_ttl_secs must be positive and at most \
                 auth.max_token_lifetime_secs (the server refuses longer-lived tokens)",
            ),
            (
                self.auth.max_token_lifetime_secs <= MAX_TOKEN_LIFETIME_SECS,
                "auth.max_token_lifetime_secs must be at most ten years",
            ),
            (
                self.http.write_timeout_ms > 0,
                "http.write_timeout_ms must be positive (0 would fail every write)",
            ),
            (
                self.realtime.heartbeat_secs > 0,
                "realtime.heartbeat_secs must be positive (0 would ping without pause)",
            ),
            (
                self.realtime.client_timeout_secs > self.realtime.heartbeat_secs,
                "realtime.client_timeout_secs must be longer than realtime.heartbeat_secs \
                 (a client answering every ping would be closed as silent)",
            ),
            (
                self.realtime.max_frame_bytes >= 1024,
                "realtime.max_frame_bytes must be at least 1024 (an auth frame carries a token)",
            ),
            (
                self.realtime.max_queued_bytes >= 16 * 1024,
                "realtime.max_queued_bytes must be at least 16384 (a few updates' worth: \
                 smaller, a client that lags a moment is closed as slow)",
            ),
            (
                self.recommendations.radius_km > 0.0 && self.recommendations.radius_km <= 200.0,
                "recommendations.radius_km must be more than 0 and at most 200",
            ),
            (
                self.recommendations.debounce_ms > 0,
                "recommendations.debounce_ms must be positive (0 would re-rank without pause)",
            ),
            (
                self.recommendations.refresh_secs > 0,
                "recommendations.refresh_secs must be positive",
            ),
        ] {
            anyhow::ensure!(fine, "{refusal}");
        }
        // A node believes a lease for 0.9 of the TTL after it asked to renew
        // it, and renews with each heartbeat: without room for a slow
        // renewal or two, its shards would stop serving between renewals.
        anyhow::ensure!(
            self.cluster.lease_ttl_ms >= 2 * self.cluster.heartbeat_ms,
            "cluster.lease_ttl_ms ({}) must be at least twice cluster.heartbeat_ms ({})",
            self.cluster.lease_ttl_ms,
            self.cluster.heartbeat_ms
        );
        self.traces.validate()
    }

    /// The configured JWT keys, first (signing) key first.
    pub fn jwt_keys(&self) -> Vec<SecretString> {
        key_list(self.jwt_secrets.as_ref())
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.http.write_timeout_ms)
    }

    /// How long the journal waits for a commit.
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.journal.commit_timeout_ms)
    }
}

/// A comma-separated list of keys, as a setting holds it, in order (the
/// first signs, any verifies); none when unset.
pub fn key_list(setting: Option<&SecretString>) -> Vec<SecretString> {
    setting
        .map(|s| {
            s.expose_secret()
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| SecretString::from(k.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Production's rule for signing keys: each at least 32 bytes, and none
/// an example or of too few distinct characters.
fn strong_keys(keys: &[SecretString], setting: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        keys.iter().all(|k| k.expose_secret().len() >= 32),
        "every key in {setting} must be at least 32 bytes in production"
    );
    anyhow::ensure!(
        keys.iter().all(|k| !weak_key(k.expose_secret())),
        "a key in {setting} is weak (an example from the docs, or too few \
         distinct characters): generate one, e.g. `openssl rand -hex 32`"
    );
    Ok(())
}

/// A key from the docs and examples, or one with too little variety to be
/// random (`aaaa…`, `abab…`).
fn weak_key(key: &str) -> bool {
    const EXAMPLES: [&str; 3] = ["bench-key", "change-me", "loadtest-key"];
    let distinct: std::collections::HashSet<char> = key.chars().collect();
    distinct.len() < 10 || EXAMPLES.iter().any(|e| key.contains(e))
}

/// A URL fit for logs: the password, if any, replaced, and the query
/// string dropped (drivers take secrets there too: `?password=…`,
/// `?sslpassword=…`). The user info runs to the last `@` before the query:
/// a password written unencoded may hold `/`, `?` or `@`, and a base64 one
/// often does, while a query's `@` (`?password=se@cret`) is no part of it.
/// The query is the first `?` after the first `@`, or the first `?` at all.
/// A `?` before the first `@` may be a password's or a query's (one with no
/// user info, `?password=p@ss`): which, the URL does not say, so nothing
/// but the scheme is printed.
pub fn redact_url(url: &SecretString) -> String {
    let raw = url.expose_secret();
    let (prefix, rest) = match raw.find("://") {
        Some(scheme_end) => {
            let (scheme, rest) = raw.split_at(scheme_end + 3);
            if let (Some(at), Some(query)) = (rest.find('@'), rest.find('?'))
                && query < at
            {
                return format!("{scheme}***");
            }
            let query = rest
                .find('@')
                .and_then(|at| rest[at..].find('?').map(|q| at + q))
                .unwrap_or(rest.len());
            match rest[..query].rfind('@') {
                // Without a password the user info may be a token itself
                // (`redis://<token>@host`).
                Some(at) => match rest[..at].split_once(':') {
                    Some((user, _)) => (format!("{scheme}{user}:***@"), &rest[at + 1..]),
                    None => (format!("{scheme}***@"), &rest[at + 1..]),
                },
                None => (scheme.to_owned(), rest),
            }
        }
        // No scheme: whatever stands before an `@` may be a password.
        None if raw.contains('@') => return "***".to_owned(),
        None => (String::new(), raw),
    };
    match rest.split_once('?') {
        Some((base, _)) => format!("{prefix}{base}?***"),
        None => format!("{prefix}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_flags_win() {
        let settings = Settings::load(&Overrides {
            bind: Some("127.0.0.1:9999".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(settings.bind, "127.0.0.1:9999");
        assert!(settings.database_url.expose_secret().starts_with("sqlite:"));
    }

    #[test]
    fn production_refuses_weak_keys_and_wildcard_origins() {
        let production = |keys: &str, cors: &[&str]| {
            let mut settings = Settings::load(&Overrides::default()).unwrap();
            // The test suite's own TURNOUT_TEST_… variables are not the point here.
            settings.unknown.clear();
            settings.env = Environment::Production;
            settings.jwt_secrets = Some(SecretString::from(keys.to_owned()));
            settings.http.cors_origins = cors.iter().map(|o| (*o).to_owned()).collect();
            settings.validate()
        };
        let strong = "6f1c9d2a8b7e4035a1c2d3e4f5061728394a5b6c7d8e9f00";
        assert!(production(strong, &["https://app.example.org"]).is_ok());
        assert!(production("short", &[]).is_err());
        assert!(production(&"a".repeat(40), &[]).is_err());
        assert!(production("bench-key-bench-key-bench-key-bench", &[]).is_err());
        assert!(production(&format!("{strong},{}", "ab".repeat(20)), &[]).is_err());
        let wildcard = production(strong, &["*"]).unwrap_err().to_string();
        assert!(wildcard.contains("wildcard"), "{wildcard}");
    }

    #[test]
    fn production_refuses_weak_keys_between_nodes() {
        let production = |internal: &str| {
            let mut settings = Settings::load(&Overrides::default()).unwrap();
            settings.unknown.clear();
            settings.env = Environment::Production;
            settings.jwt_secrets = Some(SecretString::from(
                "6f1c9d2a8b7e4035a1c2d3e4f5061728394a5b6c7d8e9f00".to_owned(),
            ));
            settings.cluster.internal_secrets = Some(SecretString::from(internal.to_owned()));
            settings.validate()
        };
        assert!(production("0a9b8c7d6e5f40312233445566778899aabbccddeeff0011").is_ok());
        let short = production("secret").unwrap_err().to_string();
        assert!(short.contains("cluster.internal_secrets"), "{short}");
        assert!(production("change-me-change-me-change-me-change-me").is_err());
    }

    /// On Postgres, where nodes forward commands to each other, production
    /// wants keys of the nodes' own, not the users'.
    #[test]
    fn production_on_postgres_wants_the_nodes_own_keys() {
        let jwt = "6f1c9d2a8b7e4035a1c2d3e4f5061728394a5b6c7d8e9f00";
        let production = |database: &str, internal: Option<&str>| {
            let mut settings = Settings::load(&Overrides::default()).unwrap();
            settings.unknown.clear();
            settings.env = Environment::Production;
            settings.database_url = SecretString::from(database.to_owned());
            settings.jwt_secrets = Some(SecretString::from(jwt.to_owned()));
            settings.cluster.internal_secrets = internal.map(|k| SecretString::from(k.to_owned()));
            settings.validate().map_err(|e| e.to_string())
        };
        let postgres = "postgres://turnout@db/turnout";
        let missing = production(postgres, None).unwrap_err();
        assert!(
            missing.contains("TURNOUT_CLUSTER__INTERNAL_SECRETS"),
            "{missing}"
        );
        let shared = production(
            postgres,
            Some(&format!("{jwt},0a9b8c7d6e5f40312233445566778899aabbcc")),
        )
        .unwrap_err();
        assert!(shared.contains("must not sign with a key"), "{shared}");
        let rolling_over = format!("0a9b8c7d6e5f40312233445566778899aabbcc,{jwt}");
        assert!(
            production(postgres, Some(&rolling_over)).is_ok(),
            "a JWT key after the first only verifies"
        );
        assert!(
            production(
                postgres,
                Some("0a9b8c7d6e5f40312233445566778899aabbccddeeff0011")
            )
            .is_ok()
        );
        assert!(
            production("sqlite://turnout.db?mode=rwc", None).is_ok(),
            "alone on SQLite"
        );
    }

    #[test]
    fn values_that_would_break_the_server_are_refused() {
        let refused = |tweak: fn(&mut Settings)| {
            let mut settings = Settings::load(&Overrides::default()).unwrap();
            tweak(&mut settings);
            settings.validate().unwrap_err().to_string()
        };
        assert!(refused(|s| s.journal.max_batch = 0).contains("journal.max_batch"));
        assert!(refused(|s| s.journal.commit_timeout_ms = 0).contains("commit_timeout_ms"));
        assert!(refused(|s| s.database.max_connections = 0).contains("max_connections"));
        assert!(refused(|s| s.database.idle_timeout_secs = 0).contains("idle_timeout_secs"));
        assert!(refused(|s| s.idempotency.ttl_hours = -1).contains("ttl_hours"));
        assert!(refused(|s| s.idempotency.purge_interval_secs = 0).contains("purge_interval"));
        assert!(refused(|s| s.outbox.batch = -1).contains("outbox.batch"));
        assert!(refused(|s| s.outbox.poll_ms = 0).contains("outbox.poll_ms"));
        assert!(refused(|s| s.cluster.heartbeat_ms = 0).contains("heartbeat_ms"));
        assert!(refused(|s| s.auth.lockout.lock_after = 0).contains("lock_after"));
        assert!(refused(|s| s.auth.lockout.lock_secs = 0).contains("lock_secs"));
        assert!(refused(|s| s.auth.hashing.concurrency = 1000).contains("hashing.concurrency"));
        assert!(refused(|s| s.quotas.venues_per_owner = -1).contains("quotas"));
        assert!(refused(|s| s.auth.token_ttl_secs = 0).contains("token_ttl_secs"));
        assert!(refused(|s| s.auth.token_ttl_secs = u64::MAX).contains("token_ttl_secs"));
        assert!(refused(|s| s.auth.max_token_lifetime_secs = u64::MAX).contains("lifetime"));
        assert!(refused(|s| s.http.write_timeout_ms = 0).contains("write_timeout_ms"));
        assert!(refused(|s| s.realtime.heartbeat_secs = 0).contains("heartbeat_secs"));
        assert!(refused(|s| s.realtime.client_timeout_secs = 25).contains("client_timeout"));
        assert!(refused(|s| s.realtime.max_frame_bytes = 0).contains("max_frame_bytes"));
        assert!(refused(|s| s.realtime.venue_hubs_percent = 101).contains("venue_hubs_percent"));
        assert!(refused(|s| s.realtime.max_queued_bytes = 0).contains("max_queued_bytes"));
        assert!(refused(|s| s.recommendations.debounce_ms = 0).contains("debounce_ms"));
        assert!(refused(|s| s.recommendations.radius_km = 1000.0).contains("radius_km"));
        assert!(refused(|s| s.recommendations.refresh_secs = 0).contains("refresh_secs"));
    }

    #[test]
    fn hubs_need_a_thread() {
        let mut settings = Settings::load(&Overrides::default()).unwrap();
        settings.realtime.hub_threads = 0;
        let refused = settings.validate().unwrap_err().to_string();
        assert!(refused.contains("realtime.hub_threads"), "{refused}");
    }

    #[test]
    fn a_lease_outlives_two_heartbeats() {
        let mut settings = Settings::load(&Overrides::default()).unwrap();
        settings.cluster.lease_ttl_ms = 2 * settings.cluster.heartbeat_ms - 1;
        let refused = settings.validate().unwrap_err().to_string();
        assert!(refused.contains("cluster.lease_ttl_ms"), "{refused}");
        settings.cluster.lease_ttl_ms += 1;
        settings.validate().unwrap();
    }

    #[test]
    fn every_setting_is_known_and_a_typo_finds_its_setting() {
        let known = known_keys();
        for key in [
            "bind",
            "jwt_secrets",
            "redis_url",
            "http.write_timeout_ms",
            "http.tls.cert_path",
            "metrics.bind",
            "cluster.internal_secrets",
            "realtime.max_frame_bytes",
        ] {
            assert!(known.iter().any(|k| k == key), "{key} in {known:?}");
        }
        assert_eq!(
            nearest("http.write_timout_ms", &known).as_deref(),
            Some("http.write_timeout_ms")
        );
        assert_eq!(
            nearest("cluster.shard", &known).as_deref(),
            Some("cluster.shards")
        );
        assert_eq!(nearest("completely_unrelated_thing", &known), None);
        let typo = UnknownSetting {
            key: "http.write_timout_ms".into(),
            variable: Some("TURNOUT_HTTP__WRITE_TIMOUT_MS".into()),
            nearest: Some("http.write_timeout_ms".into()),
        };
        assert_eq!(
            typo.to_string(),
            "TURNOUT_HTTP__WRITE_TIMOUT_MS is not a setting; did you mean TURNOUT_HTTP__WRITE_TIMEOUT_MS?"
        );
    }

    #[test]
    fn production_refuses_unknown_settings() {
        let mut settings = Settings::load(&Overrides::default()).unwrap();
        settings.env = Environment::Production;
        settings.jwt_secrets = Some(SecretString::from(
            "6f1c9d2a8b7e4035a1c2d3e4f5061728394a5b6c7d8e9f00".to_owned(),
        ));
        settings.unknown = vec![UnknownSetting {
            key: "http.write_timout_ms".into(),
            variable: None,
            nearest: Some("http.write_timeout_ms".into()),
        }];
        let refused = settings.validate().unwrap_err().to_string();
        assert!(
            refused.contains(
                "`http.write_timout_ms` is not a setting; did you mean `http.write_timeout_ms`?"
            ),
            "{refused}"
        );
        settings.env = Environment::Development;
        assert!(
            settings.validate().is_ok(),
            "only warned about in development"
        );

        // A variable no setting is near, such as one Kubernetes sets for a
        // Service named turnout, is not refused.
        settings.env = Environment::Production;
        settings.unknown = vec![UnknownSetting {
            key: "service_host".into(),
            variable: Some("TURNOUT_SERVICE_HOST".into()),
            nearest: None,
        }];
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let overrides = Overrides {
            database_url: Some("postgres://app:hunter2@db:5432/x".into()),
            redis_url: Some("redis://:hunter2@cache:6379".into()),
            ..Overrides::default()
        };
        let mut settings = Settings::load(&overrides).unwrap();
        settings.traces.otlp_endpoint = Some("https://u:hunter2@otel.example/v1/traces".into());
        let printed = format!("{settings:?} {overrides:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            redact_url(&settings.database_url),
            "postgres://app:***@db:5432/x"
        );
        let in_query = SecretString::from("postgres://app@db/x?sslmode=require&password=hunter2");
        assert_eq!(redact_url(&in_query), "postgres://***@db/x?***");
        // A `?` before the first `@`: a password's, or a query's?
        for ambiguous in [
            "postgres://app:hun?ter2@db/x",
            "postgres://db:5432/x?sslmode=require&password=hun@ter2",
            "postgres:///x?host=/run/pg&password=hun@ter2",
        ] {
            assert_eq!(redact_url(&SecretString::from(ambiguous)), "postgres://***");
        }
        for schemeless in ["app:hunter2@db:5432/x", "postgres:/app:hunter2@db/x"] {
            assert_eq!(redact_url(&SecretString::from(schemeless)), "***");
        }
        // A base64 password, unencoded, as operators paste them.
        let slashed = SecretString::from("postgres://app:hu/n+t@r2=@db:5432/x");
        assert_eq!(redact_url(&slashed), "postgres://app:***@db:5432/x");
        let token_as_user = SecretString::from("rediss://s3cr3t-token@cache:6379".to_owned());
        assert_eq!(redact_url(&token_as_user), "rediss://***@cache:6379");
        let at_in_query = SecretString::from("postgres://app@db/x?password=se@cret");
        assert_eq!(redact_url(&at_in_query), "postgres://***@db/x?***");
        let embedded = SecretString::from("sqlite:data/turnout.db?mode=rwc");
        assert_eq!(redact_url(&embedded), "sqlite:data/turnout.db?***");
    }
}
