//! The demo loader against a real server started by the test: the city
//! arrives through the API and its people get recommendations at once.

mod common;

use common::server;
use turnout_loadtest::demo::{self, Demo};

const KEY: &str = "demo-test-key-demo-test-key-demo-test";

fn small(target: String) -> Demo {
    Demo {
        target,
        seed: 3,
        venues: 3,
        events: 24,
        people: 30,
        concurrency: 8,
    }
}

#[actix_web::test]
async fn the_demo_city_loads_through_the_api_and_is_recommended_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let target = server(&dir, KEY, false).await;
    let loaded = demo::load(&small(target.clone())).await.unwrap();
    assert_eq!(loaded.venues.len(), 3);
    assert_eq!(loaded.events.len(), 24);
    assert!(loaded.joins > 30, "{}", loaded.joins);

    let client = reqwest::Client::new();
    let events: serde_json::Value = client
        .get(format!(
            "{target}/v1/events?venue_id={}&limit=100",
            loaded.busiest_venue
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!events["data"].as_array().unwrap().is_empty());
    let kiosk = client
        .get(format!("{target}/kiosk/{}", loaded.busiest_venue))
        .send()
        .await
        .unwrap();
    assert_eq!(kiosk.status(), reqwest::StatusCode::OK);

    let recommendations: serde_json::Value = client
        .get(format!("{target}/v1/me/recommendations"))
        .bearer_auth(&loaded.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = recommendations["data"].as_array().unwrap();
    assert!(!items.is_empty(), "{recommendations}");
    assert!(
        items
            .iter()
            .all(|i| !i["reasons"].as_array().unwrap().is_empty())
    );

    // Loading again works: the accounts log in, and a second copy of the
    // events is published and joined.
    let again = demo::load(&small(target)).await.unwrap();
    assert_eq!(again.events.len(), 24);
    assert_eq!(again.joins, loaded.joins);
}

#[actix_web::test]
async fn a_rate_limited_server_gets_a_clear_instruction() {
    let dir = tempfile::tempdir().unwrap();
    let target = server(&dir, KEY, true).await;
    let error = demo::load(&small(target)).await.unwrap_err().to_string();
    assert!(
        error.contains("TURNOUT_RATE_LIMITS__ENABLED=false"),
        "{error}"
    );
}
