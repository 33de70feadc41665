//! The operator console and `/v1/admin` against a real Postgres, through
//! the router: filters, keyset pages that stay put while jobs arrive, bad
//! filters, the admin key (and no tenant key) opening them, retry and
//! cancel, login, sessions and CSRF.

mod common;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use common::TestDb;
use http_body_util::BodyExt;
use serde_json::Value;
use skipjack::api::{Api, ApiConfig};
use skipjack::ids::{JobId, TenantId};
use skipjack::queue::{self, NewJob, Priority};
use skipjack::tenants;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

const ADMIN_KEY: &str = "console-admin-key-for-tests-0123456789abcdef";

struct Console {
    db: TestDb,
    api: Option<Api>,
    router: Router,
    shutdown: CancellationToken,
    tenant_key: String,
    tenant: TenantId,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

impl Console {
    async fn new(admin: bool) -> Console {
        let db = TestDb::new().await;
        let shutdown = CancellationToken::new();
        let config = ApiConfig {
            queue_refresh: Duration::from_millis(50),
            admin_key_hash: admin.then(|| skipjack::api::queue_status::admin_key_hash(ADMIN_KEY)),
            ..ApiConfig::default()
        };
        let api = Api::start(db.pool.clone(), config, shutdown.clone());
        let router = api.router();
        let tenant_key = tenants::create_tenant_with_key(&db.pool, "acme", None)
            .await
            .unwrap()
            .secret()
            .to_owned();
        let tenant = tenants::find_tenant(&db.pool, "acme").await.unwrap().id;
        Console {
            db,
            api: Some(api),
            router,
            shutdown,
            tenant_key,
            tenant,
        }
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    async fn request(
        &self,
        method: &str,
        uri: &str,
        bearer: Option<&str>,
        cookie: Option<&str>,
        form: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if form.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request
            .body(form.map_or_else(Body::empty, |f| Body::from(f.to_owned())))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn admin(&self, method: &str, uri: &str) -> Answer {
        self.request(method, uri, Some(ADMIN_KEY), None, None).await
    }

    /// Logs in through the form; the session cookie (`name=value`).
    async fn login(&self) -> String {
        let form = format!("key={ADMIN_KEY}");
        let a = self
            .request("POST", "/console/login", None, None, Some(&form))
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
        let set = a.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(set.contains(attribute), "{set} lacks {attribute}");
        }
        set.split(';').next().unwrap().to_owned()
    }

    /// Enqueues a live chat job of the tenant.
    async fn enqueue(&self, priority: i64) -> JobId {
        let mut conn = self.pool().acquire().await.unwrap();
        let job = NewJob::new("chat", serde_json::json!({"message": "hi"}))
            .with_tenant(self.tenant)
            .with_priority(Priority::new(priority).unwrap());
        queue::enqueue(&mut conn, &job).await.unwrap().id
    }

    /// Inserts a finished job into job_history, `minutes_ago` finished.
    async fn finished(&self, state: &str, kind: &str, priority: i16, error: Option<&str>) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO job_history (id, tenant_id, kind, priority, state, payload, attempts,
                                      max_attempts, error, worker, created_at, started_at, finished_at)
             VALUES ($1, $2, $3, $4, $5::job_state, '{\"message\": \"hi\"}', 5, 5, $6, 'w1',
                     now() - interval '2 s', now() - interval '1 s', now())",
        )
        .bind(id)
        .bind(self.tenant)
        .bind(kind)
        .bind(priority)
        .bind(state)
        .bind(error)
        .execute(self.pool())
        .await
        .unwrap();
        id
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(api) = self.api.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(api.stop());
            }
        }
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_filter_and_page_by_cursor_stably_under_inserts() {
    let c = Console::new(true).await;
    let mut failed = Vec::new();
    for i in 0..7 {
        let error = if i % 2 == 0 {
            "provider said: rate limit (429)"
        } else {
            "timeout after 30 s"
        };
        failed.push(
            c.finished("failed", "chat", 1 + (i % 3) as i16, Some(error))
                .await,
        );
    }
    let completed = c.finished("completed", "chat", 5, None).await;
    let webhook = c.finished("completed", "webhook", 1, None).await;
    let live = c.enqueue(7).await;

    // Everything, newest first: live and finished together.
    let all = c.admin("GET", "/v1/admin/jobs").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    let all_ids = ids(&all.json());
    assert_eq!(all_ids.len(), 10);
    assert_eq!(all_ids[0], live.to_string(), "the newest first");
    let mut sorted = all_ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(all_ids, sorted);

    // Each filter.
    let page = |uri: String| {
        let c = &c;
        async move {
            let a = c.admin("GET", &uri).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text);
            ids(&a.json())
        }
    };
    assert_eq!(page("/v1/admin/jobs?state=failed".into()).await.len(), 7);
    assert_eq!(
        page("/v1/admin/jobs?state=queued".into()).await,
        vec![live.to_string()]
    );
    assert_eq!(
        page("/v1/admin/jobs?kind=webhook".into()).await,
        vec![webhook.to_string()]
    );
    assert_eq!(
        page("/v1/admin/jobs?priority=5".into()).await,
        vec![completed.to_string()]
    );
    assert_eq!(
        page("/v1/admin/jobs?state=failed&priority=2".into())
            .await
            .len(),
        2
    );
    assert_eq!(
        page("/v1/admin/jobs?error=RATE%20LIMIT".into()).await.len(),
        4
    );
    assert_eq!(
        page("/v1/admin/jobs?error=50%25".into()).await.len(),
        0,
        "% is literal"
    );
    assert_eq!(page("/v1/admin/jobs?tenant=acme".into()).await.len(), 10);
    assert_eq!(
        page(format!("/v1/admin/jobs?tenant={}", c.tenant))
            .await
            .len(),
        10
    );
    assert_eq!(
        page(format!("/v1/admin/jobs?tenant={}", Uuid::now_v7()))
            .await
            .len(),
        0
    );
    assert_eq!(
        page("/v1/admin/jobs?since=1h&until=2999-01-01T00:00:00Z".into())
            .await
            .len(),
        10
    );
    assert_eq!(
        page("/v1/admin/jobs?until=2000-01-01T00:00:00Z".into())
            .await
            .len(),
        0
    );
    assert_eq!(
        page(format!("/v1/admin/jobs?conversation={}", Uuid::now_v7()))
            .await
            .len(),
        0
    );

    // Pages of 3 over the failed jobs; new failures arriving between the
    // pages do not shift them.
    let mut seen = Vec::new();
    let mut uri = "/v1/admin/jobs?state=failed&limit=3".to_owned();
    loop {
        let a = c.admin("GET", &uri).await;
        let body = a.json();
        seen.extend(ids(&body));
        c.finished("failed", "chat", 1, Some("arrived later")).await;
        match body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/admin/jobs?state=failed&limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = failed.iter().map(Uuid::to_string).collect();
    expected.reverse();
    assert_eq!(
        seen, expected,
        "every failed job once, in order, none of the later ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_get_422_with_the_parameter_named() {
    let c = Console::new(true).await;
    for (query, code) in [
        ("state=done", "invalid_state"),
        ("tenant=nobody", "invalid_tenant"),
        ("priority=11", "invalid_priority"),
        ("priority=high", "invalid_priority"),
        ("conversation=42", "invalid_conversation"),
        ("cursor=abc", "invalid_cursor"),
        ("since=yesterday", "invalid_time"),
        ("since=1h&until=2h", "invalid_time"),
        ("limit=0", "invalid_limit"),
        ("limit=201", "invalid_limit"),
    ] {
        let a = c.admin("GET", &format!("/v1/admin/jobs?{query}")).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            a.text
        );
        assert_eq!(a.code(), code, "{query}");
    }
    let long = "x".repeat(201);
    let a = c
        .admin("GET", &format!("/v1/admin/jobs?error={long}"))
        .await;
    assert_eq!(a.code(), "invalid_error");
    let a = c.admin("GET", &format!("/v1/admin/jobs?kind={long}")).await;
    assert_eq!(a.code(), "invalid_kind");
    let a = c.admin("GET", "/v1/admin/jobs/not-a-uuid").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = c
        .admin("GET", &format!("/v1/admin/jobs/{}", Uuid::now_v7()))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // The console shows the same refusal on the page.
    let cookie = c.login().await;
    let a = c
        .request("GET", "/console/jobs?priority=0", None, Some(&cookie), None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        a.text.contains("priority must be an integer from 1 to 10"),
        "{}",
        a.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_opens_neither_the_console_nor_the_admin_api() {
    let c = Console::new(true).await;
    let job = c.enqueue(1).await;
    for (method, uri) in [
        ("GET", "/v1/admin/overview".to_owned()),
        ("GET", "/v1/admin/jobs".to_owned()),
        ("GET", format!("/v1/admin/jobs/{job}")),
        ("POST", format!("/v1/admin/jobs/{job}/cancel")),
    ] {
        let a = c
            .request(method, &uri, Some(&c.tenant_key), None, None)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}");
        let a = c.request(method, &uri, None, None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri} without a key");
    }
    for uri in ["/console", "/console/jobs", &format!("/console/jobs/{job}")] {
        let a = c.request("GET", uri, Some(&c.tenant_key), None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(!a.text.contains(&job.to_string()));
        // Without anything, a browser is sent to the login form.
        let a = c.request("GET", uri, None, None, None).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(a.headers[header::LOCATION], "/console/login");
    }
    // The tenant's key typed into the login form.
    let form = format!("key={}", c.tenant_key);
    let a = c
        .request("POST", "/console/login", None, None, Some(&form))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.headers.get(header::SET_COOKIE).is_none());
    // A forged cookie.
    let a = c
        .request(
            "GET",
            "/console",
            None,
            Some("skipjack_console=v1.99999999999.00"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    // The job is still queued.
    let a = c.admin("GET", &format!("/v1/admin/jobs/{job}")).await;
    assert_eq!(a.json()["job"]["state"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_the_console_and_admin_api_say_they_are_off() {
    let c = Console::new(false).await;
    let a = c
        .request("GET", "/v1/admin/jobs", Some(ADMIN_KEY), None, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "disabled");
    assert!(a.text.contains("SKIPJACK_ADMIN_KEY"));
    for uri in ["/console", "/console/login"] {
        let a = c.request("GET", uri, None, None, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(a.text.contains("SKIPJACK_ADMIN_KEY"), "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_retries_and_cancels() {
    let c = Console::new(true).await;
    let failed = c.finished("failed", "chat", 1, Some("boom")).await;
    let queued = c.enqueue(3).await;

    let a = c
        .admin("POST", &format!("/v1/admin/jobs/{failed}/retry"))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.json()["state"], "queued");
    let a = c
        .admin("POST", &format!("/v1/admin/jobs/{failed}/retry"))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.code(), "not_retryable");

    let a = c
        .admin("POST", &format!("/v1/admin/jobs/{queued}/cancel"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["state"], "cancelled");
    let a = c
        .admin("POST", &format!("/v1/admin/jobs/{queued}/cancel"))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.code(), "not_cancellable");

    let a = c.admin("GET", &format!("/v1/admin/jobs/{queued}")).await;
    let events = a.json()["events"].clone();
    assert_eq!(events[0]["event"], "cancelled", "{events}");
    let a = c.admin("GET", "/v1/admin/overview").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["throughput"].as_array().unwrap().len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_shows_its_jobs_to_the_admin_only() {
    let c = Console::new(true).await;
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat")
        .header(header::AUTHORIZATION, format!("Bearer {}", c.tenant_key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"user_id": "u1", "message": "where is my order?"}"#,
        ))
        .unwrap();
    let response = c.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let submitted: Value = serde_json::from_slice(&bytes).unwrap();
    let conversation = submitted["conversation_id"].as_str().unwrap().to_owned();
    let job = submitted["job_id"].as_str().unwrap().to_owned();

    let a = c
        .admin("GET", &format!("/v1/admin/conversations/{conversation}"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let body = a.json();
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["jobs"][0]["id"], job.as_str());
    let a = c
        .request(
            "GET",
            &format!("/v1/admin/conversations/{conversation}"),
            Some(&c.tenant_key),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = c
        .admin(
            "GET",
            &format!("/v1/admin/conversations/{}", Uuid::now_v7()),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = c
        .admin(
            "GET",
            &format!("/v1/admin/jobs?conversation={conversation}"),
        )
        .await;
    assert_eq!(ids(&a.json()), vec![job.clone()]);

    let cookie = c.login().await;
    let a = c
        .request(
            "GET",
            &format!("/console/conversations/{conversation}"),
            None,
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains(&job) && a.text.contains("u1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_need_a_session_and_forms_a_csrf_token() {
    let c = Console::new(true).await;
    let queued = c.enqueue(4).await;
    let failed = c
        .finished("failed", "chat", 1, Some("model overloaded <script>"))
        .await;
    let cookie = c.login().await;

    let a = c
        .request("GET", "/console", None, Some(&cookie), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.text.contains("<svg"), "the chart");
    assert!(a.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let a = c
        .request(
            "GET",
            "/console/jobs?state=failed&error=overloaded",
            None,
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains(&failed.to_string()));
    assert!(!a.text.contains(&queued.to_string()));
    assert!(
        a.text.contains("&lt;script&gt;") && !a.text.contains("overloaded <script>"),
        "escaped"
    );

    let a = c
        .request(
            "GET",
            &format!("/console/jobs/{queued}"),
            None,
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let csrf = a
        .text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();

    // Without the token, or with another's, nothing happens.
    let cancel = format!("/console/jobs/{queued}/cancel");
    for form in ["", "csrf=0000", "csrf=", &format!("csrf={}", &csrf[1..])] {
        let a = c
            .request("POST", &cancel, None, Some(&cookie), Some(form))
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{form:?}");
    }
    let other = c.login().await;
    if other != cookie {
        let a = c
            .request(
                "POST",
                &cancel,
                None,
                Some(&other),
                Some(&format!("csrf={csrf}")),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "another session's token");
    }
    let a = c.admin("GET", &format!("/v1/admin/jobs/{queued}")).await;
    assert_eq!(a.json()["job"]["state"], "queued");

    // The confirmation page, then the action.
    let a = c.request("GET", &cancel, None, Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains("Cancel the job"));
    let a = c
        .request(
            "POST",
            &cancel,
            None,
            Some(&cookie),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let a = c.admin("GET", &format!("/v1/admin/jobs/{queued}")).await;
    assert_eq!(a.json()["job"]["state"], "cancelled");

    let retry = format!("/console/jobs/{failed}/retry");
    let a = c
        .request(
            "POST",
            &retry,
            None,
            Some(&cookie),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let a = c
        .request(
            "GET",
            &format!("/console/jobs/{failed}/live"),
            None,
            Some(&cookie),
            None,
        )
        .await;
    assert!(a.text.contains("queued"), "{}", a.text);

    // Logging out needs the token too.
    let a = c
        .request("POST", "/console/logout", None, Some(&cookie), Some(""))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = c
        .request(
            "POST",
            "/console/logout",
            None,
            Some(&cookie),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

/// Filters that match few jobs cost a bounded scan per page: a page may be
/// short, even empty, and still say where to go on; following the cursors
/// finds every match once, in order, live and finished together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rare_filters_are_searched_page_by_page_with_a_bounded_scan() {
    let c = Console::new(true).await;
    let scan = skipjack::api::admin::query::SCAN_BUDGET;
    // 2.5 scan budgets of finished jobs, one a minute apart in submission
    // time, ending an hour ago; three of kind `rare`, far apart.
    let total = scan * 5 / 2;
    let rare = [100_i64, scan + 500, 2 * scan + 1000];
    sqlx::query(
        "INSERT INTO job_history (id, tenant_id, kind, priority, state, payload, attempts,
                                  max_attempts, worker, created_at, started_at, finished_at)
         SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
                 || '7' || substr(md5(i::text), 1, 19))::uuid,
                $1, CASE WHEN i = ANY($3) THEN 'rare' ELSE 'chat' END, 5, 'completed',
                '{}', 1, 5, 'w1', at, at, at + interval '1 s'
         FROM generate_series(1, $2) AS i,
              LATERAL (SELECT now() - interval '1 hour' - i * interval '1 minute' AS at) t",
    )
    .bind(c.tenant)
    .bind(total)
    .bind(&rare[..])
    .execute(c.pool())
    .await
    .unwrap();
    sqlx::query("ANALYZE job_history")
        .execute(c.pool())
        .await
        .unwrap();
    let expected_finished: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM job_history WHERE kind = 'rare' ORDER BY id DESC")
            .fetch_all(c.pool())
            .await
            .unwrap();
    assert_eq!(expected_finished.len(), 3);
    let mut conn = c.pool().acquire().await.unwrap();
    let live = queue::enqueue(
        &mut conn,
        &NewJob::new("rare", serde_json::json!({})).with_tenant(c.tenant),
    )
    .await
    .unwrap()
    .id;
    drop(conn);

    let mut found = Vec::new();
    let mut short_pages_with_more = 0;
    let mut uri = "/v1/admin/jobs?kind=rare&limit=2".to_owned();
    for _ in 0..20 {
        let a = c.admin("GET", &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text);
        let body = a.json();
        let page = ids(&body);
        assert!(page.len() <= 2);
        found.extend(page.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                if page.len() < 2 {
                    short_pages_with_more += 1;
                    assert!(
                        body["searched_to"].is_string(),
                        "a short page says how far it searched: {body}"
                    );
                }
                uri = format!("/v1/admin/jobs?kind=rare&limit=2&cursor={cursor}");
            }
            None => {
                assert!(body["searched_to"].is_null());
                uri.clear();
                break;
            }
        }
    }
    assert!(uri.is_empty(), "the search reached the end");
    let mut expected = vec![live.to_string()];
    expected.extend(expected_finished);
    assert_eq!(found, expected, "every match once, newest first");
    assert!(
        short_pages_with_more >= 1,
        "no page stopped at its scan budget: the whole history was scanned at once"
    );

    // A filter matching nothing answers after one budget, not the history.
    let a = c.admin("GET", "/v1/admin/jobs?kind=nothing").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(ids(&a.json()).is_empty());
    assert!(a.json()["next_cursor"].is_string(), "{}", a.text);

    // The page in the console says so.
    let cookie = c.login().await;
    let html = c
        .request(
            "GET",
            "/console/jobs?kind=nothing",
            None,
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html.text.contains("id=\"searched-to\""), "{}", html.text);
    assert!(html
        .text
        .contains("No job matches among those searched so far"));
}

/// A list that runs over its 5 s limit (here: behind a lock) is answered
/// 503 with the reason, not 500, and nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_stopped_at_its_time_limit_is_a_503() {
    let c = Console::new(true).await;
    let failed = c.finished("failed", "chat", 1, Some("boom")).await;
    let mut locker = c.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE job_history IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let a = c.admin("GET", "/v1/admin/jobs?state=failed").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert_eq!(a.code(), "unavailable");
    assert!(a.text.contains("over 5 s"), "{}", a.text);
    locker.rollback().await.unwrap();
    let a = c.admin("GET", "/v1/admin/jobs?state=failed").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(ids(&a.json()), vec![failed.to_string()]);
}

/// The overview shows each provider budget the workers recorded, with its
/// limits and how much of its burst is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_provider_budgets_in_use() {
    use skipjack::llm::budget::{Budget, Reserve};
    let c = Console::new(true).await;
    let empty = c.admin("GET", "/v1/admin/overview").await;
    assert_eq!(empty.json()["budgets"], serde_json::json!([]));

    // 60 requests a minute with a 5% burst: 3 at once, then one every
    // 60 / 57 s.
    let limits = skipjack::llm::BudgetLimits {
        rpm: 60,
        tpm: 0,
        burst: 0.05,
    };
    let budget = Budget::new(
        c.pool().clone(),
        "sim-model",
        [("http://llm.internal/v1#0".to_owned(), limits)],
    )
    .unwrap();
    budget.record_limits().await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            budget.try_reserve(0, 0).await.unwrap(),
            Reserve::Granted(_)
        ));
    }

    let a = c.admin("GET", "/v1/admin/overview").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let budgets = a.json()["budgets"].clone();
    assert_eq!(budgets.as_array().unwrap().len(), 1, "{budgets}");
    let b = &budgets[0];
    assert_eq!(b["endpoint"], "http://llm.internal/v1#0");
    assert_eq!(b["model"], "sim-model");
    assert_eq!(b["requests"]["limit_per_minute"], 60);
    assert_eq!(b["requests"]["burst"], 3);
    let in_use = b["requests"]["in_use"].as_f64().unwrap();
    assert!(
        in_use > 0.0 && in_use <= 3.0,
        "three requests just reserved: {in_use}"
    );
    assert!(b["tokens"].is_null(), "no token limit: {b}");

    let cookie = c.login().await;
    let html = c
        .request("GET", "/console/overview/live", None, Some(&cookie), None)
        .await;
    assert_eq!(html.status, StatusCode::OK, "{}", html.text);
    assert!(html.text.contains("llm.internal"), "{}", html.text);
    assert!(html.text.contains("of 3 (limit 60/min)"), "{}", html.text);
}
