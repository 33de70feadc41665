//! Field checks shared by the routes. Every failure is a 422 whose code
//! names the field, so nothing a client sends reaches the database in a
//! shape it would reject (which would be a 500, or fail a whole batch).

use super::error::{ApiError, ApiResult};
use crate::queue::Priority;
use serde_json::Value;

/// Longest user id, in characters (the schema's limit).
pub const MAX_USER_ID_CHARS: usize = 256;
/// Longest idempotency key, in bytes (the queue's limit).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Postgres text and jsonb cannot hold U+0000.
fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// Checks a user id: 1 to [`MAX_USER_ID_CHARS`] characters, not blank,
/// no NUL.
pub(crate) fn user_id(user_id: &str) -> ApiResult<()> {
    let chars = user_id.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS || user_id.trim().is_empty() {
        return Err(ApiError::invalid(
            "invalid_user_id",
            format!("user_id must be 1 to {MAX_USER_ID_CHARS} characters, not blank"),
        ));
    }
    if has_nul(user_id) {
        return Err(ApiError::invalid(
            "invalid_user_id",
            "user_id must not contain NUL characters",
        ));
    }
    Ok(())
}

/// Checks a chat message: not blank, at most `max_bytes`, no NUL.
pub(crate) fn message(message: &str, max_bytes: usize) -> ApiResult<()> {
    if message.trim().is_empty() {
        return Err(ApiError::invalid(
            "invalid_message",
            "message must not be empty",
        ));
    }
    if message.len() > max_bytes {
        return Err(ApiError::invalid(
            "invalid_message",
            format!("message must be at most {max_bytes} bytes"),
        ));
    }
    if has_nul(message) {
        return Err(ApiError::invalid(
            "invalid_message",
            "message must not contain NUL characters",
        ));
    }
    Ok(())
}

/// Checks a priority (1 to 10); the default one when absent.
pub(crate) fn priority(priority: Option<i64>) -> ApiResult<Priority> {
    match priority {
        None => Ok(Priority::default()),
        Some(p) => {
            Priority::new(p).map_err(|e| ApiError::invalid("invalid_priority", e.to_string()))
        }
    }
}

/// Checks an idempotency key, when given: 1 to
/// [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes, no NUL.
pub(crate) fn idempotency_key(key: Option<&str>) -> ApiResult<()> {
    if let Some(key) = key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || has_nul(key) {
            return Err(ApiError::invalid(
                "invalid_idempotency_key",
                format!(
                    "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes without NUL"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks metadata, when given: no NUL in any string or key.
pub(crate) fn metadata(metadata: Option<&Value>) -> ApiResult<()> {
    fn nul_free(value: &Value) -> bool {
        match value {
            Value::String(s) => !has_nul(s),
            Value::Array(items) => items.iter().all(nul_free),
            Value::Object(map) => map.iter().all(|(k, v)| !has_nul(k) && nul_free(v)),
            _ => true,
        }
    }
    if metadata.is_some_and(|m| !nul_free(m)) {
        return Err(ApiError::invalid(
            "invalid_metadata",
            "metadata must not contain NUL characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_what_postgres_would() {
        assert!(user_id("alice").is_ok());
        assert!(user_id("").is_err());
        assert!(user_id("  ").is_err());
        assert!(user_id(&"x".repeat(257)).is_err());
        assert!(user_id(&"é".repeat(256)).is_ok());
        assert!(user_id("a\0b").is_err());
        assert!(message("hi", 10).is_ok());
        assert!(message("", 10).is_err());
        assert!(message("hello world", 10).is_err());
        assert!(priority(Some(0)).is_err());
        assert!(priority(Some(11)).is_err());
        assert_eq!(priority(None).unwrap().get(), 1);
        assert!(idempotency_key(Some("")).is_err());
        assert!(metadata(Some(&json!({"a": ["ok", "bad\u{0}"]}))).is_err());
        assert!(metadata(Some(&json!({"a": [1, "fine"]}))).is_ok());
    }
}
