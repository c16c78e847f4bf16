//! Loads a synthetic city into a running server through its public API:
//! organisers, venues, published events over the next two weeks, people with
//! interests and homes, and their joins — so a new user sees a live kiosk and
//! real recommendations a minute after starting Turnout.

use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{Duration, Utc};
use clap::Args;
use futures_util::{StreamExt, TryStreamExt, stream};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::city::{CityParams, generate};

pub const PASSWORD: &str = "demo-password";
const ORGANISERS: usize = 3;

#[derive(Args, Clone)]
pub struct Demo {
    /// The server to load.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value_t = 8)]
    pub venues: usize,
    #[arg(long, default_value_t = 120)]
    pub events: usize,
    #[arg(long, default_value_t = 150)]
    pub people: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// What was loaded, and where to look.
#[derive(Debug)]
pub struct Loaded {
    pub venues: Vec<Uuid>,
    /// The venue with the most events: the one whose kiosk to open.
    pub busiest_venue: Uuid,
    pub events: Vec<Uuid>,
    pub joins: usize,
    /// The demo person to log in as, and their token.
    pub email: String,
    pub token: String,
}

struct DemoApi {
    http: Client,
    base: String,
}

impl DemoApi {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}: is the server running?", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::TOO_MANY_REQUESTS {
            // The server's message says which limit: a budget, or its cap
            // on one address's connections.
            bail!(
                "{method} {path} was refused 429 ({}). The demo loader writes far more than \
                 one person would: start the server with \
                 TURNOUT_RATE_LIMITS__ENABLED=false TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP=0",
                body["error"]["message"].as_str().unwrap_or("no message")
            );
        }
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method.clone(), path, token, body, None).await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// Registers the account, or logs in if it exists from an earlier run.
    async fn account(&self, email: &str, profile: Value) -> anyhow::Result<(Uuid, String)> {
        let mut body = json!({ "email": email, "password": PASSWORD, "display_name": email.split('@').next() });
        if let (Some(target), Some(extra)) = (body.as_object_mut(), profile.as_object()) {
            target.extend(extra.clone());
        }
        let (status, answer) = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/register",
                None,
                Some(body),
                None,
            )
            .await?;
        let session = match status {
            StatusCode::CREATED => answer["data"].clone(),
            StatusCode::CONFLICT => {
                self.expect(
                    reqwest::Method::POST,
                    "/v1/auth/login",
                    None,
                    Some(json!({ "email": email, "password": PASSWORD })),
                )
                .await?
            }
            _ => bail!("registering {email} answered {status}: {answer}"),
        };
        let id = session["user"]["id"].as_str().context("user id")?.parse()?;
        let token = session["token"].as_str().context("token")?.to_owned();
        Ok((id, token))
    }
}

pub async fn load(args: &Demo) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let now = Utc::now();
    let mut city = generate(CityParams {
        seed: args.seed,
        venues: args.venues,
        events: args.events,
        people: args.people,
        past_days: 0,
        ahead_days: 14,
        announce_days: 21,
        now,
    });
    // Everything must still be ahead when it reaches the server.
    for event in &mut city.events {
        if event.starts_at < now + Duration::hours(2) {
            event.starts_at += Duration::days(1);
        }
    }
    let api = DemoApi {
        http: Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        base: args.target.trim_end_matches('/').to_owned(),
    };
    let api = &api;
    let seed = args.seed;
    let n = args.concurrency.max(1);

    let organisers: Vec<(Uuid, String)> = stream::iter(0..ORGANISERS)
        .map(|i| async move {
            api.account(
                &format!("organiser-{i}.{seed}@demo.turnout.example"),
                json!({}),
            )
            .await
        })
        .buffered(n)
        .try_collect()
        .await?;
    let people: Vec<(Uuid, String)> = stream::iter(city.people.iter().enumerate())
        .map(|(i, p)| async move {
            let profile = json!({
                "interests": p.interests,
                "home": { "lat": p.home.0, "lon": p.home.1 },
            });
            api.account(&format!("person-{i}.{seed}@demo.turnout.example"), profile)
                .await
        })
        .buffered(n)
        .try_collect()
        .await?;
    println!(
        "{} organisers and {} people ready",
        organisers.len(),
        people.len()
    );

    let organisers = &organisers;
    let venues: Vec<Uuid> = stream::iter(city.venues.iter().enumerate())
        .map(|(i, v)| async move {
            let venue = api
                .expect(
                    reqwest::Method::POST,
                    "/v1/venues",
                    Some(&organisers[i % ORGANISERS].1),
                    Some(json!({ "name": v.name, "lat": v.lat, "lon": v.lon, "address": "Demo city" })),
                )
                .await?;
            anyhow::Ok(venue["id"].as_str().context("venue id")?.parse::<Uuid>()?)
        })
        .buffered(n)
        .try_collect()
        .await?;

    let venues_ref = &venues;
    let events: Vec<Uuid> = stream::iter(city.events.iter())
        .map(|e| async move {
            let token = &organisers[e.venue % ORGANISERS].1;
            let event = api
                .expect(
                    reqwest::Method::POST,
                    "/v1/events",
                    Some(token),
                    Some(json!({
                        "title": e.title, "venue_id": venues_ref[e.venue],
                        "starts_at": e.starts_at, "ends_at": e.starts_at + Duration::hours(2),
                        "capacity": e.capacity, "tags": e.tags,
                        "description": format!("A {} evening in the demo city.", e.tags.join(", ")),
                    })),
                )
                .await?;
            let id: Uuid = event["id"].as_str().context("event id")?.parse()?;
            api.expect(
                reqwest::Method::POST,
                &format!("/v1/events/{id}/publish"),
                Some(token),
                None,
            )
            .await?;
            anyhow::Ok(id)
        })
        .buffered(n)
        .try_collect()
        .await?;
    println!(
        "{} venues and {} events published",
        venues.len(),
        events.len()
    );

    let (people_ref, events_ref) = (&people, &events);
    let joins: Vec<StatusCode> = stream::iter(city.joins.iter())
        .map(|j| async move {
            // One key per person and event: a retried request replays instead of joining twice.
            let event = events_ref[j.event];
            let key = format!("demo-{seed}-{}-{event}", j.person);
            let (status, answer) = api
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/events/{event}/join"),
                    Some(&people_ref[j.person].1),
                    None,
                    Some(&key),
                )
                .await?;
            if !status.is_success() && status != StatusCode::CONFLICT {
                bail!("a join answered {status}: {answer}");
            }
            anyhow::Ok(status)
        })
        .buffer_unordered(n)
        .try_collect()
        .await?;
    let joined = joins.iter().filter(|s| s.is_success()).count();
    println!(
        "{joined} joins made in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Someone with stated interests and a few joins is the most telling.
    let shown = city
        .people
        .iter()
        .position(|p| !p.interests.is_empty())
        .unwrap_or(0);
    let mut per_venue = vec![0usize; venues.len()];
    for e in &city.events {
        per_venue[e.venue] += 1;
    }
    let busiest = (0..venues.len()).max_by_key(|v| per_venue[*v]).unwrap_or(0);
    Ok(Loaded {
        busiest_venue: venues[busiest],
        venues,
        events,
        joins: joined,
        email: format!("person-{shown}.{seed}@demo.turnout.example"),
        token: people[shown].1.clone(),
    })
}
