//! What a stranger can spend: one test per way found to grow the server's
//! memory or CPU from outside. Where memory is the point the test runs the
//! real binary and bounds its resident memory or its `/metrics` page.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{
    Backend, TestApp, assert_error, body, fresh_database, id_of, labelled, metric, wait_until,
};
use crate::process::ServerProcess;
use crate::realtime::{connect, next, send, subscribe};

async fn server(env: &[(&str, &str)]) -> (ServerProcess, TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let server = ServerProcess::start(&url, dir.path(), env).await;
    let app = TestApp::attach(&server.address, crate::helpers::JWT_KEY);
    (server, app, dir)
}

/// 2,000 made-up methods on made-up paths once grew `/metrics` from 2 KB to
/// 11 MB for good. Now each is refused with 405 before routing, and every
/// label comes from a fixed set, so the page grows by a few series at most.
#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_the_metrics_page() {
    let (_server, app, _dir) = server(&[]).await;
    app.request(Method::GET, "/health").send().await.unwrap();
    let before = app.metrics().await.len();

    let response = app
        .request(Method::from_bytes(b"BREW").unwrap(), "/v1/events")
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    for i in 0..1000 {
        let method = Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
        let refused = app
            .request(method, &format!("/made/up/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        let missing = app
            .request(Method::GET, &format!("/made/up/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    let page = app.metrics().await;
    assert!(
        !page.contains("M999") && !page.contains("/made/up"),
        "{page}"
    );
    assert!(page.contains(r#"method="other""#), "{page}");
    assert!(
        page.len() < before + 8 * 1024,
        "/metrics grew from {before} to {} bytes",
        page.len()
    );
}

/// HEAD is answered wherever GET is, with GET's headers and no body.
#[tokio::test]
async fn head_is_answered_wherever_get_is() {
    let (_server, app, _dir) = server(&[]).await;
    for path in ["/health", "/v1/events", "/openapi.json"] {
        let head = app.request(Method::HEAD, path).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        assert!(head.headers().contains_key("x-request-id"));
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
}

/// 100 concurrent wrong logins once took the server from 40 MB to about
/// 1 GB: every argon2 hash (~19 MiB) ran at once on the blocking pool. Now
/// two run at a time, four wait, and the rest are told 503 + Retry-After.
/// (Each for an account of its own: one account's guesses from one address
/// are stopped sooner, by the login guard, as `accounts` tests.)
#[tokio::test]
async fn concurrent_logins_hash_a_few_at_a_time() {
    let (server, app, _dir) = server(&[
        ("TURNOUT_AUTH__HASHING__CONCURRENCY", "2"),
        ("TURNOUT_AUTH__HASHING__QUEUE", "4"),
    ])
    .await;
    app.register("victim0@example.com").await;
    let baseline = server.rss_mib();

    let logins: Vec<_> = (0..100).map(|i| {
        let app = app.clone();
        tokio::spawn(async move {
            app.request(Method::POST, "/v1/auth/login")
                .json(&json!({ "email": format!("victim{i}@example.com"), "password": format!("guess-{i}-wrong") }))
                .send()
                .await
                .unwrap()
        })
    }).collect();
    let mut refused = 0;
    for login in logins {
        let response = login.await.unwrap();
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.headers().contains_key("retry-after"));
                assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
                refused += 1;
            }
            other => panic!("a wrong login answered {other}"),
        }
    }

    assert!(
        refused > 0,
        "past 2 running and 4 waiting, some are refused"
    );
    let peak = server.peak_rss_mib();
    assert!(
        peak < baseline + 120,
        "peak resident memory {peak} MiB, from {baseline} MiB before the logins"
    );
}

/// 60,000 joins to made-up event ids once left an actor each in memory for
/// the idle timeout (5 minutes). An actor whose load finds no event now
/// answers 404 and leaves at once.
#[tokio::test]
async fn joins_to_made_up_events_leave_no_actors_behind() {
    let (_server, app, _dir) = server(&[]).await;
    let owner = app.user();
    let event = app.published_event(&owner, 10).await;
    assert_eq!(
        app.join(&app.user(), event).await.status(),
        StatusCode::CREATED
    );

    let joins: Vec<_> = (0..500)
        .map(|_| {
            let (app, user) = (app.clone(), app.user());
            tokio::spawn(async move { app.join(&user, uuid::Uuid::new_v4()).await })
        })
        .collect();
    for join in joins {
        assert_error(join.await.unwrap(), StatusCode::NOT_FOUND, "not_found").await;
    }

    // Actors stop just after answering: wait for the gauge to settle.
    let mut live = None;
    for _ in 0..100 {
        live = metric(&app.metrics().await, "turnout_live_actors");
        if live == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(live, Some(1.0), "only the real event's actor is live");
}

/// A raw connection to the server, for clients no HTTP library would be.
async fn raw_connection(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads the first response on a connection (its head and as much body as
/// arrives) and whether the server then closed the connection; gives up
/// waiting after 20 s, for a server that never would.
async fn read_response(socket: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(20), socket.read(&mut buf)).await;
        let text = String::from_utf8_lossy(&seen).into_owned();
        match read {
            Ok(Ok(0) | Err(_)) => return (text, true),
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                let keeps_open = text.split_once("\r\n\r\n").is_some()
                    && !text.to_lowercase().contains("connection: close");
                if keeps_open {
                    return (text.into_owned(), false);
                }
            }
            Err(_) => return (text, false),
        }
    }
}

/// 300 connections sending a declared 60 KB body a byte every 8 s were all
/// still open after 73 s. A body now has a deadline: past it the request is
/// answered 408 and the connection is closed.
#[tokio::test]
async fn a_body_dribbled_past_its_deadline_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let (_server, app, _dir) = server(&[("TURNOUT_HTTP__BODY_TIMEOUT_SECS", "1")]).await;
    let (mut reader, mut writer) = raw_connection(&app).await.into_split();
    writer
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: turnout\r\n\
              Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{",
        )
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        // A byte every 200 ms: headers done, the body never.
        while writer.write_all(b" ").await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });

    let (response, closed) = read_response(&mut reader).await;
    dribble.abort();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    assert!(closed, "the connection is closed after the 408");
}

/// Connections per client address are capped when accepted: one past the
/// cap is answered 429 and closed; a place given back is taken again.
#[tokio::test]
async fn http_connections_per_address_are_capped() {
    use tokio::io::AsyncWriteExt;
    let (_server, app, _dir) = server(&[("TURNOUT_HTTP__MAX_CONNECTIONS_PER_IP", "5")]).await;
    let health = b"GET /health HTTP/1.1\r\nHost: turnout\r\n\r\n";
    let mut open = Vec::new();
    let refusal = loop {
        assert!(open.len() <= 5, "more than 5 connections were served");
        let mut socket = raw_connection(&app).await;
        socket.write_all(health).await.unwrap();
        let (response, closed) = read_response(&mut socket).await;
        if response.starts_with("HTTP/1.1 200") {
            assert!(!closed);
            open.push(socket);
        } else {
            assert!(closed, "a refused connection is closed");
            break response;
        }
    };
    // The readiness probe's connection may not have been noticed closed yet.
    assert!(open.len() >= 4, "{} served before the cap", open.len());
    // The client's own doing: a 4xx, never a 5xx that would page someone.
    assert!(refusal.starts_with("HTTP/1.1 429"), "{refusal}");
    assert!(refusal.contains("rate_limited"), "{refusal}");
    assert!(refusal.contains("at most 5"), "{refusal}");
    assert!(
        refusal.to_ascii_lowercase().contains("retry-after: 5"),
        "{refusal}"
    );

    drop(open.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut socket = raw_connection(&app).await;
        socket.write_all(health).await.unwrap();
        if read_response(&mut socket)
            .await
            .0
            .starts_with("HTTP/1.1 200")
        {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served, "a closed connection gives its place back");
}

/// The WebSocket cap per address is small by default (50), so one client
/// cannot take the server's 20,000 places.
#[tokio::test]
async fn websockets_per_address_are_few_by_default() {
    let (_server, app, _dir) = server(&[]).await;
    let url = app.address.replace("http://", "ws://") + "/v1/ws";
    let mut sockets = Vec::new();
    for _ in 0..50 {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("50 connect");
        sockets.push(socket);
    }
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            crate::helpers::assert_connections_refused_to_the_client(&response, 50)
        }
        other => panic!("the 51st connection from one address must be refused: {other:?}"),
    }
}

