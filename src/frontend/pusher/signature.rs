//! Pusher's signatures (protocols.md §5.3-5.7): HMAC-SHA256 with the app secret, hex.
//!
//! - a private or encrypted channel subscription signs `<socket_id>:<channel>`, a
//!   presence one `<socket_id>:<channel>:<channel_data>`; the client sends
//!   `auth = "<key>:<hex>"`;
//! - a sign-in signs `<socket_id>::user::<user_data>`;
//! - an HTTP API request signs `METHOD\n<path>\n<sorted query without auth_signature>`,
//!   with `body_md5` (hex MD5 of the raw body) among the query parameters.
//!
//! Pure, and every comparison of a secret-derived value is constant-time (`hmac`'s
//! `verify_slice`, `subtle` for keys).

use hmac::{Hmac, Mac};
use md5::Digest;
use md5::Md5;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// How far an HTTP API request's `auth_timestamp` may be from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Lower-case hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the HMAC-SHA256 of `message`, compared in constant time.
pub fn verify(secret: &str, message: &str, signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Why a client's `auth` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing auth signature")]
    Missing,
    #[error("the auth is not \"<key>:<signature>\"")]
    Malformed,
    #[error("the auth names another app's key")]
    WrongKey,
    #[error("invalid signature")]
    BadSignature,
}

/// Checks a client's `auth` (`<key>:<hex>`) over `message` for the app `key`/`secret`.
pub fn check_auth(
    key: &str,
    secret: &str,
    auth: Option<&str>,
    message: &str,
) -> Result<(), AuthError> {
    let auth = auth.filter(|a| !a.is_empty()).ok_or(AuthError::Missing)?;
    let (given_key, signature) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if !bool::from(given_key.as_bytes().ct_eq(key.as_bytes())) {
        return Err(AuthError::WrongKey);
    }
    if verify(secret, message, signature) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// The string a private or encrypted channel's auth signs.
pub fn channel_message(socket_id: &str, channel: &str) -> String {
    format!("{socket_id}:{channel}")
}

/// The string a sign-in's auth signs.
pub fn signin_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Lower-case hex MD5 of a request body (the `body_md5` parameter).
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string an HTTP API request signs: the method, the path, and every query
/// parameter but `auth_signature` with lower-cased keys, sorted by key, as `k=v`
/// joined by `&`, values as decoded (not URL-escaped).
pub fn request_message(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}\n{path}\n{query}", method.to_ascii_uppercase())
}

/// Why an HTTP API request was refused (HTTP 401, with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("unknown auth_key")]
    UnknownKey,
    #[error("auth_version must be 1.0")]
    Version,
    #[error("auth_timestamp must be a Unix time in seconds")]
    Timestamp,
    #[error("timestamp expired: given {given}, not within {MAX_CLOCK_SKEW_SECS} s of the server's {now}")]
    Expired { given: u64, now: u64 },
    #[error("body_md5 does not match the MD5 of the body")]
    BodyMd5,
    #[error("invalid signature: sign {expected:?} with the app secret (HMAC-SHA256, hex)")]
    BadSignature { expected: String },
}

