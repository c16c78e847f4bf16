//! The OpenAPI 3 document, generated from the handlers' annotations, and an
//! interactive docs page at `/docs`.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_scalar::{Scalar, Servable};

use super::{accounts, admin, events, joins, ops, recommendations, venues, ws};

#[derive(OpenApi)]
#[openapi(
    info(title = "Turnout", version = "1", description = "Real-time event platform: events, joins with a FIFO waitlist, live counts. Every success body is `{\"data\": …}`; every error is `{\"error\": {code, message, request_id}}`."),
    paths(
        accounts::register, accounts::login, accounts::me, accounts::update_me,
        venues::create_venue, venues::get_venue,
        events::create_event, events::list_events, events::get_event, events::update_event,
        events::publish_event, events::cancel_event,
        joins::join_event, joins::leave_event, joins::attendees, joins::my_joins,
        recommendations::recommendations,
        admin::dead_messages, admin::replay,
        ws::upgrade,
        ops::health, ops::ready, ops::metrics,
    ),
    modifiers(&BearerAuth),
    tags((name = "accounts"), (name = "venues"), (name = "events"), (name = "joins"), (name = "recommendations"), (name = "realtime"), (name = "admin"), (name = "ops"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(document))
        .service(Scalar::with_url("/docs", ApiDoc::openapi()));
}

async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