/// 1,000 made-up radius feeds from one client, with events that have long
/// descriptions, once cost ~800 MB: a hub and a listing each. Circles now
/// snap to a grid and a few radii, and feed hubs are capped; past the cap a
/// subscribe is answered `busy` and starts nothing.
#[tokio::test]
async fn made_up_feeds_are_few_and_capped() {
    let (server, app, _dir) = server(&[
        ("TURNOUT_REALTIME__MAX_FEED_HUBS", "10"),
        ("TURNOUT_REALTIME__MAX_SUBSCRIBES_PER_MINUTE", "0"),
        ("TURNOUT_REALTIME__MAX_CONNECTIONS_PER_IP", "0"),
        ("TURNOUT_REALTIME__MAX_FILTERED_FEEDS_PER_IP", "0"),
    ])
    .await;
    let owner = app.user();
    let venue = app.venue(&owner).await;
    for i in 0..40 {
        let created = app
            .as_user(&owner, Method::POST, "/v1/events")
            .json(&json!({
                "title": format!("Long evening {i}"), "description": "x".repeat(4000),
                "venue_id": venue, "capacity": 10,
                "starts_at": chrono::Utc::now() + chrono::Duration::days(3),
            }))
            .send()
            .await
            .unwrap();
        let event = crate::helpers::id_of(&body(created).await);
        app.as_user(&owner, Method::POST, &format!("/v1/events/{event}/publish"))
            .send()
            .await
            .unwrap();
    }

    // Circles a few metres apart are one channel.
    let mut socket = connect(&app).await;
    let first = subscribe(&mut socket, "feed?near=52.3701,4.8899,3", None).await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["channel"], "feed?near=52.37,4.89,5");
    let same = subscribe(&mut socket, "feed?near=52.3698,4.8903,4.5", None).await;
    assert_eq!(same["code"], "already_subscribed", "{same}");

    let baseline = server.rss_mib();
    let (mut served, mut busy) = (1, 0);
    let mut sockets = Vec::new();
    for c in 0..20 {
        let mut socket = connect(&app).await;
        for s in 0..50 {
            let near = format!("feed?near={},{},1", c, s as f64 * 0.5);
            let answer = subscribe(&mut socket, &near, None).await;
            match answer["type"].as_str() {
                Some("snapshot") => served += 1,
                _ if answer["code"] == "busy" => busy += 1,
                _ => panic!("{near}: {answer}"),
            }
        }
        sockets.push(socket);
    }
    assert!(served <= 10, "{served} feed hubs served");
    assert_eq!(served + busy, 1001);
    let page = app.metrics().await;
    assert!(
        labelled(&page, "turnout_ws_hubs", r#"kind="feed""#) <= 10.0,
        "{page}"
    );
    assert!(
        server.rss_mib() < baseline + 50,
        "1,000 made-up feeds grew the server from {baseline} MiB to {} MiB",
        server.rss_mib()
    );
}

