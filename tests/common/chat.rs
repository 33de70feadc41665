//! Chat jobs for the tests that run the chat worker.

use skipjack::chat::{store, ChatPayload, CHAT_KIND};
use skipjack::ids::{ConversationId, JobId, TenantId};
use skipjack::queue::{self, NewJob};
use sqlx::PgPool;

/// A tenant and `n` conversations of it.
pub async fn conversations(pool: &PgPool, n: usize) -> Vec<ConversationId> {
    let tenant = TenantId::new();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(tenant)
        .bind(format!("tenant-{tenant}"))
        .execute(pool)
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (id, _, _) = store::create_conversation(pool, tenant, &format!("user-{i}"))
            .await
            .unwrap();
        out.push(id);
    }
    out
}

/// A chat turn of `conversation` saying `message`.
pub fn chat_job(conversation: ConversationId, message: &str) -> NewJob {
    let payload = ChatPayload {
        user_id: "user".into(),
        message: message.into(),
        metadata: None,
        stream: false,
    };
    NewJob::new(CHAT_KIND, serde_json::to_value(payload).unwrap()).with_conversation(conversation)
}

/// Enqueues `jobs` in one statement; their ids, in order.
pub async fn enqueue_all(pool: &PgPool, jobs: &[NewJob]) -> Vec<JobId> {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}
