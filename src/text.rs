//! Text that Postgres can store.
//!
//! `text` and `jsonb` reject U+0000, so a single NUL in an LLM reply or in
//! an upstream error body would make the statement that stores it fail
//! (and, written in a batch, every other outcome of the batch with it).
//! Such characters are replaced with U+FFFD before they reach SQL: the
//! reply stays readable and the replacement is visible to whoever reads it.
//! Client input is rejected instead (the API answers 422), since a client
//! can fix what it sends; a provider's reply cannot be sent back.

use serde_json::Value;
use std::borrow::Cow;

/// What U+0000 becomes.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `s` with every U+0000 replaced; borrowed (no copy) when there is none.
pub fn without_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// `value` with every U+0000 replaced in its strings and object keys;
/// borrowed (no copy) when there is none.
pub fn json_without_nul(value: &Value) -> Cow<'_, Value> {
    if has_nul(value) {
        Cow::Owned(replace_nul(value))
    } else {
        Cow::Borrowed(value)
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn replace_nul(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(without_nul(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(replace_nul).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (without_nul(k).into_owned(), replace_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replaces_nul_in_text() {
        assert_eq!(without_nul("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(without_nul("clean"), Cow::Borrowed("clean")));
    }

    #[test]
    fn replaces_nul_in_json_strings_and_keys() {
        let dirty = json!({"response": "x\0y", "k\0": [1, "\0"], "n": null});
        let clean = json_without_nul(&dirty);
        assert_eq!(
            *clean,
            json!({"response": "x\u{FFFD}y", "k\u{FFFD}": [1, "\u{FFFD}"], "n": null})
        );
        let untouched = json!({"response": "fine", "usage": {"in": 3}});
        assert!(matches!(json_without_nul(&untouched), Cow::Borrowed(_)));
    }
}