/// Checks a signed HTTP API request: `auth_key` is the app's `key`, `auth_version`
/// 1.0, `auth_timestamp` within [`MAX_CLOCK_SKEW_SECS`] of `now_secs`, `body_md5`
/// (required when the body is not empty) the body's MD5, and `auth_signature` the
/// signature of [`request_message`].
pub fn check_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now_secs: u64,
) -> Result<(), RequestError> {
    let param = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let given_key = param("auth_key").ok_or(RequestError::Missing("auth_key"))?;
    if !bool::from(given_key.as_bytes().ct_eq(key.as_bytes())) {
        return Err(RequestError::UnknownKey);
    }
    let signature = param("auth_signature").ok_or(RequestError::Missing("auth_signature"))?;
    let timestamp = param("auth_timestamp").ok_or(RequestError::Missing("auth_timestamp"))?;
    if param("auth_version").ok_or(RequestError::Missing("auth_version"))? != "1.0" {
        return Err(RequestError::Version);
    }
    let given: u64 = timestamp.parse().map_err(|_| RequestError::Timestamp)?;
    if given.abs_diff(now_secs) > MAX_CLOCK_SKEW_SECS {
        return Err(RequestError::Expired {
            given,
            now: now_secs,
        });
    }
    match param("body_md5") {
        Some(md5) if !bool::from(md5.as_bytes().ct_eq(body_md5(body).as_bytes())) => {
            return Err(RequestError::BodyMd5)
        }
        None if !body.is_empty() => return Err(RequestError::Missing("body_md5")),
        _ => {}
    }
    let message = request_message(method, path, params);
    if verify(secret, &message, signature) {
        Ok(())
    } else {
        Err(RequestError::BadSignature { expected: message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The documented test vector (protocols.md §5.7).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn params(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        p.reverse(); // order must not matter
        p
    }

    #[test]
    fn the_documented_request_signature_verifies() {
        assert_eq!(
            body_md5(BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let message = request_message("post", "/apps/3/events", &params(&[]));
        assert_eq!(
            message,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let signature = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        assert_eq!(sign(SECRET, &message), signature);
        let p = params(&[("auth_signature", signature)]);
        let check = |p: &[(String, String)], body: &str, now| {
            check_request(
                KEY,
                SECRET,
                "POST",
                "/apps/3/events",
                p,
                body.as_bytes(),
                now,
            )
        };
        assert_eq!(check(&p, BODY, 1353088179 + 600), Ok(()));
        assert_eq!(
            check(&p, BODY, 1353088179 + 601),
            Err(RequestError::Expired {
                given: 1353088179,
                now: 1353088779 + 1
            })
        );
        assert_eq!(check(&p, "{}", 1353088179), Err(RequestError::BodyMd5));
        let wrong = params(&[("auth_signature", &signature.replace('d', "e"))]);
        assert!(matches!(
            check(&wrong, BODY, 1353088179),
            Err(RequestError::BadSignature { .. })
        ));
        let other_key = check_request(
            "k",
            SECRET,
            "POST",
            "/apps/3/events",
            &p,
            BODY.as_bytes(),
            1353088179,
        );
        assert_eq!(other_key, Err(RequestError::UnknownKey));
        let mut no_md5 = p.clone();
        no_md5.retain(|(k, _)| k != "body_md5");
        assert_eq!(
            check(&no_md5, BODY, 1353088179),
            Err(RequestError::Missing("body_md5"))
        );
    }

    #[test]
    fn query_values_are_signed_as_decoded_and_keys_lowercased() {
        let p = vec![
            ("Name".to_string(), "Something else".to_string()),
            ("auth_key".to_string(), "foo".to_string()),
        ];
        assert_eq!(
            request_message("GET", "/x", &p),
            "GET\n/x\nauth_key=foo&name=Something else"
        );
    }

    #[test]
    fn channel_and_signin_auths_are_checked_against_key_and_secret() {
        let message = channel_message("1234.1234", "private-foobar");
        let auth = format!("{KEY}:{}", sign(SECRET, &message));
        assert_eq!(check_auth(KEY, SECRET, Some(&auth), &message), Ok(()));
        assert_eq!(
            check_auth(
                KEY,
                SECRET,
                Some(&auth),
                &channel_message("1234.1235", "private-foobar")
            ),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check_auth("other", SECRET, Some(&auth), &message),
            Err(AuthError::WrongKey)
        );
        assert_eq!(
            check_auth(KEY, SECRET, Some(""), &message),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check_auth(KEY, SECRET, Some("nocolon"), &message),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            check_auth(KEY, SECRET, Some(&format!("{KEY}:zz")), &message),
            Err(AuthError::BadSignature),
            "not hex"
        );
        let signin = signin_message("1.2", r#"{"id":"u"}"#);
        assert_eq!(signin, "1.2::user::{\"id\":\"u\"}");
    }
}
