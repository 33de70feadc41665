//! Tests of `skipjack::llm`: the simulated provider's `echo(N)` contract, the
//! Anthropic and OpenAI wire formats and error classes against a local mock
//! upstream, the upstream pool (strategies, ejection), the rate cap, and that
//! keys never show up in `Debug` output.
//!
//! No real LLM API is contacted: every HTTP test starts its own axum mock on
//! 127.0.0.1:0 (see `common_llm`).

mod common_llm;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use chrono::{TimeZone, Utc};
use clap::{CommandFactory, Parser};
use serde_json::json;

use common_llm::{closed_port_url, MockServer, Reply};
use skipjack::llm::{
    build_provider, estimate_tokens, http::parse_retry_after, ChatMessage, ChatRequest,
    ConfigError, ErrorClass, LlmConfig, LlmError, Provider, ProviderKind, Role, Secret, Strategy,
};

const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";
const OPENAI_KEY: &str = "sk-openai-test-9876543210";

fn request(messages: &[(Role, &str)]) -> ChatRequest {
    ChatRequest {
        system: None,
        messages: messages
            .iter()
            .map(|(role, content)| ChatMessage {
                role: *role,
                content: (*content).to_owned(),
            })
            .collect(),
    }
}

fn hello() -> ChatRequest {
    request(&[(Role::User, "hello")])
}

/// Generous bound for waits that must not hang; never a timing assertion.
const NO_HANG: Duration = Duration::from_secs(60);

/// Moves the tokio clock on by `by` at once (the test's runtime must be
/// the current-thread one); real time runs on afterwards.
async fn let_time_pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn simulated(latency_ms: u64, jitter_ms: u64, failure_rate: f64) -> Arc<dyn Provider> {
    build_provider(&LlmConfig {
        simulated_latency_ms: latency_ms,
        simulated_jitter_ms: Some(jitter_ms),
        simulated_failure_rate: failure_rate,
        ..LlmConfig::default()
    })
    .expect("simulated provider")
}

fn anthropic_config(base_url: &str) -> LlmConfig {
    LlmConfig {
        provider: ProviderKind::Anthropic,
        base_url: Some(base_url.to_owned()),
        model: Some("claude-test".into()),
        anthropic_api_key: Some(Secret::new(ANTHROPIC_KEY)),
        max_tokens: 256,
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    }
}

fn anthropic(base_url: &str) -> Arc<dyn Provider> {
    build_provider(&anthropic_config(base_url)).expect("anthropic provider")
}

fn openai_config(base_url: &str) -> LlmConfig {
    LlmConfig {
        provider: ProviderKind::Openai,
        base_url: Some(base_url.to_owned()),
        model: Some("gpt-test".into()),
        max_tokens: 128,
        timeout_seconds: 5.0,
        ..LlmConfig::default()
    }
}

/// An OpenAI-compatible pool over `urls` with the given strategy.
fn pool_config(urls: &[&str], strategy: Strategy) -> LlmConfig {
    LlmConfig {
        strategy,
        ..openai_config(&urls.join(","))
    }
}

fn requests_per_endpoint(provider: &dyn Provider) -> Vec<u64> {
    provider
        .endpoint_stats()
        .iter()
        .map(|s| s.requests)
        .collect()
}

// ---------------------------------------------------------------- simulated

#[tokio::test]
async fn simulated_echoes_message_count_and_last_message() {
    let provider = simulated(0, 0, 0.0);

    let one = provider.chat(&hello()).await.expect("one message");
    assert_eq!(one.content, "echo(1): hello");

    let mut three = request(&[
        (Role::User, "first"),
        (Role::Assistant, "echo(1): first"),
        (Role::User, "third, with spaces  and: colons"),
    ]);
    three.system = Some("a system prompt is not a message".into());
    let reply = provider.chat(&three).await.expect("three messages");
    assert_eq!(reply.content, "echo(3): third, with spaces  and: colons");
    assert_eq!(reply.model, "simulated");
    assert_eq!(provider.name(), "simulated");
}

