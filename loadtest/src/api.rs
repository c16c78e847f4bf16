//! A thin client for the Turnout API, and token minting for simulated users.

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

#[derive(Clone)]
pub struct Api {
    pub client: Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str, connections: usize) -> anyhow::Result<Self> {
        let client = Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
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
        let venue = self
            .post(
                owner_token,
                "/v1/venues",
                json!({ "name": "Load test hall", "lat": 52.37, "lon": 4.89 }),
            )
            .await?;
        let venue: Uuid = venue["id"].as_str().context("venue id")?.parse()?;
        let starts_at = chrono::Utc::now() + chrono::Duration::days(7);
        let id = self
            .publish_event(owner_token, venue, "Load test", starts_at, capacity)
            .await?;
        Ok((id, venue))
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
        let event = self
            .post(
                owner_token,
                "/v1/events",
                json!({ "title": title, "venue_id": venue, "starts_at": starts_at,
                        "capacity": capacity, "tags": ["loadtest"] }),
            )
            .await?;
        let id: Uuid = event["id"].as_str().context("event id")?.parse()?;
        self.post(
            owner_token,
            &format!("/v1/events/{id}/publish"),
            Value::Null,
        )
        .await?;
        Ok(id)
    }

    pub async fn join(
        &self,
        token: &str,
        event: Uuid,
        key: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let response = self
            .client
            .post(format!("{}/v1/events/{event}/join", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .send()
            .await?;
        Ok(status_and_body(response).await)
    }

    pub async fn leave(&self, token: &str, event: Uuid) -> reqwest::Result<StatusCode> {
        let response = self
            .client
            .delete(format!("{}/v1/events/{event}/join", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        Ok(response.status())
    }

    /// A public read, as a load step: its status and body, whatever they are.
    pub async fn get(&self, path: &str) -> reqwest::Result<(StatusCode, Value)> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await?;
        Ok(status_and_body(response).await)
    }

    pub async fn event(&self, event: Uuid) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}/v1/events/{event}", self.base))
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
            let mut url = format!("{}/v1/events/{event}/attendees?limit=100", self.base);
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
