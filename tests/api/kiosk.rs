//! The kiosk page in a real browser: headless Chromium (Debian's package),
//! driven over the DevTools protocol. The page loads, shows the places left,
//! and changes when someone joins over HTTP — without a reload.

use reqwest::Method;
use serde_json::json;

use crate::browser::{browser_available, open};
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

/// A venue with one event, "Late jazz" in three hours with five places;
/// its owner, the venue and the event.
async fn late_jazz(app: &TestApp) -> (crate::helpers::User, uuid::Uuid, uuid::Uuid) {
    let owner = app.register("venue@example.com").await;
    let venue = app.venue(&owner).await;
    let event = publish(app, &owner, venue, "Late jazz", 3, 5).await;
    (owner, venue, event)
}

#[actix_web::test]
async fn the_kiosk_page_updates_live_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let (owner, venue, event) = late_jazz(&app).await;
    let (_browser, mut page) = open(&format!("{}/kiosk/{venue}", app.address), 1080, 1920).await;

    let places = places_of(event);
    page.wait_for(&places, "5 places left").await;
    page.wait_for(STATUS, "Live").await;
    page.wait_for("document.getElementById('venue').textContent", "Blue Room")
        .await;

    let first_in = app.user();
    app.join(&first_in, event).await;
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

    // A place held for a waiting party shows as on offer.
    let offering = app
        .as_user(&owner, Method::PATCH, &format!("/v1/events/{event}"))
        .json(&json!({ "waitlist_mode": "offer", "capacity": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(offering.status(), 200);
    let waiting = body(app.join(&app.user(), event).await).await;
    assert_eq!(
        waiting["data"]["status"], "waitlisted",
        "the one place is taken"
    );
    app.leave(&first_in, event).await;
    page.wait_for(&places, "Full · 1 place on offer").await;

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

/// Read from across a room, in portrait (1080×1920) and landscape
/// (1920×1080): each card's title takes most of its width and at most two
/// lines; the time is compact ("Today 20:00", "Sat 1 Jun 20:00"); the time
/// and "Full · waitlist N" each stay on one line, inside the card.
#[actix_web::test]
async fn the_kiosk_is_readable_from_across_a_room() {
    if !browser_available() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.register("venue@example.com").await;
    let venue = app.venue(&owner).await;
    let long = "The Grand Municipal Orchestra of the Northern Provinces plays the complete \
                symphonies, with guests, in one extraordinarily long evening";
    publish(&app, &owner, venue, long, 2, 50).await;
    let full = publish(&app, &owner, venue, "Poetry slam", 3, 1).await;
    for _ in 0..13 {
        app.join(&app.user(), full).await;
    }
    publish(&app, &owner, venue, "Brunch quiz", 24 * 5, 40).await;

    for (width, height) in [(1080, 1920), (1920, 1080)] {
        let (_browser, mut page) =
            open(&format!("{}/kiosk/{venue}", app.address), width, height).await;
        page.wait_for("String(document.querySelectorAll('.event').length)", "3")
            .await;
        let cards = page
            .eval(
                "JSON.stringify([...document.querySelectorAll('.event')].map(card => {
                    const box = (el) => el.getBoundingClientRect();
                    const [title, time, places] = ['.title', '.time', '.places']
                        .map(s => card.querySelector(s));
                    const lines = (el) => Math.round(box(el).height
                        / parseFloat(getComputedStyle(el).lineHeight));
                    const oneLine = (el) => box(el).height
                        < 1.6 * parseFloat(getComputedStyle(el).fontSize);
                    return {
                        title: title.textContent, time: time.textContent, places: places.textContent,
                        titleShare: box(title).width / box(card).width,
                        titleLines: lines(title),
                        titleBiggest: parseFloat(getComputedStyle(title).fontSize)
                            > parseFloat(getComputedStyle(places).fontSize),
                        timeOneLine: oneLine(time), placesOneLine: oneLine(places),
                        inside: box(places).right <= box(card).right
                            && box(time).right <= box(places).left,
                    };
                }))",
            )
            .await;
        let cards: Vec<serde_json::Value> =
            serde_json::from_str(cards.as_str().expect("measurements")).unwrap();
        for card in &cards {
            let at = format!("{width}×{height}: {card}");
            assert!(card["titleShare"].as_f64().unwrap() >= 0.5, "{at}");
            assert!(card["titleLines"].as_i64().unwrap() <= 2, "{at}");
            assert_eq!(card["titleBiggest"], true, "{at}");
            assert_eq!(card["timeOneLine"], true, "{at}");
            assert_eq!(card["placesOneLine"], true, "{at}");
            assert_eq!(card["inside"], true, "{at}");
        }
        let texts: Vec<(&str, &str)> = cards
            .iter()
            .map(|c| (c["time"].as_str().unwrap(), c["places"].as_str().unwrap()))
            .collect();
        assert!(texts[1].1 == "Full · waitlist 12", "{texts:?}");
        assert!(
            texts[0].0.starts_with("Today ") || texts[0].0.starts_with("Tomorrow "),
            "{texts:?}"
        );
        let day = texts[2].0;
        let words: Vec<&str> = day.split(' ').collect();
        assert!(
            words.len() == 4
                && words[1].parse::<u32>().is_ok()
                && words[3].len() == 5
                && words[3].as_bytes()[2] == b':',
            "a compact day and a 24-hour time: {day:?}"
        );
        if width < height
            && let Ok(path) = std::env::var("TURNOUT_KIOSK_SCREENSHOT")
        {
            page.screenshot(&path).await;
        }
    }
}