#[tokio::test]
async fn simulated_turn_k_answers_echo_2k_minus_1() {
    let provider = simulated(0, 0, 0.0);
    let mut conversation = ChatRequest::default();
    for k in 1..=5 {
        conversation
            .messages
            .push(ChatMessage::user(format!("turn {k}")));
        let reply = provider.chat(&conversation).await.expect("turn");
        assert_eq!(reply.content, format!("echo({}): turn {k}", 2 * k - 1));
        conversation
            .messages
            .push(ChatMessage::assistant(reply.content));
    }
}

#[tokio::test]
async fn simulated_failure_rate_one_always_fails_and_zero_never() {
    let always = simulated(0, 0, 1.0);
    let never = simulated(0, 0, 0.0);
    for _ in 0..100 {
        let err = always.chat(&hello()).await.expect_err("rate 1.0 fails");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(err.class(), ErrorClass::Simulated);
        assert_eq!(err.class().as_str(), "simulated");
        never.chat(&hello()).await.expect("rate 0.0 succeeds");
    }
}

// The clock is paused: a reply takes exactly the latency drawn.
#[tokio::test(start_paused = true)]
async fn simulated_latency_is_respected() {
    let provider = simulated(100, 20, 0.0);
    for _ in 0..10 {
        let started = Instant::now();
        provider.chat(&hello()).await.expect("reply");
        let elapsed = started.elapsed();
        assert!(
            (Duration::from_millis(80)..=Duration::from_millis(120)).contains(&elapsed),
            "answered after {elapsed:?}, outside mean ± jitter"
        );
    }
}

#[tokio::test]
async fn simulated_token_estimates_are_non_zero() {
    let provider = simulated(0, 0, 0.0);
    let req = request(&[
        (Role::User, ""),
        (Role::Assistant, "x"),
        (Role::User, "twelve chars"),
    ]);
    let reply = provider.chat(&req).await.expect("reply");
    // At least one token per message; "twelve chars" alone is 3.
    assert!(reply.usage.input_tokens >= 5, "{:?}", reply.usage);
    assert!(reply.usage.output_tokens >= 1, "{:?}", reply.usage);

    assert_eq!(estimate_tokens(""), 1);
    assert_eq!(estimate_tokens("abcd"), 1);
    assert_eq!(estimate_tokens("abcde"), 2);
    assert_eq!(estimate_tokens("héllo wörld!"), 3);
}

#[tokio::test]
async fn simulated_rejects_an_empty_conversation_permanently() {
    let err = simulated(0, 0, 0.0)
        .chat(&ChatRequest::default())
        .await
        .expect_err("no messages");
    assert!(!err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Client);
}

#[test]
fn default_config_is_the_simulated_provider() {
    let provider = build_provider(&LlmConfig::default()).expect("default provider");
    assert_eq!(provider.name(), "simulated");
    assert!(provider.endpoint_stats().is_empty());
}

// ---------------------------------------------------------------- anthropic

#[tokio::test]
async fn anthropic_sends_the_messages_api_request_and_parses_the_answer() {
    let mock = MockServer::start(|_| {
        Reply::json(
            200,
            json!({
                "type": "message",
                "model": "claude-test-20250101",
                "content": [
                    {"type": "text", "text": "Hello, "},
                    {"type": "tool_use", "id": "t1", "name": "x", "input": {}},
                    {"type": "text", "text": "world"}
                ],
                "usage": {"input_tokens": 42, "output_tokens": 9}
            }),
        )
    })
    .await;
    let provider = anthropic(&mock.url);
    let mut req = request(&[
        (Role::User, "hi"),
        (Role::Assistant, "hello"),
        (Role::System, "be brief"),
        (Role::User, "how are you?"),
    ]);
    req.system = Some("you are a test".into());

    let reply = provider.chat(&req).await.expect("anthropic reply");
    assert_eq!(reply.content, "Hello, world");
    assert_eq!(reply.usage.input_tokens, 42);
    assert_eq!(reply.usage.output_tokens, 9);
    assert_eq!(reply.model, "claude-test-20250101");
    assert_eq!(provider.name(), "anthropic");

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key").as_deref(), Some(ANTHROPIC_KEY));
    assert_eq!(r.header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("authorization"), None);
    assert_eq!(
        r.body,
        json!({
            "model": "claude-test",
            "max_tokens": 256,
            "system": "you are a test\n\nbe brief",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"}
            ]
        })
    );
}

