//! The OpenAPI 3 document, generated from the handlers' annotations, and an
//! interactive docs page at `/docs`.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{accounts, admin, events, joins, ops, recommendations, venues, ws};

#[derive(OpenApi)]
#[openapi(
    info(title = "Turnout", version = "1", description = "Real-time event platform: events, joins with a FIFO waitlist, live counts. Every success body is `{\"data\": …}`; every error is `{\"error\": {code, message, request_id}}`."),
    paths(
        accounts::register, accounts::login, accounts::me, accounts::update_me,
        venues::create_venue, venues::get_venue,
        venues::list_organizers, venues::add_organizer, venues::remove_organizer,
        events::create_event, events::list_events, events::get_event, events::update_event,
        events::publish_event, events::cancel_event,
        joins::join_event, joins::leave_event, joins::attendees, joins::my_joins,
        recommendations::recommendations,
        admin::stats, admin::dead_messages, admin::replay, admin::cluster,
        ws::upgrade,
        ops::health, ops::ready, ops::metrics,
    ),
    modifiers(&BearerAuth, &CommonErrors),
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

/// Errors any operation can answer with the envelope, documented once:
/// malformed input (400), a bad token (401), an unknown id (404), a body too
/// large (413), a failed validation (422), rate limits (429) and overload or
/// an unavailable store (503). An operation's own documentation wins.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Ref;
        use utoipa::openapi::{Content, ResponseBuilder};

        const COMMON: [(&str, &str); 7] = [
            ("400", "malformed request: body, query or path"),
            ("401", "missing, invalid or expired token"),
            ("404", "no such resource"),
            ("413", "request body too large"),
            ("422", "a field failed validation"),
            ("429", "rate limited; see Retry-After"),
            (
                "503",
                "overloaded or the database is unavailable; see Retry-After",
            ),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in COMMON {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// `/openapi.json`, and at `/docs/` Swagger UI with its assets inside the
/// binary: the page works without internet (venues and city IT often have
/// none) and loads nothing from anywhere else.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/docs", web::get().to(to_docs))
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()));
}

async fn to_docs() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", "/docs/"))
        .finish()
}
