//! The operator console: the queue, its jobs and conversations in a
//! browser, served by the API process under `/console`.
//!
//! Pages are rendered on the server from the templates in
//! `src/api/console/templates/` (minijinja, auto-escaped), compiled into the
//! binary with the stylesheet and the one small script (`assets/`), so the
//! console needs no build step, no CDN and no files next to the binary.
//! The script only refreshes the live parts of the overview and job pages
//! every few seconds from `…/live` fragments; everything else works without
//! it.
//!
//! The pages read through [`admin::query`] and act through the same functions as
//! `/v1/admin` ([`crate::api::admin`]), which run the queue's retry and
//! cancel like `POST /v1/chat/{id}/retry`, `DELETE /v1/chat/{id}` and
//! `skipjack jobs`. Who may use it: [`admin::auth`] (the admin key, never a
//! tenant's key). See docs/console.md.
//!
//! # Routes
//! - `GET /console`: overview (`/console/overview/live`: its live part).
//! - `GET /console/jobs?…`: jobs by filters, newest first, keyset pages.
//! - `GET /console/jobs/{id}`: one job (`…/live`: its live part);
//!   `GET|POST /console/jobs/{id}/retry|cancel`: confirmation, action.
//! - `GET /console/conversations/{id}`: a conversation's turns and jobs.
//! - `GET|POST /console/login`, `POST /console/logout`.
//! - `GET /console/assets/{console.css,console.js}`.

mod chart;

use crate::api::admin::{self, auth, query, JobsQuery};
use crate::api::error::ApiError;
use crate::api::observe::observed;
use crate::api::AppState;
use crate::ids::{ConversationId, JobId};
use auth::Session;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, FromRequestParts, Path, Query, Request, State};
use axum::http::header::{self, AUTHORIZATION};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use minijinja::{context, Environment, Value};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::LazyLock;
use uuid::Uuid;

/// What a query value escapes: all but RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Security headers of every console answer: nothing but the console's
/// own script and stylesheet may load, no framing, no caching of pages.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("message.html", include_str!("templates/message.html")),
        ("overview.html", include_str!("templates/overview.html")),
        (
            "overview_live.html",
            include_str!("templates/overview_live.html"),
        ),
        ("jobs.html", include_str!("templates/jobs.html")),
        ("job.html", include_str!("templates/job.html")),
        ("job_live.html", include_str!("templates/job_live.html")),
        ("confirm.html", include_str!("templates/confirm.html")),
        (
            "conversation.html",
            include_str!("templates/conversation.html"),
        ),
    ] {
        env.add_template(name, source)
            .expect("the console's templates parse");
    }
    env.add_filter("dt", |v: Value| -> String {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| {
                t.with_timezone(&Utc)
                    .format("%Y-%m-%d %H:%M:%S%.3f")
                    .to_string()
            })
            .unwrap_or_default()
    });
    env.add_filter("secs", |v: f64| -> String { seconds(v) });
    env.add_filter("pretty", |v: Value| -> String {
        serde_json::to_value(&v)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_default()
    });
    env.add_filter("truncate", |s: String, n: usize| -> String {
        if s.chars().count() <= n {
            s
        } else {
            s.chars().take(n).chain(['…']).collect()
        }
    });
    env.add_function("span", |a: String, b: String| -> String {
        match (
            DateTime::parse_from_rfc3339(&a),
            DateTime::parse_from_rfc3339(&b),
        ) {
            (Ok(a), Ok(b)) => seconds((b - a).num_microseconds().unwrap_or(0) as f64 / 1e6),
            _ => String::new(),
        }
    });
    env
});