#[tokio::test]
async fn anthropic_uses_the_configured_system_prompt_and_omits_an_absent_one() {
    let mock = MockServer::start(|_| Reply::anthropic_ok("ok")).await;
    let with_default = build_provider(&LlmConfig {
        system_prompt: Some("default prompt".into()),
        ..anthropic_config(&mock.url)
    })
    .expect("provider");
    with_default.chat(&hello()).await.expect("reply");
    anthropic(&mock.url).chat(&hello()).await.expect("reply");

    let seen = mock.requests();
    assert_eq!(seen[0].body["system"], "default prompt");
    assert!(
        seen[1].body.get("system").is_none(),
        "no system field expected: {}",
        seen[1].body
    );
}

#[tokio::test]
async fn anthropic_429_is_rate_limited_with_retry_after() {
    let mock = MockServer::start(|_| {
        Reply::json(
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down please"}}),
        )
        .header("retry-after", "2")
    })
    .await;
    let err = anthropic(&mock.url).chat(&hello()).await.expect_err("429");
    assert!(err.is_retryable());
    assert_eq!(err.class(), ErrorClass::RateLimited);
    assert_eq!(err.class().as_str(), "rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    assert!(err.message().contains("slow down please"), "{err}");
}

#[tokio::test]
async fn anthropic_5xx_and_529_are_retryable_server_errors() {
    let mock = MockServer::start(|_| {
        Reply::json(
            500,
            json!({"type": "error", "error": {"type": "api_error", "message": "internal"}}),
        )
    })
    .await;
    let err = anthropic(&mock.url).chat(&hello()).await.expect_err("500");
    assert!(matches!(
        err,
        LlmError::Retryable {
            class: ErrorClass::Server,
            retry_after: None,
            ..
        }
    ));

    let overloaded = MockServer::start(|_| {
        Reply::json(
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
        .header("retry-after", "7")
    })
    .await;
    let err = anthropic(&overloaded.url)
        .chat(&hello())
        .await
        .expect_err("529");
    assert!(err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Server);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.message().contains("Overloaded"), "{err}");
}

#[tokio::test]
async fn anthropic_400_is_permanent_and_keeps_the_provider_message() {
    let mock = MockServer::start(|_| {
        Reply::json(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}}),
        )
    })
    .await;
    let err = anthropic(&mock.url).chat(&hello()).await.expect_err("400");
    assert!(!err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Client);
    assert_eq!(err.retry_after(), None);
    assert!(
        err.message().contains("messages: roles must alternate"),
        "{err}"
    );
    assert!(!err.to_string().contains(ANTHROPIC_KEY));
}

#[tokio::test]
async fn anthropic_malformed_success_is_permanent_malformed() {
    let not_json = MockServer::start(|_| Reply::text(200, "<html>gateway</html>")).await;
    let err = anthropic(&not_json.url)
        .chat(&hello())
        .await
        .expect_err("not json");
    assert!(matches!(
        err,
        LlmError::Permanent {
            class: ErrorClass::Malformed,
            ..
        }
    ));

    let no_text = MockServer::start(|_| {
        Reply::json(
            200,
            json!({"content": [], "usage": {"input_tokens": 1, "output_tokens": 0}}),
        )
    })
    .await;
    let err = anthropic(&no_text.url)
        .chat(&hello())
        .await
        .expect_err("no text block");
    assert!(!err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Malformed);
}

#[tokio::test]
async fn hanging_upstream_is_a_retryable_timeout() {
    let mock =
        MockServer::start(|_| Reply::anthropic_ok("too late").delay(Duration::from_secs(5))).await;
    let provider = build_provider(&LlmConfig {
        timeout_seconds: 0.2,
        ..anthropic_config(&mock.url)
    })
    .expect("provider");
    let err = provider.chat(&hello()).await.expect_err("timeout");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(mock.count(), 1, "the request reached the upstream");
}

#[tokio::test]
async fn connection_refused_is_a_retryable_connect_error() {
    let url = closed_port_url().await;
    let err = anthropic(&url).chat(&hello()).await.expect_err("refused");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.class(), ErrorClass::Connect);
    assert_eq!(err.class().as_str(), "connect");
}