/// One client address cannot take every feed hub: past
/// `max_filtered_feeds_per_ip` distinct filtered feeds over all its
/// connections a subscribe is refused. A feed it left counts for as long as
/// the hub it made may linger (`hub_idle_secs`), so that subscribing and
/// leaving feed after feed cannot take them all either; the same feed may
/// be taken again at once. A feed it already holds, and the city feed (one
/// hub for everyone), take none.
#[tokio::test]
async fn one_address_holds_a_bounded_number_of_filtered_feeds() {
    let (_server, app, _dir) = server(&[
        ("TURNOUT_REALTIME__MAX_FILTERED_FEEDS_PER_IP", "3"),
        ("TURNOUT_REALTIME__MAX_SUBSCRIBES_PER_MINUTE", "0"),
        ("TURNOUT_REALTIME__HUB_IDLE_SECS", "3"),
    ])
    .await;
    let (mut first, mut second) = (connect(&app).await, connect(&app).await);
    for channel in ["feed?tag=a", "feed?near=52.37,4.89,5"] {
        let taken = subscribe(&mut first, channel, None).await;
        assert_eq!(taken["type"], "snapshot", "{taken}");
    }
    let taken = subscribe(&mut second, "feed?tag=c", None).await;
    assert_eq!(taken["type"], "snapshot", "{taken}");

    let refused = subscribe(&mut second, "feed?tag=d", None).await;
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    let shared = subscribe(&mut first, "feed?tag=c", None).await;
    assert_eq!(
        shared["type"], "snapshot",
        "a feed the address holds takes no second place: {shared}"
    );
    let city = subscribe(&mut second, "feed", None).await;
    assert_eq!(
        city["type"], "snapshot",
        "the city feed is not counted: {city}"
    );

    send(
        &mut first,
        json!({ "type": "unsubscribe", "channel": "feed?tag=a" }),
    )
    .await;
    assert_eq!(next(&mut first).await["type"], "unsubscribed");
    let refused = subscribe(&mut second, "feed?tag=d", None).await;
    assert_eq!(
        refused["code"], "too_many_subscriptions",
        "a feed just left still counts: {refused}"
    );
    let again = subscribe(&mut first, "feed?tag=a", None).await;
    assert_eq!(again["type"], "snapshot", "the same feed again: {again}");
    send(
        &mut first,
        json!({ "type": "unsubscribe", "channel": "feed?tag=a" }),
    )
    .await;
    assert_eq!(next(&mut first).await["type"], "unsubscribed");
    drop(first); // its feeds, the near one too, linger as well

    let second = &tokio::sync::Mutex::new(second);
    wait_until(
        Duration::from_secs(15),
        "a left feed's place is given back",
        || async move {
            let mut second = second.lock().await;
            let answer = subscribe(&mut second, "feed?tag=d", None).await;
            answer["type"] == "snapshot"
        },
    )
    .await;
}

