//! The OpenAPI 3 document, generated from the handlers' annotations, and an
//! interactive docs page at `/docs`.

use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{accounts, admin, events, history, joins, ops, recommendations, venues, ws};

#[derive(OpenApi)]
#[openapi(
    info(title = "Turnout", version = "1", description = "Real-time event platform: events, joins (alone or as a party) with a first-come-first-served waitlist that can hold freed places as offers, live counts. Every success body is `{\"data\": …}`; every error is `{\"error\": {code, message, request_id}}`."),
    paths(
        accounts::register, accounts::login, accounts::me, accounts::update_me,
        venues::create_venue, venues::get_venue, venues::update_venue,
        venues::list_organizers, venues::add_organizer, venues::remove_organizer,
        events::create_event, events::list_events, events::get_event, events::update_event,
        events::publish_event, events::cancel_event,
        joins::join_event, joins::leave_event, joins::accept_offer, joins::decline_offer,
        joins::attendees, joins::my_joins, history::history,
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

/// Errors documented once, on the operations that can answer them: a bad
/// token (401) on `/v1`; a malformed or invalid request (400, 422) where
/// there is a body, a query or a path to get wrong; an unknown id (404) where
/// the path names one; a body too large or too slow (413, 408) where there is
/// a body; and anywhere, a client over a budget (429: rate limits on `/v1`,
/// and a connection past the per-address cap on any path) and overload (503:
/// a full queue, the store away). An operation's own documentation wins.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Ref;
        use utoipa::openapi::{Content, ResponseBuilder};

        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            let names_a_resource = path.contains('{');
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let body = operation.request_body.is_some();
                let inputs = body
                    || names_a_resource
                    || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let errors = [
                    ("400", "malformed request: body, query or path", inputs),
                    ("401", "missing, invalid or expired token", api),
                    ("404", "no such resource", names_a_resource),
                    ("408", "the request body did not arrive in time", body),
                    ("413", "request body too large", body),
                    (
                        "415",
                        "the body is not JSON (Content-Type: application/json)",
                        body,
                    ),
                    ("422", "a field failed validation", inputs),
                    (
                        "429",
                        "rate limited, or too many connections from this address; see Retry-After",
                        true,
                    ),
                    (
                        "503",
                        "overloaded or the database is unavailable; see Retry-After",
                        true,
                    ),
                ];
                for (status, description, _) in errors.into_iter().filter(|e| e.2) {
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