#[test]
fn anthropic_without_a_key_is_a_config_error() {
    let result = build_provider(&LlmConfig {
        anthropic_api_key: None,
        ..anthropic_config("http://127.0.0.1:9")
    });
    assert!(matches!(result, Err(ConfigError::MissingKey { .. })));
}

#[test]
fn retry_after_accepts_seconds_and_http_dates() {
    let now = Utc
        .with_ymd_and_hms(2015, 10, 21, 7, 27, 0)
        .single()
        .expect("valid date");
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
        Some(Duration::ZERO),
        "a past date means retry now"
    );
    assert_eq!(parse_retry_after("soon", now), None);
}

// ------------------------------------------------------------------ openai

#[tokio::test]
async fn openai_sends_bearer_key_and_parses_choices_and_usage() {
    let mock = MockServer::start(|_| Reply::openai_ok("Hi there")).await;
    let provider = build_provider(&LlmConfig {
        openai_api_key: Some(Secret::new(OPENAI_KEY)),
        system_prompt: Some("be nice".into()),
        ..openai_config(&mock.url)
    })
    .expect("openai provider");
    let req = request(&[(Role::User, "a"), (Role::Assistant, "b"), (Role::User, "c")]);

    let reply = provider.chat(&req).await.expect("reply");
    assert_eq!(reply.content, "Hi there");
    assert_eq!(reply.usage.input_tokens, 13);
    assert_eq!(reply.usage.output_tokens, 5);
    assert_eq!(reply.model, "gpt-mock");
    assert_eq!(provider.name(), "openai");

    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/chat/completions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}"))
    );
    assert_eq!(
        r.body,
        json!({
            "model": "gpt-test",
            "max_tokens": 128,
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}
            ]
        })
    );
}

#[tokio::test]
async fn openai_without_usage_estimates_tokens_and_sends_no_key_when_none_is_set() {
    let mock = MockServer::start(|_| {
        Reply::json(
            200,
            json!({"choices": [{"message": {"role": "assistant", "content": "twelve chars"}}]}),
        )
    })
    .await;
    let provider = build_provider(&openai_config(&format!("{}/", mock.url))).expect("provider");
    let reply = provider
        .chat(&request(&[(Role::User, "sixteen chars!!!")]))
        .await
        .expect("reply");
    assert_eq!(reply.content, "twelve chars");
    assert_eq!(reply.usage.input_tokens, 4);
    assert_eq!(reply.usage.output_tokens, 3);
    assert_eq!(
        reply.model, "gpt-test",
        "falls back to the configured model"
    );

    let seen = mock.requests();
    assert_eq!(
        seen[0].path, "/chat/completions",
        "trailing slash is trimmed"
    );
    assert_eq!(seen[0].header("authorization"), None);
}

#[tokio::test]
async fn openai_errors_keep_the_provider_message_and_null_content_is_malformed() {
    let bad = MockServer::start(|_| {
        Reply::json(
            404,
            json!({"error": {"message": "The model `gpt-nope` does not exist", "type": "invalid_request_error"}}),
        )
    })
    .await;
    let err = build_provider(&openai_config(&bad.url))
        .expect("provider")
        .chat(&hello())
        .await
        .expect_err("404");
    assert!(!err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Client);
    assert!(err.message().contains("`gpt-nope` does not exist"), "{err}");

    let tool_call = MockServer::start(|_| {
        Reply::json(
            200,
            json!({"choices": [{"message": {"role": "assistant", "content": null}}]}),
        )
    })
    .await;
    let err = build_provider(&openai_config(&tool_call.url))
        .expect("provider")
        .chat(&hello())
        .await
        .expect_err("null content");
    assert_eq!(err.class(), ErrorClass::Malformed);
    assert!(!err.is_retryable());
}

// -------------------------------------------------------------------- pool

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_endpoints() {
    let mocks = [
        MockServer::start(|_| Reply::openai_ok("a")).await,
        MockServer::start(|_| Reply::openai_ok("b")).await,
        MockServer::start(|_| Reply::openai_ok("c")).await,
    ];
    let urls: Vec<&str> = mocks.iter().map(|m| m.url.as_str()).collect();
    let provider = build_provider(&pool_config(&urls, Strategy::RoundRobin)).expect("pool");
    for _ in 0..30 {
        provider.chat(&hello()).await.expect("reply");
    }
    let counts: Vec<usize> = mocks.iter().map(MockServer::count).collect();
    assert_eq!(counts, vec![10, 10, 10]);
    assert_eq!(requests_per_endpoint(provider.as_ref()), vec![10, 10, 10]);
    let stats = provider.endpoint_stats();
    assert_eq!(stats[1].url, mocks[1].url);
    assert!(stats.iter().all(|s| !s.ejected && s.in_flight == 0));
}