/// A venue's time zone (an IANA name, set at creation or later by its
/// owner) is the kiosk's: event times and "Today" are the venue's, not the
/// screen's. A name the tz database does not know is refused.
#[actix_web::test]
async fn the_kiosk_shows_times_in_the_venues_time_zone() {
    use chrono::TimeZone;

    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.register("venue@example.com").await;
    let make = |time_zone: &str| {
        app.as_user(&owner, Method::POST, "/v1/venues")
            .json(&json!({ "name": "Harbour Hall", "lat": -36.85, "lon": 174.76, "time_zone": time_zone }))
    };
    let refused = make("Middle/Earth").send().await.unwrap();
    assert_eq!(refused.status(), 422);
    assert!(
        body(refused).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("IANA time zone")
    );
    let created = body(make("Pacific/Kiritimati").send().await.unwrap()).await;
    assert_eq!(created["data"]["time_zone"], "Pacific/Kiritimati");
    let venue = id_of(&created);

    // Its owner may change it; nobody else may.
    let path = format!("/v1/venues/{venue}");
    let stranger = app.register("stranger@example.com").await;
    let denied = app
        .as_user(&stranger, Method::PATCH, &path)
        .json(&json!({ "time_zone": "Europe/Amsterdam" }))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    for zone in [json!(null), json!("Pacific/Kiritimati")] {
        let changed = app
            .as_user(&owner, Method::PATCH, &path)
            .json(&json!({ "time_zone": zone }))
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200);
        assert_eq!(body(changed).await["data"]["time_zone"], zone);
    }
    // Left out, it stays.
    let unchanged = app
        .as_user(&owner, Method::PATCH, &path)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body(unchanged).await["data"]["time_zone"],
        "Pacific/Kiritimati"
    );

    if !browser_available() {
        return;
    }
    let event = publish(&app, &owner, venue, "Sunrise set", 30, 10).await;
    let starts_at: chrono::DateTime<chrono::Utc> = app.event(event).await["starts_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let local = chrono_tz::Pacific::Kiritimati.from_utc_datetime(&starts_at.naive_utc());
    let today = chrono_tz::Pacific::Kiritimati
        .from_utc_datetime(&chrono::Utc::now().naive_utc())
        .date_naive();
    let day = match (local.date_naive() - today).num_days() {
        0 => "Today".to_owned(),
        1 => "Tomorrow".to_owned(),
        _ => local.format("%a %-d %b").to_string(),
    };
    let expected = format!("{day} {}", local.format("%H:%M"));

    let (_browser, mut page) = open(&format!("{}/kiosk/{venue}", app.address), 1080, 1920).await;
    page.wait_for("document.body.dataset.timeZone ?? ''", "Pacific/Kiritimati")
        .await;
    page.wait_for(
        &format!("document.querySelector('[data-event-id=\"{event}\"] .time')?.textContent ?? ''"),
        &expected,
    )
    .await;
}

const STATUS: &str = "document.getElementById('status').textContent";

/// The page's text for an event's places, or null while it shows none.
fn places_of(event: uuid::Uuid) -> String {
    format!("document.querySelector('[data-event-id=\"{event}\"] .places')?.textContent ?? null")
}