/// `s` seconds for people: `850 ms`, `12.3 s`, `4 min 05 s`, `3 h 12 min`.
fn seconds(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        "0 s".to_owned()
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// The `/console` routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/console", observed("/console", get(overview_page)))
        .route(
            "/console/",
            get(|| async { Redirect::permanent("/console") }),
        )
        .route(
            "/console/overview/live",
            observed("/console/overview/live", get(overview_live)),
        )
        .route(
            "/console/login",
            observed("/console/login", get(login_page).post(login)),
        )
        .route("/console/logout", observed("/console/logout", post(logout)))
        .route("/console/jobs", observed("/console/jobs", get(jobs_page)))
        .route(
            "/console/jobs/{job_id}",
            observed("/console/jobs/{job_id}", get(job_page)),
        )
        .route(
            "/console/jobs/{job_id}/live",
            observed("/console/jobs/{job_id}/live", get(job_live)),
        )
        .route(
            "/console/jobs/{job_id}/{action}",
            observed(
                "/console/jobs/{job_id}/{action}",
                get(confirm_page).post(act),
            ),
        )
        .route(
            "/console/conversations/{conversation_id}",
            observed(
                "/console/conversations/{conversation_id}",
                get(conversation_page),
            ),
        )
        .route(
            "/console/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/console/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .layer(middleware::from_fn(security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A rendered template, or a logged 500.
fn render(status: StatusCode, name: &str, ctx: Value) -> Response {
    match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, template = name, "rendering a console page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A page with a title and a message.
fn message(
    status: StatusCode,
    title: &str,
    text: &str,
    csrf: Option<&str>,
    back: Option<&str>,
) -> Response {
    let kind = if status.is_success() {
        "notice"
    } else {
        "error"
    };
    render(
        status,
        "message.html",
        context! { title, message => text, kind, csrf, back },
    )
}

/// An API error as a console page.
fn error_page(error: ApiError, session: Option<&Session>) -> Response {
    let text = match &error {
        ApiError::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            "internal error".to_owned()
        }
        other => other.to_string(),
    };
    let csrf = session.map(Session::csrf);
    message(error.status(), "Error", &text, csrf.as_deref(), None)
}

/// A logged-in console request. Without a session: a redirect to the login
/// page, or 401 when the request carries an `Authorization` header (an API
/// key, a tenant's included, opens nothing here); without an admin key
/// configured: 404 saying so.
pub struct Page {
    session: Session,
}

impl Page {
    fn csrf(&self) -> String {
        self.session.csrf()
    }
}

fn disabled() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Console off",
        "The console is off: set SKIPJACK_ADMIN_KEY (at least 32 characters) on the API to enable it.",
        None,
        None,
    )
}

impl FromRequestParts<AppState> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(hash) = state.config.admin_key_hash else {
            return Err(disabled());
        };
        match Session::from_headers(&parts.headers, hash) {
            Some(session) => Ok(Page { session }),
            None if parts.headers.contains_key(AUTHORIZATION) => Err(message(
                StatusCode::UNAUTHORIZED,
                "Not logged in",
                "The console takes a login with the admin key; API keys (tenants' keys included) open nothing here.",
                None,
                Some("/console/login"),
            )),
            None => Err(Redirect::to("/console/login").into_response()),
        }
    }
}

/// What `notice=` may say after an action.
fn notice(code: Option<&str>) -> Option<&'static str> {
    match code? {
        "retried" => Some("The job is queued again."),
        "cancelled" => Some("The job is cancelled."),
        _ => None,
    }
}

#[derive(Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn overview_context(state: &AppState) -> Result<Value, ApiError> {
    let o = admin::read_overview(state).await?;
    let (mut completed, mut failed, mut cancelled) = (0, 0, 0);
    for m in &o.throughput {
        completed += m.completed;
        failed += m.failed;
        cancelled += m.cancelled;
    }
    let chart = Value::from_safe_string(chart::throughput_svg(&o.throughput));
    Ok(context! {
        o => Value::from_serialize(&o),
        hour => context! { completed, failed, cancelled },
        chart,
    })
}

async fn overview_page(State(state): State<AppState>, page: Page) -> Response {
    match overview_context(&state).await {
        Ok(ctx) => render(
            StatusCode::OK,
            "overview.html",
            context! { title => "Overview", nav => "overview", csrf => page.csrf(), ..ctx },
        ),
        Err(e) => error_page(e, Some(&page.session)),
    }
}

async fn overview_live(State(state): State<AppState>, page: Page) -> Response {
    match overview_context(&state).await {
        Ok(ctx) => render(StatusCode::OK, "overview_live.html", ctx),
        Err(e) => error_page(e, Some(&page.session)),
    }
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(hash) = state.config.admin_key_hash else {
        return disabled();
    };
    if Session::from_headers(&headers, hash).is_some() {
        return Redirect::to("/console").into_response();
    }
    render(StatusCode::OK, "login.html", context! { title => "Log in" })
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    key: String,
}

