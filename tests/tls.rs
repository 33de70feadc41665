//! TLS for real: a private Postgres cluster that accepts TLS connections
//! only (`hostssl` in pg_hba, nothing else) and a private Redis with a TLS
//! port only, both with certificates from a CA the test makes. Shows that
//! `sslmode` means what it means in libpq for the sqlx pools and for the
//! migration runner alike, that migrate, the API and the worker run chat
//! turns over it, and that the Redis history cache works over `rediss://`
//! with the CA named by its setting.
//!
//! Needs initdb/pg_ctl (`/usr/lib/postgresql/15/bin`, or `SKIPJACK_PG_BIN`)
//! and `redis-server` built with TLS; a test whose server binary is absent
//! says so loudly and passes without running.

mod common;
mod common_stack;

use common::TestDb;
use common_stack::{find_binary, free_port, is_root, Stack, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use skipjack::chat::cache::{CacheConfig, CacheError, HistoryCache};
use skipjack::chat::turn::ChatHandler;
use skipjack::chat::{store, ChatPayload, CHAT_KIND};
use skipjack::db::{self, DbConfig};
use skipjack::ids::{ConversationId, TenantId};
use skipjack::llm::{self, LlmConfig};
use skipjack::queue::{self, NewJob};
use skipjack::worker::{Worker, WorkerConfig};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// -------------------------------------------------------------- certificates

/// A test CA, a server certificate it signed, a client certificate it
/// signed (for the role `certuser`), and an unrelated CA.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes the PKI into `dir`; the server certificate names `server_names`.
fn make_pki(dir: &Path, server_names: &[&str]) -> Pki {
    let issuer = ca("skipjack test CA");
    let other = ca("another CA");

    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        server_names
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, server_names[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = params.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "certuser");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = params.signed_by(&client_key, &issuer).unwrap();

    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", issuer.pem()),
        other_ca: write("other-ca.pem", other.pem()),
        server_cert: write("server.crt", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.crt", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

// ------------------------------------------------------- a private Postgres

/// A Postgres cluster of the test's own, TLS only, stopped on drop.
struct PrivatePg {
    dir: TempDir,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    pki: Pki,
}

/// Skips a test whose tool is missing, loudly; under scripts/test.sh
/// (which installs every tool) fails it instead.
fn loud_skip(what: &str) {
    assert!(
        std::env::var_os("SKIPJACK_TEST_REQUIRE_ALL").is_none(),
        "{what}: scripts/test.sh should have installed it"
    );
    eprintln!("\n!!!!!!!! SKIPPED: {what} !!!!!!!!\n");
}

/// Runs a server command, as `postgres` when the test runs as root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("run server command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivatePg {
    /// `None` (after a loud message) when the server binaries are absent.
    fn start() -> Option<PrivatePg> {
        let bin = PathBuf::from(
            std::env::var("SKIPJACK_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned()),
        );
        if !bin.join("initdb").is_file() || !bin.join("pg_ctl").is_file() {
            loud_skip(&format!(
                "no initdb/pg_ctl in {} (set SKIPJACK_PG_BIN)",
                bin.display()
            ));
            return None;
        }
        let dir = TempDir::new("skipjack-tls-pg");
        // Postgres wants its key readable by itself only.
        let pki = make_pki(dir.path(), &["localhost"]);
        let data = dir.path().join("data");
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path()));
        }
        for key in [&pki.server_key, &pki.client_key] {
            run(Command::new("chmod").arg("600").arg(key));
        }
        run(as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]));
        let port = free_port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nssl_ca_file = '{ca}'\n\
             fsync = off\nmax_connections = 60\nshared_buffers = 16MB\n",
            dir = dir.path().display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            ca = pki.ca.display(),
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        // TLS only: no `host` line, so a plain TCP connection finds no
        // entry and is refused. `certuser` must show a client certificate.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        run(as_server_user(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"]));
        Some(PrivatePg {
            dir,
            bin,
            data,
            port,
            pki,
        })
    }

    /// A URL to this cluster through `host`, with `params` as its query.
    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }

    fn ca(&self) -> String {
        self.pki.ca.display().to_string()
    }

    fn other_ca(&self) -> String {
        self.pki.other_ca.display().to_string()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = as_server_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = &self.dir;
    }
}

