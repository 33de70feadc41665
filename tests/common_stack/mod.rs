//! Test support: the whole service in one process (the API router and a
//! chat worker on the simulated provider) over pools the test chooses, to
//! run chat turns end to end over TLS-only Postgres or through PgBouncer.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use skipjack::api::{Api, ApiConfig};
use skipjack::chat::turn::ChatHandler;
use skipjack::llm::{self, LlmConfig};
use skipjack::queue::Backoff;
use skipjack::tenants;
use skipjack::worker::{NoopHandler, Worker, WorkerConfig};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The API and `workers` chat workers, running until [`Stack::stop`].
pub struct Stack {
    pub router: Router,
    pub key: String,
    api: Api,
    shutdown: CancellationToken,
    worker_stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Starts the API and `workers` workers: queries through `pool`,
    /// LISTEN, session locks and maintenance through `direct`.
    pub async fn start(pool: PgPool, direct: PgPool, workers: usize) -> Stack {
        let key = tenants::create_tenant_with_key(&pool, "acme", None)
            .await
            .expect("create tenant")
            .secret()
            .to_owned();
        let shutdown = CancellationToken::new();
        let api = Api::start_with_direct(
            pool.clone(),
            direct.clone(),
            ApiConfig::default(),
            shutdown.clone(),
        );
        let provider = llm::build_provider(&LlmConfig {
            simulated_latency_ms: 5,
            simulated_jitter_ms: Some(5),
            ..LlmConfig::default()
        })
        .expect("simulated provider");
        let worker_stop = CancellationToken::new();
        let workers = (0..workers)
            .map(|i| {
                let worker = Arc::new(
                    Worker::builder(pool.clone())
                        .direct_pool(direct.clone())
                        .register(NoopHandler)
                        .register(ChatHandler::new(pool.clone(), provider.clone()))
                        .config(WorkerConfig {
                            id: format!("w{i}"),
                            concurrency: 8,
                            poll_interval: Duration::from_millis(200),
                            backoff: Backoff {
                                base: Duration::from_millis(20),
                                max: Duration::from_millis(100),
                            },
                            ..WorkerConfig::default()
                        })
                        .build()
                        .expect("worker"),
                );
                let stop = worker_stop.clone();
                tokio::spawn(async move { worker.run(stop).await.expect("worker run") })
            })
            .collect();
        Stack {
            router: api.router(),
            key,
            api,
            shutdown,
            worker_stop,
            workers,
        }
    }

    /// The running API.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// One request to the API with the tenant's key: status and JSON body.
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    /// Submits a chat message; returns the accepted job (202 body).
    pub async fn submit(&self, user: &str, conversation: Option<&str>, message: &str) -> Value {
        let mut body = json!({"user_id": user, "message": message});
        if let Some(conversation) = conversation {
            body["conversation_id"] = json!(conversation);
        }
        let (status, body) = self.call("POST", "/v1/chat", Some(body)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "submit: {body}");
        body
    }

    /// Long-polls a job until it is finished (or panics after `timeout`).
    pub async fn wait_done(&self, id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self
                .call("GET", &format!("/v1/chat/{id}?wait=10"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "poll: {body}");
            if body["status"] != "queued" && body["status"] != "processing" {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} not finished within {timeout:?}: {body}"
            );
        }
    }

    /// One whole chat turn: submit, then long-poll until it is done.
    pub async fn turn(&self, user: &str, conversation: Option<&str>, message: &str) -> Value {
        let submitted = self.submit(user, conversation, message).await;
        let id = submitted["job_id"].as_str().expect("job id").to_owned();
        let done = self.wait_done(&id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        done
    }

    /// The conversation's messages as (role, content).
    pub async fn messages(&self, conversation: &str) -> Vec<(String, String)> {
        let (status, body) = self
            .call(
                "GET",
                &format!("/v1/conversations/{conversation}/messages"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Stops the workers, then the API's background tasks.
    pub async fn stop(self) {
        self.worker_stop.cancel();
        for worker in self.workers {
            worker.await.expect("worker task");
        }
        self.shutdown.cancel();
        self.api.stop().await;
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; servers bind it soon
/// after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first of `candidates` that exists as a file, or one found on PATH.
pub fn find_binary(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file())
}

/// Whether this process runs as root (Postgres refuses to run as root: the
/// test then runs the server as the `postgres` user).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
