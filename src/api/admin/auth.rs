//! Who may use the console and `/v1/admin`: the holder of the admin key
//! (`SKIPJACK_ADMIN_KEY`), never a tenant's key.
//!
//! - `/v1/admin`: `Authorization: Bearer ADMIN_KEY` ([`Admin`]).
//! - `/console`: a login form takes the key once and sets a session cookie
//!   ([`Session`]): `HttpOnly`, `SameSite=Strict`, `Path=/console`, valid
//!   for [`SESSION_TTL`], holding only its expiry and an HMAC-SHA256 of it.
//!   The HMAC key is derived from the admin key's hash, so every API
//!   replica accepts every replica's sessions, and changing the admin key
//!   ends all sessions. The cookie holds nothing secret and no state is
//!   kept on the server.
//! - Forms that change something carry a CSRF token, an HMAC of the
//!   session cookie ([`Session::csrf`]); the `SameSite=Strict` cookie is
//!   the first defence, the token the second.
//!
//! The process keeps the admin key's SHA-256 only and compares hashes in
//! constant time. No key, cookie or token is ever logged. Without the
//! setting, the console and `/v1/admin` answer 404 with a message saying
//! so.

use crate::api::error::ApiError;
use crate::api::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "skipjack_console";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The key that signs sessions and CSRF tokens, from the admin key's hash.
fn signing_key(admin_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"skipjack console session v1\0");
    h.update(admin_hash);
    h.finalize().into()
}

fn sign(admin_hash: &[u8; 32], purpose: &str, message: &str) -> String {
    let mut mac =
        HmacSha256::new_from_slice(&signing_key(admin_hash)).expect("HMAC accepts any key length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `key` is the admin key whose hash is `expected`.
pub fn is_admin_key(expected: &[u8; 32], key: &str) -> bool {
    let presented: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
    bool::from(presented.ct_eq(expected))
}

/// A new session cookie's value, valid until `now + SESSION_TTL`.
pub fn new_session(admin_hash: &[u8; 32], now_unix: i64) -> String {
    let expires = now_unix + SESSION_TTL.as_secs() as i64;
    let payload = format!("v1.{expires}");
    format!("{payload}.{}", sign(admin_hash, "session", &payload))
}

/// Whether `value` is a session cookie this key signed that has not expired.
pub fn valid_session(admin_hash: &[u8; 32], value: &str, now_unix: i64) -> bool {
    let Some((payload, signature)) = value.rsplit_once('.') else {
        return false;
    };
    let Some(expires) = payload
        .strip_prefix("v1.")
        .and_then(|e| e.parse::<i64>().ok())
    else {
        return false;
    };
    equal(&sign(admin_hash, "session", payload), signature) && now_unix < expires
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `/v1/admin` request made with the admin key.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

/// The admin key's hash, or the "no admin key configured" answer.
pub fn configured(state: &AppState) -> Result<[u8; 32], ApiError> {
    state.config.admin_key_hash.ok_or(ApiError::Disabled(
        "the admin API and console are off: set SKIPJACK_ADMIN_KEY to enable them",
    ))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let expected = configured(state)?;
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(key)
            })
            .ok_or(ApiError::Unauthorized)?;
        // A tenant's key is refused like any other wrong key.
        if is_admin_key(&expected, key) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// A logged-in console session.
#[derive(Clone, Debug)]
pub struct Session {
    admin_hash: [u8; 32],
    cookie: String,
}

impl Session {
    /// The session of the request's cookie, if it is valid.
    pub fn from_headers(headers: &HeaderMap, admin_hash: [u8; 32]) -> Option<Session> {
        let value = cookie(headers, COOKIE_NAME)?;
        valid_session(&admin_hash, value, chrono::Utc::now().timestamp()).then(|| Session {
            admin_hash,
            cookie: value.to_owned(),
        })
    }

    /// The CSRF token forms of this session carry.
    pub fn csrf(&self) -> String {
        sign(&self.admin_hash, "csrf", &self.cookie)
    }

    /// Whether `token` is this session's CSRF token.
    pub fn check_csrf(&self, token: &str) -> bool {
        equal(&self.csrf(), token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_expire_and_bind_csrf_tokens() {
        let key = Sha256::digest(b"an admin key of at least 32 characters").into();
        let other: [u8; 32] = Sha256::digest(b"another admin key, 32 characters").into();
        let cookie = new_session(&key, 1_000);
        assert!(valid_session(&key, &cookie, 1_001));
        assert!(!valid_session(
            &key,
            &cookie,
            1_000 + SESSION_TTL.as_secs() as i64
        ));
        assert!(
            !valid_session(&other, &cookie, 1_001),
            "another key's session"
        );
        let forged = cookie.replace("v1.", "v1.9");
        assert!(!valid_session(&key, &forged, 1_001), "a changed expiry");
        assert!(!valid_session(&key, "v1.99999999999", 1_001));
        let session = Session {
            admin_hash: key,
            cookie,
        };
        let token = session.csrf();
        assert!(session.check_csrf(&token));
        assert!(!session.check_csrf(&token[1..]));
        let other_session = Session {
            admin_hash: key,
            cookie: new_session(&key, 2_000),
        };
        assert!(!other_session.check_csrf(&token), "tokens are per session");
    }
}
