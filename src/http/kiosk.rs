//! `GET /kiosk/{venue_id}`: a self-contained page for a venue's screen —
//! upcoming events, start times and places left, live over the venue channel,
//! reconnecting with resume. Nothing to build: the page is compiled in.
//!
//! The page is the same for every venue (it reads the id from its own
//! address), so its Content-Security-Policy names its one inline script and
//! stylesheet by hash: nothing else may run, load or connect but to us.

use std::sync::LazyLock;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use turnout_actors::domain::VenueId;
use uuid::Uuid;

use super::{ApiError, AppState};

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
    cfg.route("/kiosk/{venue_id}", web::get().to(kiosk));
}

async fn kiosk(
    state: web::Data<AppState>,
    venue: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let venue = venue.into_inner();
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
