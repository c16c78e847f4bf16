//! `GET /kiosk/{venue_id}`: a self-contained page for a venue's screen —
//! upcoming events, start times and places left, live over the venue channel,
//! reconnecting with resume. Nothing to build: the page is compiled in.
//!
//! The page is the same for every venue (it reads the id from its own
//! address), so its Content-Security-Policy names its one inline script and
//! stylesheet by hash: nothing else may run, load or connect but to us.
//!
//! The page names its channel after its address, and the server names a
//! venue's channel by the id's canonical form, so any other spelling of the
//! id (capitals, no hyphens) is redirected to the canonical address first:
//! a screen set up by hand still shows its venue. The page reads the venue
//! from the store, so it spends the address's read budget like `/v1` reads.

use std::sync::LazyLock;

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, middleware::from_fn, web};
use turnout_actors::domain::VenueId;
use uuid::Uuid;

use super::{ApiError, AppState, rate_limit};

const PAGE: &str = include_str!("kiosk/kiosk.html");

static POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash("<script>", "</script>"),
        inline_hash("<style>", "</style>"),
    )
});

/// The CSP source of the page's inline block between `open` and `close`.
fn inline_hash(open: &str, close: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let start = PAGE.find(open).expect("the kiosk page has the block") + open.len();
    let end = start + PAGE[start..].find(close).expect("the block is closed");
    let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/kiosk/{venue_id}")
            .wrap(from_fn(rate_limit::middleware))
            .route(web::get().to(kiosk)),
    );
}

async fn kiosk(
    req: HttpRequest,
    state: web::Data<AppState>,
    venue: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let venue = venue.into_inner();
    let canonical = venue.hyphenated().to_string();
    // The address as sent, not as routed (decoded): the page reads its
    // venue from its own address, and `%30…` names no channel.
    if req.path().rsplit('/').next() != Some(canonical.as_str()) {
        return Ok(HttpResponse::PermanentRedirect()
            .insert_header((header::LOCATION, format!("/kiosk/{canonical}")))
            .finish());
    }
    state
        .store
        .venue(VenueId::from(venue))
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Content-Security-Policy", POLICY.as_str()))
        .body(PAGE))
}