fn session_cookie(value: &str, max_age: u64, headers: &HeaderMap) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        auth::COOKIE_NAME,
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).expect("a cookie of ASCII characters")
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Some(hash) = state.config.admin_key_hash else {
        return disabled();
    };
    let key = form.map(|Form(f)| f.key).unwrap_or_default();
    if !auth::is_admin_key(&hash, &key) {
        tracing::info!("console login refused");
        return render(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { title => "Log in", error => "That is not the admin key." },
        );
    }
    let value = auth::new_session(&hash, Utc::now().timestamp());
    let mut response = Redirect::to("/console").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&value, auth::SESSION_TTL.as_secs(), &headers),
    );
    tracing::info!("console login");
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn csrf_refused(page: &Page) -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Refused",
        "The form's CSRF token is missing or not this session's: reload the page and try again.",
        Some(&page.csrf()),
        None,
    )
}

async fn logout(
    page: Page,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if !form.is_ok_and(|Form(f)| page.session.check_csrf(&f.csrf)) {
        return csrf_refused(&page);
    }
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0, &headers));
    response
}

/// `/console/jobs?` with `q`'s filters (and `cursor`).
fn jobs_url(q: &JobsQuery, cursor: Option<Uuid>) -> String {
    let cursor = cursor.map(|c| c.to_string());
    let mut url = "/console/jobs?".to_owned();
    let fields = [
        ("state", &q.state),
        ("tenant", &q.tenant),
        ("priority", &q.priority),
        ("kind", &q.kind),
        ("conversation", &q.conversation),
        ("since", &q.since),
        ("until", &q.until),
        ("error", &q.error),
        ("limit", &q.limit),
        ("cursor", &cursor),
    ];
    for (name, value) in fields {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            url.push_str(name);
            url.push('=');
            url.extend(utf8_percent_encode(v, QUERY_VALUE));
            url.push('&');
        }
    }
    url.pop();
    url
}

async fn tenant_map(state: &AppState) -> Result<HashMap<String, String>, ApiError> {
    Ok(query::tenant_names(&state.pool)
        .await?
        .into_iter()
        .map(|(id, name)| (id.to_string(), name))
        .collect())
}

async fn jobs_page(
    State(state): State<AppState>,
    page: Page,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let base = context! { title => "Jobs", nav => "jobs", csrf => page.csrf(), q => Value::from_serialize(&q) };
    let tenants = match tenant_map(&state).await {
        Ok(t) => t,
        Err(e) => return error_page(e, Some(&page.session)),
    };
    match admin::read_jobs(&state, &q).await {
        Ok(result) => {
            let next_url = result.next_cursor.map(|c| jobs_url(&q, Some(c)));
            let first = JobsQuery {
                cursor: None,
                ..q.clone()
            };
            render(
                StatusCode::OK,
                "jobs.html",
                context! {
                    page => Value::from_serialize(&result),
                    tenants,
                    next_url,
                    first_url => jobs_url(&first, None),
                    cursor => q.cursor.is_some(),
                    ..base
                },
            )
        }
        Err(e @ ApiError::Invalid { .. }) => render(
            e.status(),
            "jobs.html",
            context! { error => e.to_string(), ..base },
        ),
        Err(e) => error_page(e, Some(&page.session)),
    }
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::invalid("invalid_id", "the id in the path is not a UUID"))
}

async fn job_context(state: &AppState, raw: &str) -> Result<Value, ApiError> {
    let d = admin::read_job(state, JobId(parse_id(raw)?)).await?;
    let tenant_name = match d.job.tenant_id {
        Some(t) => tenant_map(state).await?.remove(&t.to_string()),
        None => None,
    };
    let final_ = matches!(d.job.state.as_str(), "completed" | "failed" | "cancelled");
    Ok(context! { d => Value::from_serialize(&d), tenant_name, final => final_ })
}

async fn job_page(
    State(state): State<AppState>,
    page: Page,
    Path(raw): Path<String>,
    Query(n): Query<NoticeQuery>,
) -> Response {
    match job_context(&state, &raw).await {
        Ok(ctx) => render(
            StatusCode::OK,
            "job.html",
            context! {
                title => format!("Job {raw}"),
                nav => "jobs",
                csrf => page.csrf(),
                notice => notice(n.notice.as_deref()),
                ..ctx
            },
        ),
        Err(e) => error_page(e, Some(&page.session)),
    }
}

async fn job_live(State(state): State<AppState>, page: Page, Path(raw): Path<String>) -> Response {
    match job_context(&state, &raw).await {
        Ok(ctx) => render(StatusCode::OK, "job_live.html", ctx),
        Err(e) => error_page(e, Some(&page.session)),
    }
}

