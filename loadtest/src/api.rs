//! A thin client for the Turnout API, and token minting for simulated users.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Mints HS256 tokens the server accepts, so a run can have hundreds of
/// thousands of users without registering each.
pub struct Minter {
    key: EncodingKey,
    issuer: String,
}

impl Minter {
    pub fn new(secret: &str, issuer: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer: issuer.to_owned(),
        }
    }

    pub fn token(&self, user: Uuid) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({ "sub": user, "iat": now, "exp": now + 6 * 3600, "iss": self.issuer });
        encode(&Header::default(), &claims, &self.key).expect("HS256 signing cannot fail")
    }
}

/// The API of one server, or of a cluster's nodes taken round-robin.
#[derive(Clone)]
pub struct Api {
    pub client: Client,
    targets: Arc<[Target]>,
    next: Arc<AtomicUsize>,
}

/// One server, and what its load steps were answered.
struct Target {
    base: String,
    outcomes: Mutex<BTreeMap<String, u64>>,
}

impl Api {
    /// `connections` kept open to each target.
    pub fn new(targets: &[String], connections: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(!targets.is_empty(), "--target is needed");
        let client = Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            client,
            targets: targets
                .iter()
                .map(|base| Target {
                    base: base.trim_end_matches('/').to_owned(),
                    outcomes: Mutex::default(),
                })
                .collect(),
            next: Arc::default(),
        })
    }

    /// The next target's index and base URL.
    fn pick(&self) -> (usize, &str) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        (i, &self.targets[i].base)
    }

    /// Counts a load step's answer (its status, or `error`) for target `i`.
    fn tally<T>(&self, i: usize, answer: &reqwest::Result<(StatusCode, T)>) {
        let outcome = match answer {
            Ok((status, _)) => status.as_u16().to_string(),
            Err(error) if error.is_timeout() => "timeout".into(),
            Err(error) if error.is_connect() => "connect".into(),
            Err(_) => "error".into(),
        };
        let mut outcomes = self.targets[i].outcomes.lock().expect("tally lock");
        *outcomes.entry(outcome).or_default() += 1;
    }

    /// With several targets, each one's load-step outcomes (joins, leaves,
    /// offer answers and reads); empty with one.
    pub fn outcomes_by_target(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        if self.targets.len() < 2 {
            return BTreeMap::new();
        }
        self.targets
            .iter()
            .map(|t| {
                (
                    t.base.clone(),
                    t.outcomes.lock().expect("tally lock").clone(),
                )
            })
            .collect()
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.pick().1))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        Ok(body["data"].clone())
    }

    /// A venue and a published event starting in a week.
    pub async fn published_event(&self, owner_token: &str, capacity: u64) -> anyhow::Result<Uuid> {
        Ok(self
            .published_event_at_venue(owner_token, capacity)
            .await?
            .0)
    }

    /// `count` published events, created 16 at a time (set-up, before the
    /// clock starts).
    pub async fn published_events(
        &self,
        owner_token: &str,
        capacity: u64,
        count: usize,
    ) -> anyhow::Result<Vec<Uuid>> {
        futures_util::stream::iter(0..count)
            .map(|_| self.published_event(owner_token, capacity))
            .buffered(16)
            .try_collect()
            .await
    }

    /// Like [`Api::published_event`], also returning the venue's id.
    pub async fn published_event_at_venue(
        &self,
        owner_token: &str,
        capacity: u64,
    ) -> anyhow::Result<(Uuid, Uuid)> {
        let venue = self.venue(owner_token).await?;
        let starts_at = chrono::Utc::now() + chrono::Duration::days(7);
        let id = self
            .publish_event(owner_token, venue, "Load test", starts_at, capacity)
            .await?;
        Ok((id, venue))
    }

    /// Like [`Api::published_event`], with waitlist `settings` (an object of
    /// `waitlist_mode`, `waitlist_fill`, `offer_hold_secs`, `max_party`;
    /// those left out keep the server's defaults).
    pub async fn published_event_with(
        &self,
        owner_token: &str,
        capacity: u64,
        settings: Value,
    ) -> anyhow::Result<Uuid> {
        let venue = self.venue(owner_token).await?;
        let starts_at = chrono::Utc::now() + chrono::Duration::days(7);
        self.publish_event_with(
            owner_token,
            venue,
            "Load test",
            starts_at,
            capacity,
            settings,
        )
        .await
    }

    async fn venue(&self, owner_token: &str) -> anyhow::Result<Uuid> {
        let venue = self
            .post(
                owner_token,
                "/v1/venues",
                json!({ "name": "Load test hall", "lat": 52.37, "lon": 4.89 }),
            )
            .await?;
        Ok(venue["id"].as_str().context("venue id")?.parse()?)
    }

    /// Publishes an event at an existing venue.
    pub async fn publish_event(
        &self,
        owner_token: &str,
        venue: Uuid,
        title: &str,
        starts_at: chrono::DateTime<chrono::Utc>,
        capacity: u64,
    ) -> anyhow::Result<Uuid> {
        self.publish_event_with(owner_token, venue, title, starts_at, capacity, Value::Null)
            .await
    }

    /// Publishes an event at an existing venue with waitlist `settings`
    /// (see [`Api::published_event_with`]).
    pub async fn publish_event_with(
        &self,
        owner_token: &str,
        venue: Uuid,
        title: &str,
        starts_at: chrono::DateTime<chrono::Utc>,
        capacity: u64,
        settings: Value,
    ) -> anyhow::Result<Uuid> {
        let mut body = json!({ "title": title, "venue_id": venue, "starts_at": starts_at,
                               "capacity": capacity, "tags": ["loadtest"] });
        if let (Value::Object(body), Value::Object(settings)) = (&mut body, settings) {
            body.extend(settings);
        }
        let event = self.post(owner_token, "/v1/events", body).await?;
        let id: Uuid = event["id"].as_str().context("event id")?.parse()?;
        self.post(
            owner_token,
            &format!("/v1/events/{id}/publish"),
            Value::Null,
        )
        .await?;
        Ok(id)
    }

    /// A join without a body: one seat.
    pub async fn join(
        &self,
        token: &str,
        event: Uuid,
        key: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        self.join_party(token, event, key, None).await
    }

    /// A join for a party of `seats` (sent as `{"seats": n}`), or without a
    /// body when `None`.
    pub async fn join_party(
        &self,
        token: &str,
        event: Uuid,
        key: &str,
        seats: Option<usize>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let (i, base) = self.pick();
        let mut request = self
            .client
            .post(format!("{base}/v1/events/{event}/join"))
            .bearer_auth(token)
            .header("Idempotency-Key", key);
        if let Some(seats) = seats {
            request = request.json(&json!({ "seats": seats }));
        }
        let answer = match request.send().await {
            Ok(response) => Ok(status_and_body(response).await),
            Err(error) => Err(error),
        };
        self.tally(i, &answer);
        answer
    }

    /// Leaves an event (from active, an offer or the waitlist).
    pub async fn leave(&self, token: &str, event: Uuid) -> reqwest::Result<(StatusCode, Value)> {
        let (i, base) = self.pick();
        let sent = self
            .client
            .delete(format!("{base}/v1/events/{event}/join"))
            .bearer_auth(token)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => Ok(status_and_body(response).await),
            Err(error) => Err(error),
        };
        self.tally(i, &answer);
        answer
    }

    /// Accepts (`accept`) or declines the offer the caller holds.
    pub async fn answer_offer(
        &self,
        token: &str,
        event: Uuid,
        accept: bool,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let (i, base) = self.pick();
        let answer = if accept { "accept" } else { "decline" };
        let sent = self
            .client
            .post(format!("{base}/v1/events/{event}/offer/{answer}"))
            .bearer_auth(token)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => Ok(status_and_body(response).await),
            Err(error) => Err(error),
        };
        self.tally(i, &answer);
        answer
    }

    /// A public read, as a load step: its status and body, whatever they are.
    pub async fn get(&self, path: &str) -> reqwest::Result<(StatusCode, Value)> {
        let (i, base) = self.pick();
        let answer = match self.client.get(format!("{base}{path}")).send().await {
            Ok(response) => Ok(status_and_body(response).await),
            Err(error) => Err(error),
        };
        self.tally(i, &answer);
        answer
    }

    pub async fn event(&self, event: Uuid) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}/v1/events/{event}", self.pick().1))
            .send()
            .await?;
        let body: Value = response.error_for_status()?.json().await?;
        Ok(body["data"].clone())
    }

    /// The whole roster, following cursors.
    pub async fn attendees(&self, owner_token: &str, event: Uuid) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/events/{event}/attendees?limit=100", self.pick().1);
            if let Some(c) = &cursor {
                url.push_str("&cursor=");
                url.push_str(c);
            }
            let page: Value = self
                .client
                .get(url)
                .bearer_auth(owner_token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            all.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(all),
            }
        }
    }
}

/// An answer as a load step sees it: the status, and the body if it is JSON.
async fn status_and_body(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