/// A screen set up by hand may carry its venue's id in capitals or without
/// hyphens: the server sends it to the canonical address, whose channel the
/// hub serves, and the page shows its venue.
#[actix_web::test]
async fn a_kiosk_address_in_another_spelling_shows_its_venue() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let (_, venue, event) = late_jazz(&app).await;
    let not_following = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let hyphenated = venue.hyphenated().to_string();
    let escaped = format!("%{:02X}{}", hyphenated.as_bytes()[0], &hyphenated[1..]);
    for spelling in [
        hyphenated.to_uppercase(),
        venue.simple().to_string(),
        escaped,
    ] {
        let sent = not_following
            .get(format!("{}/kiosk/{spelling}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 308, "{spelling}");
        assert_eq!(sent.headers()["location"], format!("/kiosk/{venue}"));
    }
    if !browser_available() {
        return;
    }
    let upper = venue.hyphenated().to_string().to_uppercase();
    let (_browser, mut page) = open(&format!("{}/kiosk/{upper}", app.address), 1080, 1920).await;
    page.wait_for(&places_of(event), "5 places left").await;
    page.wait_for(STATUS, "Live").await;
}

/// A subscribe the server refuses (here every hub is taken) leaves a socket
/// that carries nothing: the page must not call that live, and must try
/// again until it gets in.
#[actix_web::test]
async fn a_refused_subscribe_is_not_live_and_is_tried_again() {
    if !browser_available() {
        return;
    }
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.max_hubs = 1;
        s.realtime.hub_idle_secs = 1;
    })
    .await
    .unwrap();
    let (owner, venue, event) = late_jazz(&app).await;
    let elsewhere = app.venue(&owner).await;
    // Another venue's screen holds the one hub.
    let mut holder = crate::realtime::connect(&app).await;
    let taken = crate::realtime::subscribe(&mut holder, &format!("venue:{elsewhere}"), None).await;
    assert_eq!(taken["type"], "snapshot", "{taken}");

    let (_browser, mut page) = open(&format!("{}/kiosk/{venue}", app.address), 1080, 1920).await;
    page.wait_for(STATUS, "Reconnecting…").await;
    let refusals = |metrics: &str| {
        crate::helpers::labelled(metrics, "turnout_ws_hubs_refused_total", r#"kind="venue""#)
    };
    let mut refused = 0.0;
    for _ in 0..60 {
        assert_ne!(
            page.eval(STATUS).await,
            "Live",
            "a refused subscribe is not live"
        );
        refused = refusals(&app.metrics().await);
        if refused >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused >= 3.0, "the page tries again: {refused} refusals");

    drop(holder);
    page.wait_for_within(
        &places_of(event),
        "5 places left",
        std::time::Duration::from_secs(40),
    )
    .await;
    page.wait_for(STATUS, "Live").await;
}

/// A screen may boot before its network is up: the venue's name and time
/// zone are asked for again until they come.
#[actix_web::test]
async fn the_kiosk_asks_for_its_venue_until_it_answers() {
    if !browser_available() {
        return;
    }
    use base64::Engine;
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.register("venue@example.com").await;
    let venue = app.venue(&owner).await;
    let (_browser, mut page) = open("about:blank", 1080, 1920).await;
    page.call(
        "Fetch.enable",
        json!({ "patterns": [{ "urlPattern": "*/v1/venues/*" }] }),
    )
    .await;
    page.call(
        "Page.navigate",
        json!({ "url": format!("{}/kiosk/{venue}", app.address) }),
    )
    .await;
    let first = page.event("Fetch.requestPaused").await;
    let unavailable = base64::engine::general_purpose::STANDARD.encode("{}");
    page.call(
        "Fetch.fulfillRequest",
        json!({ "requestId": first["requestId"], "responseCode": 503, "body": unavailable }),
    )
    .await;
    let second = page.event("Fetch.requestPaused").await;
    page.call(
        "Fetch.continueRequest",
        json!({ "requestId": second["requestId"] }),
    )
    .await;
    page.wait_for("document.getElementById('venue').textContent", "Blue Room")
        .await;
}

/// A connection whose network died without closing it (a rebooted access
/// point, an expired NAT entry) carries nothing and closes nothing: the
/// page notices the silence, says so, and connects again.
#[actix_web::test]
async fn a_silent_connection_is_noticed_and_replaced() {
    if !browser_available() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let (_, venue, event) = late_jazz(&app).await;
    let server = app.address.trim_start_matches("http://").parse().unwrap();
    let proxy = crate::helpers::TcpProxy::to(server).await;
    let (_browser, mut page) = open(
        &format!("http://127.0.0.1:{}/kiosk/{venue}", proxy.port),
        1080,
        1920,
    )
    .await;
    let places = places_of(event);
    page.wait_for(&places, "5 places left").await;
    page.wait_for(STATUS, "Live").await;

    proxy.freeze();
    // Silent for longer than the server's own limit (60 s), checked on the
    // page's 20 s ping.
    page.wait_for_within(STATUS, "Reconnecting…", std::time::Duration::from_secs(100))
        .await;
    page.wait_for(STATUS, "Live").await;
    app.join(&app.user(), event).await;
    page.wait_for(&places, "4 places left").await;
}