fn db_config(url: &str, pool_size: u32) -> DbConfig {
    DbConfig {
        url: url.to_owned(),
        pool_size,
        acquire_timeout: Duration::from_secs(10),
        application_name: "skipjack-tls-test".to_owned(),
    }
}

/// Whether the pool's session is encrypted, as the server sees it.
async fn session_is_tls(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- Postgres

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_mean_what_they_mean_in_libpq_for_pools_and_migrations() {
    let Some(pg) = PrivatePg::start() else { return };
    let (ca, other) = (pg.ca(), pg.other_ca());
    // (host, query, None = connects, Some(why) = refused with that cause)
    const NAME: &[&str] = &["NotValidForName", "not valid for name"];
    const ISSUER: &[&str] = &["UnknownIssuer"];
    const OK: Refused = None;
    /// None = connects over TLS, Some(causes) = refused for one of them.
    type Refused = Option<&'static [&'static str]>;
    // (host, query, then for the pool and for the migration runner:
    // None = connects over TLS, Some(causes) = refused for one of them)
    let cases: Vec<(&str, String, Refused, Refused)> = vec![
        // The certificate names localhost, signed by the CA.
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            OK,
            OK,
        ),
        // Same server through another name: the name is checked.
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            Some(NAME),
            Some(NAME),
        ),
        // verify-ca checks the chain.
        (
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            OK,
            OK,
        ),
        // verify-ca and a name the certificate does not hold: libpq, and
        // the migration runner, connect; sqlx 0.8 checks the name anyway
        // (its chain-only verifier misses the name error of rustls >=
        // 0.23.24), so the pools refuse: stricter, never weaker.
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            Some(NAME),
            OK,
        ),
        // A CA that did not sign it.
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
            Some(ISSUER),
            Some(ISSUER),
        ),
        (
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            Some(ISSUER),
            Some(ISSUER),
        ),
        // verify-full without a root file: the built-in public roots,
        // which do not hold the test CA.
        (
            "localhost",
            "sslmode=verify-full".to_owned(),
            Some(ISSUER),
            Some(ISSUER),
        ),
        // require verifies nothing...
        ("127.0.0.1", "sslmode=require".to_owned(), OK, OK),
        // ...unless given a root certificate: then it is verify-ca.
        (
            "localhost",
            format!("sslmode=require&sslrootcert={other}"),
            Some(ISSUER),
            Some(ISSUER),
        ),
        (
            "localhost",
            format!("sslmode=require&sslrootcert={ca}"),
            OK,
            OK,
        ),
        // prefer (also the default) takes the TLS the server offers.
        ("127.0.0.1", "sslmode=prefer".to_owned(), OK, OK),
        ("127.0.0.1", String::new(), OK, OK),
        // disable: the server has no entry for a plain connection.
        (
            "127.0.0.1",
            "sslmode=disable".to_owned(),
            Some(&["no encryption"]),
            Some(&["no encryption"]),
        ),
    ];
    for (host, query, pool_refused, migrate_refused) in cases {
        let url = pg.url(host, &query);
        match (db::connect(&db_config(&url, 1)).await, pool_refused) {
            (Ok(pool), None) => {
                assert!(session_is_tls(&pool).await, "{host} {query}");
                pool.close().await;
            }
            (Err(error), Some(why)) => {
                let error = format!("{error:?}");
                assert!(
                    why.iter().any(|w| error.contains(w)),
                    "{host} {query}: {error}"
                );
            }
            (outcome, _) => panic!("pool {host} {query}: {:?}", outcome.map(|_| "connected")),
        }
        match (db::migrate(&url).await, migrate_refused) {
            (Ok(_), None) => {}
            (Err(error), Some(why)) => {
                let error = error.to_string();
                assert!(
                    why.iter().any(|w| error.contains(w)),
                    "migrate {host} {query}: {error}"
                );
            }
            (outcome, _) => panic!("migrate {host} {query}: {outcome:?}"),
        }
    }
    // The migrations ran (over TLS: there is no other way in).
    let pool = db::connect(&db_config(
        &pg.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        1,
    ))
    .await
    .unwrap();
    db::check_schema(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_sslcert_and_sslkey() {
    let Some(pg) = PrivatePg::start() else { return };
    let admin = db::connect(&db_config(&pg.url("127.0.0.1", "sslmode=require"), 1))
        .await
        .unwrap();
    sqlx::query("CREATE ROLE certuser LOGIN SUPERUSER")
        .execute(&admin)
        .await
        .unwrap();
    let base = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pg.ca()
    );
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        pg.pki.client_cert.display(),
        pg.pki.client_key.display()
    );
    let pool = db::connect(&db_config(&with_cert, 1)).await.unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(user, "certuser");
    db::migrate(&with_cert).await.unwrap();
    // Without the certificate, `cert` authentication refuses the role.
    let error = format!("{:?}", db::connect(&db_config(&base, 1)).await.unwrap_err());
    assert!(error.contains("certificate"), "{error}");
    let error = db::migrate(&base).await.unwrap_err().to_string();
    assert!(error.contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_api_and_worker_run_chat_turns_over_tls_only_postgres() {
    let Some(pg) = PrivatePg::start() else { return };
    let url = pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca()),
    );
    db::migrate(&url).await.unwrap();
    let pool = db::connect(&db_config(&url, 20)).await.unwrap();
    db::check_schema(&pool).await.unwrap();
    // The direct pool (LISTEN, session locks, maintenance) over TLS too.
    let direct = db::connect(&DbConfig {
        application_name: "skipjack-tls-test-direct".into(),
        ..db_config(&url, 4)
    })
    .await
    .unwrap();
    let stack = Stack::start(pool.clone(), direct, 1).await;
    let first = stack.turn("alice", None, "hello over TLS").await;
    assert_eq!(first["response"], "echo(1): hello over TLS");
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let second = stack.turn("alice", Some(&conversation), "again").await;
    assert_eq!(second["response"], "echo(3): again", "history read back");
    assert_eq!(stack.messages(&conversation).await.len(), 4);
    // Every session of the API and the worker is encrypted (the server
    // would refuse any other), the direct ones included.
    let (plain, tls, direct): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl), \
                count(*) FILTER (WHERE a.application_name LIKE 'skipjack-tls-test-direct%') \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'client backend'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(plain, 0);
    assert!(tls >= 2 && direct >= 1, "tls {tls}, direct {direct}");
    stack.stop().await;
}

