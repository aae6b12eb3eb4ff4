//! Who may connect, who may join what, and who may call the HTTP API.
//!
//! Connection tokens are HS256 JWTs: `sub` is the user, `rooms` are joined on connect,
//! `join` holds glob patterns of rooms the client may join and leave itself. API keys
//! are compared in constant time and never logged.

use globset::Glob;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::id::{RoomName, UserId};

/// The claims pushgate reads from a connection token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    join: Vec<String>,
}

/// What a connection is allowed to be: its user, the rooms it starts in, and the rooms
/// it may join itself.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: Option<UserId>,
    pub rooms: Vec<RoomName>,
    /// Glob patterns (`*`, `?`); kept as text and compiled only when a join is asked
    /// for, because most connections never join anything themselves.
    pub join: Box<[Box<str>]>,
}

impl Identity {
    /// Whether the token allows this connection to join `room` itself.
    pub fn may_join(&self, room: &str) -> bool {
        self.join.iter().any(|pattern| {
            Glob::new(pattern)
                .map(|g| g.compile_matcher().is_match(room))
                .unwrap_or(false)
        })
    }
}

/// Why a connection token was refused. The message is shown to the client as the
/// `connect_error` message; [`AuthError::code`] is its machine-readable form.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication token missing: pass auth: {{ token }} or ?token=")]
    MissingToken,
    #[error("authentication token expired")]
    Expired,
    #[error("authentication token has an invalid signature")]
    BadSignature,
    #[error("authentication token invalid: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Expired => "expired_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// Verifies connection tokens; with no secret every connection is anonymous.
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Clocks of the app backend and the gateway drift a little.
        validation.leeway = 5;
        Self {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    pub fn requires_token(&self) -> bool {
        self.key.is_some()
    }

    /// The identity a token grants. With no secret configured the token is ignored and
    /// the connection is anonymous.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let Some(key) = &self.key else {
            return Ok(Identity::default());
        };
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    _ => AuthError::Invalid(e),
                }
            })?;
        let claims = data.claims;
        Ok(Identity {
            user: Some(UserId::from(claims.sub)),
            rooms: claims.rooms.into_iter().map(RoomName::from).collect(),
            join: claims
                .join
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        })
    }
}

/// The bearer keys of the HTTP API.
pub struct ApiKeys {
    keys: Vec<Box<[u8]>>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self {
            keys: keys.iter().map(|k| k.as_bytes().into()).collect(),
        }
    }

    /// With no keys configured, the API is open to loopback callers only.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Compares against every key without stopping at the first match, each in
    /// constant time, so timing reveals neither a key nor which one matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = presented.as_bytes();
        let mut ok = subtle::Choice::from(0);
        for key in &self.keys {
            ok |= key.as_ref().ct_eq(presented);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn valid_token_grants_user_rooms_and_join_patterns() {
        let auth = Authenticator::new(Some("s3cret"));
        let t = token(
            "s3cret",
            json!({"sub": "alice", "exp": now() + 60, "rooms": ["team:7"], "join": ["chat:*"]}),
        );
        let id = auth.authenticate(Some(&t)).unwrap();
        assert_eq!(id.user.as_ref().unwrap().as_str(), "alice");
        assert_eq!(id.rooms[0].as_str(), "team:7");
        assert!(id.may_join("chat:lobby"));
        assert!(!id.may_join("admin"));
    }

    #[test]
    fn refused_tokens_say_why() {
        let auth = Authenticator::new(Some("s3cret"));
        assert_eq!(auth.authenticate(None).unwrap_err().code(), "missing_token");
        let expired = token("s3cret", json!({"sub": "a", "exp": now() - 3600}));
        assert_eq!(
            auth.authenticate(Some(&expired)).unwrap_err().code(),
            "expired_token"
        );
        let forged = token("other", json!({"sub": "a", "exp": now() + 60}));
        assert_eq!(
            auth.authenticate(Some(&forged)).unwrap_err().code(),
            "bad_signature"
        );
        assert_eq!(
            auth.authenticate(Some("garbage")).unwrap_err().code(),
            "invalid_token"
        );
        let no_sub = token("s3cret", json!({"exp": now() + 60}));
        assert_eq!(
            auth.authenticate(Some(&no_sub)).unwrap_err().code(),
            "invalid_token"
        );
    }

    #[test]
    fn no_secret_means_anonymous() {
        let auth = Authenticator::new(None);
        let id = auth.authenticate(Some("anything")).unwrap();
        assert!(id.user.is_none() && !id.may_join("x"));
    }

    #[test]
    fn api_keys_match_exactly() {
        let keys = ApiKeys::new(&["k1".into(), "key-two".into()]);
        assert!(keys.accepts("k1") && keys.accepts("key-two"));
        assert!(!keys.accepts("k") && !keys.accepts("k1 ") && !keys.accepts(""));
    }
}