#[tokio::test]
async fn least_outstanding_prefers_the_idle_endpoint() {
    // The slow endpoint holds every request past the end of the test.
    let slow =
        MockServer::start(|_| Reply::openai_ok("slow").delay(Duration::from_secs(3600))).await;
    let fast = MockServer::start(|_| Reply::openai_ok("fast")).await;
    let provider = build_provider(&LlmConfig {
        timeout_seconds: 3600.0,
        ..pool_config(&[&slow.url, &fast.url], Strategy::LeastOutstanding)
    })
    .expect("pool");

    let mut stuck = Vec::new();
    for _ in 0..20 {
        let p = Arc::clone(&provider);
        let at_slow = slow.count();
        let mut handle = tokio::spawn(async move { p.chat(&hello()).await });
        // Answered (by the fast endpoint), or arrived at the slow one,
        // which holds it.
        let held = async {
            while slow.count() == at_slow {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let answered = tokio::time::timeout(NO_HANG, async {
            tokio::select! {
                done = &mut handle => Some(done),
                _ = held => None,
            }
        })
        .await
        .expect("answered or held");
        match answered {
            Some(done) => {
                done.expect("task").expect("reply");
            }
            None => stuck.push(handle),
        }
    }
    // Round robin would have sent 10 requests to the slow endpoint.
    assert!(
        slow.count() <= 1,
        "slow endpoint got {} requests",
        slow.count()
    );
    assert!(
        fast.count() >= 19,
        "fast endpoint got {} requests",
        fast.count()
    );
    let stats = provider.endpoint_stats();
    assert_eq!(stats[0].in_flight, stuck.len());
    for handle in stuck {
        handle.abort();
    }
}

#[tokio::test]
async fn weighted_strategy_follows_a_three_to_one_ratio() {
    let heavy = MockServer::start(|_| Reply::openai_ok("heavy")).await;
    let light = MockServer::start(|_| Reply::openai_ok("light")).await;
    let provider = build_provider(&LlmConfig {
        weights: Some("3, 1".into()),
        ..pool_config(&[&heavy.url, &light.url], Strategy::Weighted)
    })
    .expect("pool");
    for _ in 0..40 {
        provider.chat(&hello()).await.expect("reply");
    }
    // Smooth weighted round robin is exact over whole cycles.
    assert_eq!((heavy.count(), light.count()), (30, 10));
    let stats = provider.endpoint_stats();
    assert_eq!((stats[0].weight, stats[1].weight), (3, 1));
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_readmitted_after_the_cool_down() {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let flaky = MockServer::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::openai_ok("recovered")
        } else {
            Reply::json(500, json!({"error": {"message": "boom"}}))
        }
    })
    .await;
    let good = MockServer::start(|_| Reply::openai_ok("fine")).await;
    // Longer than the test: it passes only when the test lets it.
    let cool_down = Duration::from_secs(3600);
    let provider = build_provider(&LlmConfig {
        eject_after: 3,
        eject_seconds: cool_down.as_secs_f64(),
        ..pool_config(&[&flaky.url, &good.url], Strategy::RoundRobin)
    })
    .expect("pool");

    // Alternating: the flaky endpoint fails 3 times within 6 requests.
    let mut failures = 0;
    for _ in 0..6 {
        if let Err(e) = provider.chat(&hello()).await {
            assert_eq!(e.class(), ErrorClass::Server);
            assert!(e.message().contains(&flaky.url), "names the endpoint: {e}");
            failures += 1;
        }
    }
    assert_eq!((failures, flaky.count()), (3, 3));
    assert!(provider.endpoint_stats()[0].ejected);

    // Ejected: all traffic goes to the good endpoint.
    for _ in 0..10 {
        provider
            .chat(&hello())
            .await
            .expect("good endpoint answers");
    }
    assert_eq!(flaky.count(), 3, "no traffic while ejected");

    // Half-open after the cool-down: one probe, which fails and re-ejects.
    let_time_pass(cool_down + Duration::from_secs(1)).await;
    assert!(!provider.endpoint_stats()[0].ejected);
    for _ in 0..2 {
        let _ = provider.chat(&hello()).await;
    }
    assert_eq!(flaky.count(), 4, "exactly one probe after the cool-down");
    assert!(
        provider.endpoint_stats()[0].ejected,
        "failed probe re-ejects"
    );
    for _ in 0..6 {
        provider
            .chat(&hello())
            .await
            .expect("good endpoint answers");
    }
    assert_eq!(flaky.count(), 4);

    // Recovered: after the cool-down it takes its share again.
    healthy.store(true, Ordering::SeqCst);
    let_time_pass(cool_down + Duration::from_secs(1)).await;
    for _ in 0..10 {
        provider
            .chat(&hello())
            .await
            .expect("both endpoints answer");
    }
    assert_eq!(
        flaky.count(),
        9,
        "readmitted endpoint gets half the traffic"
    );
    let stats = provider.endpoint_stats();
    assert!(!stats[0].ejected);
    assert_eq!(stats[0].failures, 4);
}