/// Filtered feeds from a few addresses can take every feed hub the node
/// runs; the city's feed is still let in.
#[tokio::test]
async fn filtered_feeds_cannot_take_the_city_feeds_place() {
    let (_server, app, _dir) = server(&[
        ("TURNOUT_REALTIME__MAX_FEED_HUBS", "2"),
        ("TURNOUT_REALTIME__MAX_SUBSCRIBES_PER_MINUTE", "0"),
    ])
    .await;
    let mut socket = connect(&app).await;
    for channel in ["feed?tag=a", "feed?tag=b"] {
        let taken = subscribe(&mut socket, channel, None).await;
        assert_eq!(taken["type"], "snapshot", "{taken}");
    }
    let refused = subscribe(&mut socket, "feed?tag=c", None).await;
    assert_eq!(refused["code"], "busy", "{refused}");

    let city = subscribe(&mut socket, "feed", None).await;
    assert_eq!(city["type"], "snapshot", "{city}");
}

/// 100,000 subscribes to random `event:<uuid>` names once made a database
/// read and a lasting hub each. Such a subscribe is now answered
/// `not_found` and leaves no hub; a connection's subscribe and unsubscribe
/// frames are rate limited.
#[tokio::test]
async fn made_up_event_channels_start_no_hubs_and_churn_is_limited() {
    let (_server, app, _dir) = server(&[]).await;
    let owner = app.user();
    let draft = app.draft_event(&owner, 5).await;
    let mut socket = connect(&app).await;
    let answer = subscribe(&mut socket, &format!("event:{draft}"), None).await;
    assert_eq!(
        answer["code"], "not_found",
        "a draft is nobody's channel: {answer}"
    );
    for _ in 0..40 {
        let channel = format!("event:{}", uuid::Uuid::new_v4());
        let answer = subscribe(&mut socket, &channel, None).await;
        assert_eq!(answer["code"], "not_found", "{answer}");
    }
    // A made-up venue is no channel either (each would hold a hub of the
    // node's `max_hubs` for as long as its subscriber stayed).
    for _ in 0..5 {
        let channel = format!("venue:{}", uuid::Uuid::new_v4());
        let answer = subscribe(&mut socket, &channel, None).await;
        assert_eq!(answer["code"], "not_found", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("no venue"),
            "{answer}"
        );
    }
    for kind in [r#"kind="event""#, r#"kind="venue""#] {
        let mut hubs = f64::NAN;
        for _ in 0..100 {
            hubs = labelled(&app.metrics().await, "turnout_ws_hubs", kind);
            if hubs == 0.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(hubs, 0.0, "no hub stays for a made-up id ({kind})");
    }

    // 46 subscribes so far; the default budget is 60 a minute.
    let mut limited = false;
    for _ in 0..30 {
        send(
            &mut socket,
            json!({ "type": "unsubscribe", "channel": "feed" }),
        )
        .await;
        let answer = next(&mut socket).await;
        if answer["code"] == "rate_limited" {
            limited = true;
            break;
        }
        assert_eq!(answer["code"], "not_subscribed", "{answer}");
    }
    assert!(limited, "subscribe and unsubscribe frames are rate limited");
}

/// A token minted with the shared key and the given claims, as an identity
/// provider (or an attacker holding a leaked key's tokens) would.
fn mint(claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(crate::helpers::JWT_KEY.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// `nbf` in the future, `iat` a year ahead and `exp` in the year 3000 were
/// all accepted. Each is now refused, with a reason.
async fn token_times_are_checked(app: TestApp) {
    let now = chrono::Utc::now().timestamp();
    let sub = uuid::Uuid::new_v4();
    let claims =
        |iat: i64, exp: i64| json!({ "sub": sub, "iss": "turnout", "iat": iat, "exp": exp });
    let with_nbf = |nbf: i64| {
        let mut c = claims(now, now + 3600);
        c["nbf"] = json!(nbf);
        c
    };
    let cases = [
        (claims(now, now + 3600), None),
        (with_nbf(now + 3600), Some("not valid yet")),
        (
            claims(now + 365 * 86400, now + 365 * 86400 + 3600),
            Some("not valid yet"),
        ),
        (claims(now, 32_503_680_000), Some("lifetime")),
        (
            json!({ "sub": sub, "iss": "turnout", "exp": now + 3600 }),
            Some("invalid"),
        ),
    ];
    for (claims, refused) in cases {
        let response = app
            .request(Method::GET, "/v1/me/joins")
            .bearer_auth(mint(claims.clone()))
            .send()
            .await
            .unwrap();
        match refused {
            None => assert_eq!(response.status(), StatusCode::OK, "{claims}"),
            Some(why) => {
                let body = assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains(why), "{claims}: {message}");
            }
        }
    }
}

/// A WebSocket authenticated with a token kept serving `recs` after the
/// token expired. It is now closed with code 4001 when the token lapses.
#[actix_web::test]
async fn a_websocket_closes_when_its_token_lapses() {
    use futures_util::StreamExt;
    let app = crate::helpers::spawn_app(Backend::Sqlite).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let token = mint(json!({
        "sub": uuid::Uuid::new_v4(), "iss": "turnout", "iat": now, "exp": now + 6
    }));
    let mut socket = connect(&app).await;
    crate::realtime::authenticate(&mut socket, &token).await;
    let recs = subscribe(&mut socket, "recs", None).await;
    assert_eq!(recs["type"], "snapshot", "{recs}");

    let close = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s of the token's expiry");
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(close))) => break close,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 4001);
    assert_eq!(close.reason.as_str(), "token expired");
}

