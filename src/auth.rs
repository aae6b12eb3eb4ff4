//! Who may connect, who may join what, and who may call the HTTP API.
//!
//! Connection tokens are HS256 JWTs: `sub` is the user, `rooms` are joined on connect,
//! `join` holds glob patterns of rooms the client may join and leave itself. The
//! algorithm is pinned to HS256 (a token that names another, `none` included, is
//! refused before its signature is looked at); `exp` and `nbf` are honoured with a
//! leeway; `aud` and `iss` are checked when configured ([`TokenRules`]). API keys
//! are kept as digests, compared in constant time and never logged. [`Origins`] is
//! the browser Origin allow-list of the client transports.

use globset::Glob;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::time::Duration;

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
    #[error("authentication token not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("authentication token has an invalid signature")]
    BadSignature,
    #[error("authentication token is signed with {0}; only HS256 is accepted")]
    Algorithm(String),
    #[error("authentication token is not for this gateway (aud)")]
    Audience,
    #[error("authentication token is not from an accepted issuer (iss)")]
    Issuer,
    #[error("authentication token names {rooms} rooms; at most {max} per connection")]
    TooManyRooms { rooms: usize, max: usize },
    #[error("authentication token invalid: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Expired => "expired_token",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Algorithm(_) => "bad_algorithm",
            AuthError::Audience => "bad_audience",
            AuthError::Issuer => "bad_issuer",
            AuthError::TooManyRooms { .. } => "rooms",
            AuthError::Invalid(_) => "invalid_token",
        }
    }
}

/// Clocks of the app backend and the gateway drift a little: `exp` and `nbf` are
/// honoured this much late or early.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// How connection tokens are checked beyond their HS256 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// Tolerance for `exp` and `nbf` (rounded up to whole seconds, as JWT times are).
    pub leeway: Duration,
    /// Accepted `aud` values; when set, a token must name one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, a token must name one of them.
    pub issuer: Vec<String>,
    /// Rooms a token may name in `rooms` (`None`: any number).
    pub max_rooms: Option<usize>,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            leeway: DEFAULT_LEEWAY,
            audience: Vec::new(),
            issuer: Vec::new(),
            max_rooms: None,
        }
    }
}

/// The only algorithm a connection token may use. Pinned: the token's own header is
/// never trusted to choose (no `none`, no RS256 token checked with the secret as a
/// public key).
const ALGORITHM: &str = "HS256";

/// The `alg` of a token's header, read without trusting anything else in it.
fn header_algorithm(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    serde_json::from_slice::<Header>(&bytes).ok().map(|h| h.alg)
}

/// Verifies connection tokens; with no secret every connection is anonymous.
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
    max_rooms: Option<usize>,
}

impl Authenticator {
    pub fn new(secret: Option<&str>) -> Self {
        Self::with_rules(secret, TokenRules::default())
    }

    pub fn with_rules(secret: Option<&str>, rules: TokenRules) -> Self {
        // Only HS256: a token whose header names another algorithm is refused before
        // any key is used.
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        validation.leeway = rules.leeway.as_secs() + u64::from(rules.leeway.subsec_nanos() > 0);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if rules.audience.is_empty() {
            // Without configured audiences, a token's `aud` is the app's business.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&rules.audience);
            required.push("aud");
        }
        if !rules.issuer.is_empty() {
            validation.set_issuer(&rules.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Self {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            max_rooms: rules.max_rooms,
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
        if let Some(alg) = header_algorithm(token) {
            if alg != ALGORITHM {
                // At most a short, printable excerpt of what the client sent.
                let shown: String = alg
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(16)
                    .collect();
                return Err(AuthError::Algorithm(shown));
            }
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    ErrorKind::InvalidAlgorithm => AuthError::Algorithm("another algorithm".into()),
                    ErrorKind::InvalidAudience => AuthError::Audience,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
                    _ => AuthError::Invalid(e),
                }
            })?;
        let claims = data.claims;
        if let Some(max) = self.max_rooms {
            if claims.rooms.len() > max {
                return Err(AuthError::TooManyRooms {
                    rooms: claims.rooms.len(),
                    max,
                });
            }
        }
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

/// The bearer keys of the HTTP API, kept as SHA-256 digests: a presented key is
/// hashed and compared with every digest in constant time, so neither a key, its
/// length nor which key matched shows in the timing. The keys themselves are not kept.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.as_bytes())).collect(),
        }
    }

    /// With no keys configured, the API is open to loopback callers only.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys.
    pub fn accepts(&self, presented: &str) -> bool {
        self.find(presented).is_some()
    }

    /// Which key `presented` is (its index in the configured list), comparing against
    /// every key without stopping at the first match.
    pub fn find(&self, presented: &str) -> Option<usize> {
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        let presented = digest(presented.as_bytes());
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, key) in self.digests.iter().enumerate() {
            let eq = key.ct_eq(&presented);
            index.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        bool::from(found).then_some(index as usize)
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys(<{} redacted>)", self.digests.len())
    }
}

