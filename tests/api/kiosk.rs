//! The kiosk page in a real browser: headless Chromium (Debian's package),
//! driven over the DevTools protocol. The page loads, shows the places left,
//! and changes when someone joins over HTTP — without a reload.

use reqwest::Method;
use serde_json::json;

use crate::browser::{Page, browser_available, launch};
use crate::helpers::{Backend, TestApp, body, id_of, spawn_app};

async fn publish(
    app: &TestApp,
    owner: &crate::helpers::User,
    venue: uuid::Uuid,
    title: &str,
    hours: i64,
    capacity: i64,
) -> uuid::Uuid {
    let starts_at = chrono::Utc::now() + chrono::Duration::hours(hours);
    let created = app
        .as_user(owner, Method::POST, "/v1/events")
        .json(&json!({ "title": title, "venue_id": venue, "starts_at": starts_at, "capacity": capacity }))
        .send()
        .await
        .unwrap();
    let id = id_of(&body(created).await);
    app.as_user(owner, Method::POST, &format!("/v1/events/{id}/publish"))
        .send()
        .await
        .unwrap();
    id
}

#[actix_web::test]
async fn the_kiosk_page_updates_live_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.register("venue@example.com").await;
    let venue = app.venue(&owner).await;
    let event = publish(&app, &owner, venue, "Late jazz", 3, 5).await;
    let (_browser, devtools) = launch(&format!("{}/kiosk/{venue}", app.address), 1080, 1920);
    let mut page = Page::attach(&devtools).await;

    let places = format!(
        "document.querySelector('[data-event-id=\"{event}\"] .places')?.textContent ?? null"
    );
    page.wait_for(&places, "5 places left").await;
    page.wait_for("document.getElementById('status').textContent", "Live")
        .await;
    page.wait_for("document.getElementById('venue').textContent", "Blue Room")
        .await;

    app.join(&app.user(), event).await;
    page.wait_for(&places, "4 places left").await;

    // A new event appears in order, without a reload.
    let earlier = publish(&app, &owner, venue, "Matinee", 1, 2).await;
    page.wait_for(
        "[...document.querySelectorAll('[data-event-id]')].map(e => e.dataset.eventId).join(',')",
        &format!("{earlier},{event}"),
    )
    .await;
    for _ in 0..2 {
        app.join(&app.user(), earlier).await;
    }
    app.join(&app.user(), earlier).await;
    let earlier_places =
        format!("document.querySelector('[data-event-id=\"{earlier}\"] .places').textContent");
    page.wait_for(&earlier_places, "Full · waitlist 1").await;

    if let Ok(path) = std::env::var("TURNOUT_KIOSK_SCREENSHOT") {
        page.screenshot(&path).await;
    }

    // All of the above ran under the page's Content-Security-Policy.
    let served = app
        .request(Method::GET, &format!("/kiosk/{venue}"))
        .send()
        .await
        .unwrap();
    let policy = served.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(policy.contains("connect-src 'self'"), "{policy}");

    let missing = app
        .request(Method::GET, &format!("/kiosk/{}", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