// ------------------------------------------------------------------- Redis

/// A Redis of the test's own with a TLS port only, stopped on drop.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
    pki: Pki,
}

impl PrivateRedis {
    async fn start() -> Option<PrivateRedis> {
        let Some(server) = find_binary("redis-server", &["/usr/bin/redis-server"]) else {
            loud_skip("no redis-server");
            return None;
        };
        let dir = TempDir::new("skipjack-tls-redis");
        let pki = make_pki(dir.path(), &["localhost", "127.0.0.1"]);
        let port = free_port();
        let child = Command::new(server)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        common::eventually(
            Duration::from_secs(20),
            "redis-server listening",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        Some(PrivateRedis {
            child,
            port,
            _dir: dir,
            pki,
        })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cache_config(url: String, ca_file: Option<PathBuf>) -> CacheConfig {
    CacheConfig {
        url,
        ca_file,
        ttl: Duration::from_secs(60),
        op_timeout: Duration::from_secs(2),
        retry_after: Duration::from_millis(100),
        pool_size: 2,
        key_prefix: format!("skipjack:tls-test:{}:", uuid::Uuid::now_v7().simple()),
    }
}

async fn conversation(pool: &PgPool) -> ConversationId {
    let tenant = TenantId::new();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(tenant)
        .bind(format!("tenant-{tenant}"))
        .execute(pool)
        .await
        .unwrap();
    store::create_conversation(pool, tenant, "user")
        .await
        .unwrap()
        .0
}

/// Runs `turns` chat turns of one conversation through a worker whose
/// handler uses `cache`; returns the replies.
async fn turns_with_cache(db: &TestDb, cache: &HistoryCache, turns: usize) -> Vec<String> {
    let provider = llm::build_provider(&LlmConfig {
        simulated_latency_ms: 1,
        simulated_jitter_ms: Some(0),
        ..LlmConfig::default()
    })
    .unwrap();
    let handler = ChatHandler::new(db.pool.clone(), provider).with_cache(cache.clone());
    let worker = Arc::new(
        Worker::builder(db.pool.clone())
            .register(handler)
            .config(WorkerConfig {
                poll_interval: Duration::from_millis(50),
                maintenance: None,
                queue_gauges: None,
                ..WorkerConfig::default()
            })
            .build()
            .unwrap(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (worker, stop) = (worker.clone(), stop.clone());
        async move { worker.run(stop).await.unwrap() }
    });
    let conv = conversation(&db.pool).await;
    let mut replies = Vec::new();
    for k in 0..turns {
        let writes = cache.stats().writes;
        let payload = ChatPayload {
            user_id: "user".into(),
            message: format!("turn {k}"),
            metadata: None,
            stream: false,
        };
        let job =
            NewJob::new(CHAT_KIND, serde_json::to_value(payload).unwrap()).with_conversation(conv);
        let mut conn = db.pool.acquire().await.unwrap();
        let id = queue::enqueue_many(&mut conn, &[job]).await.unwrap()[0].id;
        drop(conn);
        common::eventually(Duration::from_secs(30), "turn finished", || async {
            queue::get(&db.pool, id, None)
                .await
                .unwrap()
                .is_some_and(|j| j.result.is_some())
        })
        .await;
        let view = queue::get(&db.pool, id, None).await.unwrap().unwrap();
        replies.push(
            view.result.unwrap()["response"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        // The write-back happens in the background: wait for it (or for
        // its failure) before the next turn reads.
        common::eventually(Duration::from_secs(10), "cache write settled", || async {
            cache.stats().writes > writes || cache.stats().errors > 0
        })
        .await;
    }
    stop.cancel();
    task.await.unwrap();
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_cache_works_over_rediss_with_the_ca_setting() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let db = TestDb::new().await;
    let url = format!("rediss://localhost:{}", redis.port);

    // With the CA from the setting: histories are written, then served.
    let cache = HistoryCache::new(&cache_config(url.clone(), Some(redis.pki.ca.clone()))).unwrap();
    let replies = turns_with_cache(&db, &cache, 3).await;
    assert_eq!(
        replies,
        ["echo(1): turn 0", "echo(3): turn 1", "echo(5): turn 2"]
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.errors), (2, 0), "{stats:?}");
    assert_eq!(stats.writes, 3);

    // The server's certificate is verified: with the built-in public roots
    // or another CA, every operation fails (and the turns still complete,
    // from Postgres).
    for ca_file in [None, Some(redis.pki.other_ca.clone())] {
        let cache = HistoryCache::new(&cache_config(url.clone(), ca_file.clone())).unwrap();
        let replies = turns_with_cache(&db, &cache, 2).await;
        assert_eq!(replies, ["echo(1): turn 0", "echo(3): turn 1"]);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.writes), (0, 0), "{ca_file:?}: {stats:?}");
        assert!(stats.errors > 0, "{ca_file:?}: {stats:?}");
    }

    // A CA file makes sense with rediss:// only, and must hold a CA.
    let plain = format!("redis://localhost:{}", redis.port);
    assert!(matches!(
        HistoryCache::new(&cache_config(plain, Some(redis.pki.ca.clone()))),
        Err(CacheError::InvalidUrl(_))
    ));
    let missing = redis.pki.ca.with_file_name("missing.pem");
    assert!(matches!(
        HistoryCache::new(&cache_config(url, Some(missing))),
        Err(CacheError::Tls(_))
    ));
}