#[tokio::test]
async fn when_every_endpoint_is_ejected_the_pool_still_sends_requests() {
    let a = MockServer::start(|_| Reply::json(503, json!({"error": "down"}))).await;
    let b = MockServer::start(|_| Reply::json(503, json!({"error": "down"}))).await;
    let provider = build_provider(&LlmConfig {
        eject_after: 1,
        eject_seconds: 60.0,
        ..pool_config(&[&a.url, &b.url], Strategy::RoundRobin)
    })
    .expect("pool");
    for _ in 0..2 {
        provider.chat(&hello()).await.expect_err("down");
    }
    assert!(provider.endpoint_stats().iter().all(|s| s.ejected));

    let err = provider.chat(&hello()).await.expect_err("still down");
    assert_eq!(
        err.class(),
        ErrorClass::Server,
        "a real attempt, not a refusal"
    );
    assert!(err.message().contains("down"), "{err}");
    assert_eq!(a.count() + b.count(), 3);
    // The endpoint ejected first ends its ejection first, so it is used.
    assert_eq!(a.count(), 2);
}

#[tokio::test]
async fn urls_and_keys_are_zipped_and_one_url_spreads_over_keys() {
    let a = MockServer::start(|_| Reply::openai_ok("a")).await;
    let b = MockServer::start(|_| Reply::openai_ok("b")).await;
    let zipped = build_provider(&LlmConfig {
        openai_api_key: Some(Secret::new("key-a,key-b")),
        ..pool_config(&[&a.url, &b.url], Strategy::RoundRobin)
    })
    .expect("pool");
    for _ in 0..4 {
        zipped.chat(&hello()).await.expect("reply");
    }
    let keys_seen = |m: &MockServer| -> Vec<String> {
        m.requests()
            .iter()
            .filter_map(|r| r.header("authorization"))
            .collect()
    };
    assert_eq!(keys_seen(&a), vec!["Bearer key-a", "Bearer key-a"]);
    assert_eq!(keys_seen(&b), vec!["Bearer key-b", "Bearer key-b"]);

    let c = MockServer::start(|_| Reply::openai_ok("c")).await;
    let per_key = build_provider(&LlmConfig {
        openai_api_key: Some(Secret::new("k1, k2")),
        ..pool_config(&[&c.url], Strategy::RoundRobin)
    })
    .expect("pool");
    for _ in 0..4 {
        per_key.chat(&hello()).await.expect("reply");
    }
    assert_eq!(
        keys_seen(&c),
        vec!["Bearer k1", "Bearer k2", "Bearer k1", "Bearer k2"]
    );
    let stats = per_key.endpoint_stats();
    assert_eq!(stats.len(), 2);
    let printed = format!("{stats:?}");
    assert!(
        !printed.contains("k1") && !printed.contains("k2"),
        "{printed}"
    );
}