/// The browser origins allowed to open client connections (`PUSHGATE_ALLOWED_ORIGINS`).
/// An entry is `scheme://host[:port]`, or `scheme://*.domain[:port]` for every
/// subdomain of `domain` (not `domain` itself). Requests without an `Origin` header
/// come from non-browser clients (mobile apps, servers, the load tool), which can
/// send any header they like anyway, so they are not refused: the list protects
/// browser users from pages on other sites, not the gateway from programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// Lowercase entries; `None`: any origin.
    allowed: Option<Vec<OriginPattern>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    /// Exact host, or the suffix `.domain` for a wildcard.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

/// `scheme://host[:port]` split, lowercased; `None` if it is not that shape.
fn split_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        // `[::1]:8080`; a bare IPv6 host has no port after its `]`.
        Some((h, p)) if !p.contains(']') => (h, Some(p.parse::<u16>().ok()?)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), host.to_owned(), port))
}

/// The port a scheme implies when an origin names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl Origins {
    /// Any origin: the list is unset.
    pub fn any() -> Self {
        Self { allowed: None }
    }

    /// Parses a comma-separated list; an empty list is an error (it would refuse every
    /// browser).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scheme, host, port) = split_origin(item).ok_or_else(|| {
                format!("{item:?} is not an origin: write scheme://host[:port], e.g. https://app.example.com")
            })?;
            let (host, wildcard) = match host.strip_prefix("*.") {
                Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                    (format!(".{domain}"), true)
                }
                _ if host.contains('*') => {
                    return Err(format!(
                        "{item:?}: a wildcard is only allowed as the first label (https://*.example.com)"
                    ))
                }
                _ => (host, false),
            };
            allowed.push(OriginPattern {
                port: port.or_else(|| default_port(&scheme)),
                scheme,
                host,
                wildcard,
            });
        }
        if allowed.is_empty() {
            return Err("no origin in the list".into());
        }
        Ok(Self {
            allowed: Some(allowed),
        })
    }

    /// Whether a request with this `Origin` header value (or none) may connect.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let (Some(allowed), Some(origin)) = (&self.allowed, origin) else {
            return true;
        };
        let Some((scheme, host, port)) = split_origin(origin) else {
            // `null` (sandboxed frames, file: pages) and anything malformed.
            return false;
        };
        let port = port.or_else(|| default_port(&scheme));
        allowed.iter().any(|p| {
            p.scheme == scheme
                && p.port == port
                && if p.wildcard {
                    host.ends_with(&p.host)
                } else {
                    host == p.host
                }
        })
    }

    pub fn is_any(&self) -> bool {
        self.allowed.is_none()
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

    fn token_with_header(
        secret: &str,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> String {
        use base64::Engine as _;
        use hmac::Mac;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }

    #[test]
    fn the_algorithm_is_pinned_to_hs256() {
        let auth = Authenticator::new(Some("s3cret"));
        let claims = json!({"sub": "a", "exp": now() + 60});
        // `none`, with and without a signature.
        for t in [
            token_with_header(
                "s3cret",
                json!({"alg": "none", "typ": "JWT"}),
                claims.clone(),
            ),
            {
                use base64::Engine as _;
                let b64 = |v: serde_json::Value| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                };
                format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims.clone()))
            },
        ] {
            let e = auth.authenticate(Some(&t)).unwrap_err();
            assert_eq!(e.code(), "bad_algorithm", "{e}");
            assert!(
                e.to_string().contains("none") && e.to_string().contains("HS256"),
                "{e}"
            );
        }
        // RS/HS confusion: HMAC over the token with the secret, but the header says
        // RS256 (as if the secret were an RSA public key).
        let confused = token_with_header("s3cret", json!({"alg": "RS256"}), claims.clone());
        assert_eq!(
            auth.authenticate(Some(&confused)).unwrap_err().code(),
            "bad_algorithm"
        );
        // Another HMAC algorithm with the right secret is still another algorithm.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        let e = auth.authenticate(Some(&hs512)).unwrap_err();
        assert_eq!(e.code(), "bad_algorithm");
        assert!(e.to_string().contains("HS512"), "{e}");
        // The genuine article, built by hand the same way, passes: the checks above
        // refused the algorithm, not the hand-made encoding.
        let genuine = token_with_header("s3cret", json!({"alg": "HS256", "typ": "JWT"}), claims);
        assert!(auth.authenticate(Some(&genuine)).is_ok());
    }

    #[test]
    fn exp_and_nbf_are_honoured_with_the_leeway() {
        let auth = Authenticator::new(Some("k"));
        let t = |claims| token("k", claims);
        let ok = |c| {
            auth.authenticate(Some(&t(c)))
                .map(|_| ())
                .map_err(|e| e.code())
        };
        assert_eq!(
            ok(json!({"sub": "a", "exp": now() - 10})),
            Ok(()),
            "within 30 s"
        );
        assert_eq!(
            ok(json!({"sub": "a", "exp": now() - 120})),
            Err("expired_token")
        );
        assert_eq!(
            ok(json!({"sub": "a", "exp": now() + 60, "nbf": now() + 10})),
            Ok(())
        );
        assert_eq!(
            ok(json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300})),
            Err("not_yet_valid")
        );
        let strict = Authenticator::with_rules(
            Some("k"),
            TokenRules {
                leeway: Duration::ZERO,
                ..TokenRules::default()
            },
        );
        let late = t(json!({"sub": "a", "exp": now() - 10}));
        assert_eq!(
            strict.authenticate(Some(&late)).unwrap_err().code(),
            "expired_token"
        );
    }

    #[test]
    fn a_null_exp_or_nbf_is_malformed_not_absent() {
        // `null` is no NumericDate (RFC 7519): jsonwebtoken refuses it, where a
        // left-out `nbf` is fine. The jwt fuzz target had read it as absent; this pins
        // what such tokens get.
        let auth = Authenticator::new(Some("k"));
        let code = |claims| {
            auth.authenticate(Some(&token("k", claims)))
                .map(|_| ())
                .map_err(|e| e.code())
        };
        assert_eq!(code(json!({"sub": "a", "exp": now() + 60})), Ok(()));
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "nbf": null})),
            Err("invalid_token")
        );
        assert_eq!(code(json!({"sub": "a", "exp": null})), Err("invalid_token"));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let open = Authenticator::new(Some("k"));
        let with_aud = token("k", json!({"sub": "a", "exp": now() + 60, "aud": "other"}));
        assert!(
            open.authenticate(Some(&with_aud)).is_ok(),
            "aud is not ours to judge"
        );
        let auth = Authenticator::with_rules(
            Some("k"),
            TokenRules {
                audience: vec!["pushgate".into(), "push".into()],
                issuer: vec!["https://app.example.com".into()],
                ..TokenRules::default()
            },
        );
        let code = |c| {
            auth.authenticate(Some(&token("k", c)))
                .map(|_| ())
                .map_err(|e| e.code())
        };
        let iss = "https://app.example.com";
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "aud": "push", "iss": iss})),
            Ok(())
        );
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "aud": ["x", "pushgate"], "iss": iss})),
            Ok(())
        );
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "aud": "other", "iss": iss})),
            Err("bad_audience")
        );
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "iss": iss})),
            Err("bad_audience")
        );
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "aud": "push", "iss": "https://evil"})),
            Err("bad_issuer")
        );
        assert_eq!(
            code(json!({"sub": "a", "exp": now() + 60, "aud": "push"})),
            Err("bad_issuer")
        );
    }

    #[test]
    fn a_token_naming_too_many_rooms_is_refused() {
        let auth = Authenticator::with_rules(
            Some("k"),
            TokenRules {
                max_rooms: Some(2),
                ..TokenRules::default()
            },
        );
        let t = token(
            "k",
            json!({"sub": "a", "exp": now() + 60, "rooms": ["a", "b", "c"]}),
        );
        let e = auth.authenticate(Some(&t)).unwrap_err();
        assert_eq!(e.code(), "rooms");
        assert!(e.to_string().contains("at most 2"), "{e}");
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let o =
            Origins::parse("https://app.example.com, http://localhost:8080,https://*.example.org")
                .unwrap();
        for ok in [
            "https://app.example.com",
            "HTTPS://App.Example.com",
            "https://app.example.com:443",
            "http://localhost:8080",
            "https://a.example.org",
            "https://b.c.example.org",
        ] {
            assert!(o.allows(Some(ok)), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil.com",
            "https://app.example.com.evil.com",
            "https://example.org",
            "https://evilexample.org",
            "http://localhost",
            "null",
            "",
        ] {
            assert!(!o.allows(Some(no)), "{no}");
        }
        assert!(o.allows(None), "non-browser clients send no Origin");
        assert!(Origins::any().allows(Some("https://anything")));
        for bad in [
            "app.example.com",
            "https://",
            "https://a/b",
            "https://a.*.com",
            "",
        ] {
            assert!(Origins::parse(bad).is_err(), "{bad}");
        }
        let v6 = Origins::parse("http://[::1]:3000").unwrap();
        assert!(v6.allows(Some("http://[::1]:3000")) && !v6.allows(Some("http://[::1]:3001")));
    }

    #[test]
    fn api_keys_match_exactly() {
        let keys = ApiKeys::new(&["k1".into(), "key-two".into()]);
        assert!(keys.accepts("k1") && keys.accepts("key-two"));
        assert!(!keys.accepts("k") && !keys.accepts("k1 ") && !keys.accepts(""));
        assert_eq!(keys.find("k1"), Some(0));
        assert_eq!(keys.find("key-two"), Some(1));
        assert_eq!(keys.find("key-three"), None);
        assert!(!format!("{keys:?}").contains("k1"));
    }
}