/// Anyone could put an event on any venue, and so on its kiosk. Only the
/// venue's owner, the organisers the owner names, and admins may now create
/// events there or move events to it.
async fn only_a_venues_people_put_events_on_it(app: TestApp) {
    let owner = app.user();
    let stranger = app.user();
    let hall = app.venue(&owner).await;
    let create = |user: &crate::helpers::User, venue: uuid::Uuid| {
        let starts_at = chrono::Utc::now() + chrono::Duration::days(7);
        app.as_user(user, Method::POST, "/v1/events")
            .json(&json!({ "title": "Free beer", "venue_id": venue, "starts_at": starts_at, "capacity": 5 }))
            .send()
    };
    let move_to = |user: &crate::helpers::User, event: uuid::Uuid, venue: uuid::Uuid| {
        app.as_user(user, Method::PATCH, &format!("/v1/events/{event}"))
            .json(&json!({ "venue_id": venue }))
            .send()
    };
    let organizers = format!("/v1/venues/{hall}/organizers");

    let refused = create(&stranger, hall).await.unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "not_venue_organizer").await;
    let elsewhere = app.draft_event(&stranger, 5).await;
    let refused = move_to(&stranger, elsewhere, hall).await.unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "not_venue_organizer").await;
    let stranger_view = app
        .as_user(&stranger, Method::GET, &format!("/v1/events/{elsewhere}"))
        .send()
        .await
        .unwrap();
    assert_ne!(body(stranger_view).await["data"]["venue_id"], json!(hall));
    for (method, path) in [
        (Method::GET, organizers.clone()),
        (Method::POST, organizers.clone()),
        (Method::DELETE, format!("{organizers}/{}", owner.id)),
    ] {
        let refused = app
            .as_user(&stranger, method, &path)
            .json(&json!({ "user_id": stranger.id }))
            .send()
            .await
            .unwrap();
        assert_error(refused, StatusCode::FORBIDDEN, "not_venue_owner").await;
    }

    let add = || {
        app.as_user(&owner, Method::POST, &organizers)
            .json(&json!({ "user_id": stranger.id }))
            .send()
    };
    assert_eq!(add().await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(add().await.unwrap().status(), StatusCode::OK, "already one");
    let listed = app
        .as_user(&owner, Method::GET, &organizers)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let listed = body(listed).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["data"][0]["user_id"], json!(stranger.id));

    let created = create(&stranger, hall).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED, "an organiser may");
    let placed = id_of(&body(created).await);
    assert_eq!(
        move_to(&stranger, elsewhere, hall).await.unwrap().status(),
        StatusCode::OK
    );
    let admin = crate::helpers::User {
        id: uuid::Uuid::nil(),
        token: app.token_with_role("admin"),
    };
    assert_eq!(
        create(&admin, hall).await.unwrap().status(),
        StatusCode::CREATED,
        "an admin may"
    );

    let removal = format!("{organizers}/{}", stranger.id);
    let removed = app
        .as_user(&owner, Method::DELETE, &removal)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let again = app
        .as_user(&owner, Method::DELETE, &removal)
        .send()
        .await
        .unwrap();
    assert_error(again, StatusCode::NOT_FOUND, "not_found").await;
    let refused = create(&stranger, hall).await.unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "not_venue_organizer").await;
    let kept = app
        .as_user(&stranger, Method::GET, &format!("/v1/events/{placed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), StatusCode::OK, "events already there stay");

    let nowhere = format!("/v1/venues/{}/organizers", uuid::Uuid::now_v7());
    let missing = app
        .as_user(&owner, Method::GET, &nowhere)
        .send()
        .await
        .unwrap();
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
}

crate::on_both_backends!(
    token_times_are_checked,
    only_a_venues_people_put_events_on_it,
);

/// Twelve wrong passwords for someone else's email, from another address,
/// locked the owner out for 15 minutes. Now that address is locked out of
/// that account, and the owner, elsewhere, still signs in.
#[actix_web::test]
async fn a_stranger_cannot_lock_the_owner_out() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.auth.lockout.max_delay_ms = 500;
    })
    .await
    .unwrap();
    app.register("owner@example.com").await;
    let login = |from: &'static str, password: &'static str| {
        app.login_from(from, "owner@example.com", password, None)
    };
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(login("203.0.113.9", "not the password").await.status());
    }
    assert_eq!(statuses[..10], [StatusCode::UNAUTHORIZED; 10]);
    assert_eq!(statuses[10..], [StatusCode::TOO_MANY_REQUESTS; 2]);

    let owner = login("198.51.100.7", "correct horse").await;
    assert_eq!(
        owner.status(),
        StatusCode::OK,
        "the owner signs in from home"
    );
    let stranger = login("203.0.113.9", "correct horse").await;
    assert_error(stranger, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

/// A guesser behind an office's shared address, trying many accounts,
/// locked that address out over all accounts: the colleagues behind it too,
/// right passwords and all. A device that signed in to its account before
/// sends the sign-in pass it was given and is let in; without one the
/// answer is the guesser's, whoever the account, so it tells nobody which
/// accounts sign in from there.
#[actix_web::test]
async fn a_guesser_behind_a_shared_address_cannot_lock_its_regulars_out() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        s.auth.lockout.lock_after = 2;
    })
    .await
    .unwrap();
    let (office, home) = ("203.0.113.20", "198.51.100.30");
    let regular = "regular@example.com";
    let from_registering = app.register_for_pass(regular).await;
    let signed_in = app.login_from(office, regular, "correct horse", None).await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let pass = body(signed_in).await["data"]["sign_in_pass"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..20 {
        let guess = app
            .login_from(office, &format!("someone{i}@example.com"), "a guess", None)
            .await;
        assert_eq!(guess.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    for email in ["someone-else@example.com", regular] {
        let locked = app.login_from(office, email, "correct horse", None).await;
        assert_error(locked, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    let wrong_pass = app
        .login_from(office, "someone-else@example.com", "a guess", Some(&pass))
        .await;
    assert_error(wrong_pass, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    for pass in [&pass, &from_registering] {
        let signed_in = app
            .login_from(office, regular, "correct horse", Some(pass))
            .await;
        assert_eq!(
            signed_in.status(),
            StatusCode::OK,
            "the regular's device is let in"
        );
    }

    // A pass guessed with (copied, say) gets as many tries as an address,
    // then counts for nothing: at the office the device is locked out with
    // the rest; at home, where nothing is locked, it signs in as anyone.
    for _ in 0..2 {
        let guess = app
            .login_from(office, regular, "a guess", Some(&pass))
            .await;
        assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = app
        .login_from(office, regular, "correct horse", Some(&pass))
        .await;
    assert_error(locked, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let at_home = app
        .login_from(home, regular, "correct horse", Some(&pass))
        .await;
    assert_eq!(
        at_home.status(),
        StatusCode::OK,
        "the pass's lock is not the owner's"
    );
}

/// `/metrics` answers only to the addresses an operator lists, or only on a
/// listener of its own; to anyone else it is not there.
#[actix_web::test]
async fn metrics_answer_only_where_the_operator_says() {
    let unlisted = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.metrics.allowed = vec!["192.0.2.1".parse().unwrap()];
    })
    .await
    .unwrap();
    let refused = unlisted
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_error(refused, StatusCode::NOT_FOUND, "not_found").await;

    let port = turnout::testing::reserved_port();
    let separate = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.metrics.bind = Some(format!("127.0.0.1:{port}"));
    })
    .await
    .unwrap();
    let main = separate
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
    let own = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    assert!(own.text().await.unwrap().contains("turnout_"));
}

/// Titles, descriptions, venue names and display names refuse characters
/// that turn text around or hide it (kiosk spoofing); starts are at most
/// five years ahead.
#[actix_web::test]
async fn text_that_spoofs_and_far_futures_are_refused() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await.unwrap();
    let owner = app.user();
    let venue = app.venue(&owner).await;
    let soon = chrono::Utc::now() + chrono::Duration::days(3);
    for (field, value) in [
        ("title", "free \u{202E}reeb"),
        ("description", "zero\u{200B}width"),
    ] {
        let mut event =
            json!({ "title": "Jazz", "venue_id": venue, "starts_at": soon, "capacity": 5 });
        event[field] = json!(value);
        let refused = app
            .as_user(&owner, Method::POST, "/v1/events")
            .json(&event)
            .send()
            .await
            .unwrap();
        let body = assert_error(
            refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    let venue_name = app
        .as_user(&owner, Method::POST, "/v1/venues")
        .json(&json!({ "name": "Hall \u{2067}x", "lat": 52.0, "lon": 4.0 }))
        .send()
        .await
        .unwrap();
    assert_error(
        venue_name,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let far = chrono::Utc::now() + chrono::Duration::days(6 * 365);
    let refused = app
        .as_user(&owner, Method::POST, "/v1/events")
        .json(&json!({ "title": "Jazz", "venue_id": venue, "starts_at": far, "capacity": 5 }))
        .send()
        .await
        .unwrap();
    assert_error(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_schedule",
    )
    .await;
}