#[test]
fn inconsistent_pool_settings_are_config_errors() {
    let mismatch = build_provider(&LlmConfig {
        openai_api_key: Some(Secret::new("k1,k2,k3")),
        ..pool_config(
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
            Strategy::RoundRobin,
        )
    });
    assert!(matches!(
        mismatch,
        Err(ConfigError::EndpointMismatch { urls: 2, keys: 3 })
    ));

    let weights = build_provider(&LlmConfig {
        weights: Some("1,2,3".into()),
        ..pool_config(
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
            Strategy::Weighted,
        )
    });
    assert!(matches!(weights, Err(ConfigError::Invalid { .. })));

    let rate = build_provider(&LlmConfig {
        simulated_failure_rate: 1.5,
        ..LlmConfig::default()
    });
    assert!(matches!(rate, Err(ConfigError::Invalid { .. })));

    let scheme = build_provider(&openai_config("ftp://example.com"));
    assert!(matches!(scheme, Err(ConfigError::Invalid { .. })));
}

#[tokio::test]
async fn endpoint_stats_strip_credentials_from_urls() {
    let mock = MockServer::start(|_| Reply::openai_ok("ok")).await;
    let with_userinfo = mock.url.replace("http://", "http://user:hunter2@");
    let provider = build_provider(&openai_config(&with_userinfo)).expect("provider");
    provider.chat(&hello()).await.expect("reply");
    let stats = provider.endpoint_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].url, mock.url);
    assert_eq!(stats[0].requests, 1);
}

// --------------------------------------------------------------- rate cap

// The clock is paused: the spacing is exact.
#[tokio::test(start_paused = true)]
async fn max_rps_spaces_requests() {
    let provider = build_provider(&LlmConfig {
        simulated_latency_ms: 0,
        max_rps: 20.0,
        ..LlmConfig::default()
    })
    .expect("provider");
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..10).map(|_| {
        let p = Arc::clone(&provider);
        async move { p.chat(&hello()).await }
    }))
    .await;
    let elapsed = started.elapsed();
    assert!(replies.iter().all(Result::is_ok));
    // 10 starts at 20/s: the 10th starts 9 intervals of 50 ms after the first.
    assert_eq!(elapsed, Duration::from_millis(450));
}

// ----------------------------------------------------------------- secrets

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    llm: LlmConfig,
}

#[test]
fn config_debug_and_help_never_show_keys() {
    let cfg = LlmConfig {
        anthropic_api_key: Some(Secret::new(ANTHROPIC_KEY)),
        openai_api_key: Some(Secret::new(OPENAI_KEY)),
        ..LlmConfig::default()
    };
    let printed = format!("{cfg:?} {cfg:#?}");
    assert!(!printed.contains(ANTHROPIC_KEY), "{printed}");
    assert!(!printed.contains(OPENAI_KEY), "{printed}");
    assert!(printed.contains("***"));

    let parsed = Cli::try_parse_from([
        "skipjack",
        "--llm-provider",
        "anthropic",
        "--anthropic-api-key",
        ANTHROPIC_KEY,
        "--llm-strategy",
        "least-outstanding",
        "--llm-timeout-seconds",
        "0.5",
    ])
    .expect("parse");
    assert_eq!(parsed.llm.provider, ProviderKind::Anthropic);
    assert_eq!(parsed.llm.strategy, Strategy::LeastOutstanding);
    assert_eq!(parsed.llm.timeout_seconds, 0.5);
    assert_eq!(
        parsed.llm.anthropic_api_key.as_ref().map(Secret::expose),
        Some(ANTHROPIC_KEY)
    );
    assert!(!format!("{parsed:?}").contains(ANTHROPIC_KEY));

    // `--help` shows env values unless told not to; keys must be hidden.
    let command = Cli::command();
    for id in ["anthropic_api_key", "openai_api_key"] {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .expect("key argument");
        assert!(arg.is_hide_env_values_set(), "{id} would show in --help");
    }
}

#[test]
fn contract_environment_variable_names_are_stable() {
    let command = Cli::command();
    let envs: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for name in [
        "SKIPJACK_LLM_PROVIDER",
        "SKIPJACK_LLM_BASE_URL",
        "SKIPJACK_LLM_MODEL",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "SKIPJACK_SIMULATED_LATENCY_MS",
        "SKIPJACK_SIMULATED_FAILURE_RATE",
    ] {
        assert!(envs.iter().any(|e| e == name), "{name} missing");
    }
}