/// The actions a job page offers.
#[derive(Clone, Copy)]
enum Action {
    Retry,
    Cancel,
}

fn action(name: &str) -> Result<Action, ApiError> {
    match name {
        "retry" => Ok(Action::Retry),
        "cancel" => Ok(Action::Cancel),
        _ => Err(ApiError::NotFound("page")),
    }
}

async fn confirm_page(
    State(state): State<AppState>,
    page: Page,
    Path((raw, name)): Path<(String, String)>,
) -> Response {
    let result = async {
        let what = action(&name)?;
        let id = JobId(parse_id(&raw)?);
        let d = admin::read_job(&state, id).await?;
        Ok::<_, ApiError>((what, d))
    }
    .await;
    let (what, d) = match result {
        Ok(found) => found,
        Err(e) => return error_page(e, Some(&page.session)),
    };
    let (title, verb, kind, question) = match what {
        Action::Retry => (
            "Retry job",
            "Retry the job",
            "",
            format!(
                "Retry job {} ({}, {} attempts so far)? It goes back to the queue under the same id with a fresh budget of attempts.",
                d.job.id, d.job.state, d.job.attempts
            ),
        ),
        Action::Cancel => (
            "Cancel job",
            "Cancel the job",
            "danger",
            format!(
                "Cancel job {} ({})? A running job is stopped at once and stores no reply.",
                d.job.id, d.job.state
            ),
        ),
    };
    render(
        StatusCode::OK,
        "confirm.html",
        context! {
            title, verb, kind, question, nav => "jobs",
            csrf => page.csrf(),
            job_id => d.job.id,
            action => format!("/console/jobs/{}/{name}", d.job.id),
        },
    )
}

async fn act(
    State(state): State<AppState>,
    page: Page,
    Path((raw, name)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if !form.is_ok_and(|Form(f)| page.session.check_csrf(&f.csrf)) {
        return csrf_refused(&page);
    }
    let result = async {
        let what = action(&name)?;
        let id = JobId(parse_id(&raw)?);
        match what {
            Action::Retry => admin::retry_job(&state, id).await.map(|_| (id, "retried")),
            Action::Cancel => admin::cancel_job(&state, id)
                .await
                .map(|_| (id, "cancelled")),
        }
    }
    .await;
    match result {
        Ok((id, done)) => {
            Redirect::to(&format!("/console/jobs/{id}?notice={done}")).into_response()
        }
        Err(e) => {
            let back = format!("/console/jobs/{raw}");
            let text = e.to_string();
            message(
                e.status(),
                "Not done",
                &text,
                Some(&page.csrf()),
                Some(&back),
            )
        }
    }
}

async fn conversation_page(
    State(state): State<AppState>,
    page: Page,
    Path(raw): Path<String>,
) -> Response {
    let result = async {
        let id = ConversationId(parse_id(&raw)?);
        let c = admin::read_conversation(&state, id).await?;
        let tenant_name = tenant_map(&state).await?.remove(&c.tenant_id.to_string());
        Ok::<_, ApiError>((c, tenant_name))
    }
    .await;
    match result {
        Ok((c, tenant_name)) => render(
            StatusCode::OK,
            "conversation.html",
            context! {
                title => format!("Conversation {raw}"),
                nav => "jobs",
                csrf => page.csrf(),
                c => Value::from_serialize(&c),
                tenant_name,
            },
        ),
        Err(e) => error_page(e, Some(&page.session)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(0.25), "250 ms");
        assert_eq!(seconds(12.34), "12.3 s");
        assert_eq!(seconds(245.0), "4 min 05 s");
        assert_eq!(seconds(3600.0 * 3.0 + 720.0), "3 h 12 min");
    }

    #[test]
    fn pages_link_to_the_next_with_the_same_filters() {
        let q = JobsQuery {
            state: Some("failed".into()),
            error: Some("rate limit & 50%".into()),
            ..JobsQuery::default()
        };
        let cursor = Uuid::nil();
        assert_eq!(
            jobs_url(&q, Some(cursor)),
            format!("/console/jobs?state=failed&error=rate%20limit%20%26%2050%25&cursor={cursor}")
        );
        assert_eq!(jobs_url(&JobsQuery::default(), None), "/console/jobs");
    }
}
