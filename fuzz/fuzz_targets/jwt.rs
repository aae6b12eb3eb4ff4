//! Connection tokens (`auth::Authenticator`), against a fixed secret and two fixed
//! configurations: the default one, and a strict one (no leeway, audiences, issuers,
//! at most three rooms). Every input is used twice:
//!
//! - as a token string: checking it never panics, and a token that is accepted is
//!   three base64url parts whose header names HS256, whose signature is the HMAC-SHA256
//!   of the first two under the secret, and whose `sub` is the identity's user (nothing
//!   unsigned, re-encoded or signed otherwise gets through);
//! - as claims and a header (read with `arbitrary`) that the target signs itself: the
//!   token is accepted iff its claims are valid under the configuration (HS256, the
//!   right key, a string `sub`, `exp` present and not past, `nbf` not ahead, `aud` and
//!   `iss` among the accepted ones when configured, `rooms` and `join` lists of
//!   strings, not too many rooms), an accepted one grants exactly its `sub`, `rooms`
//!   and `join`, and a token with a single defect is refused with that defect's code.
//!   Times within two seconds of a limit are left out (the clock moves).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pushgate::auth::{Authenticator, TokenRules};
use serde_json::{json, Map, Value};

const SECRET: &str = "fuzz-secret";
/// Accepted `aud` and `iss` values of the strict configuration, then one that is not.
const NAMES: [&str; 4] = ["pushgate", "push", "https://app.example.com", "other"];
const AUDIENCES: [&str; 2] = ["pushgate", "push"];
const ISSUERS: [&str; 1] = ["https://app.example.com"];
const MAX_ROOMS: usize = 3;
const LEEWAY: u64 = 30;
/// How far from a time limit a claim must be for the target to predict the outcome.
const MARGIN: u64 = 2;

struct Config {
    auth: Authenticator,
    strict: bool,
    leeway: u64,
}

fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        [
            Config {
                auth: Authenticator::with_rules(
                    Some(SECRET),
                    TokenRules {
                        leeway: Duration::from_secs(LEEWAY),
                        ..TokenRules::default()
                    },
                ),
                strict: false,
                leeway: LEEWAY,
            },
            Config {
                auth: Authenticator::with_rules(
                    Some(SECRET),
                    TokenRules {
                        leeway: Duration::ZERO,
                        audience: AUDIENCES.map(String::from).to_vec(),
                        issuer: ISSUERS.map(String::from).to_vec(),
                        max_rooms: Some(MAX_ROOMS),
                    },
                ),
                strict: true,
                leeway: 0,
            },
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        only_signed_tokens_pass(token);
    }
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        accepted_iff_valid(&input);
    }
});

fn only_signed_tokens_pass(token: &str) {
    for config in configs() {
        let Ok(identity) = config.auth.authenticate(Some(token)) else {
            continue;
        };
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            panic!("accepted {token:?}, which is not three parts");
        };
        let decode = |part: &str| {
            B64.decode(part).unwrap_or_else(|e| {
                panic!("accepted {token:?} with a part that is not base64url: {e}")
            })
        };
        let header: Value = serde_json::from_slice(&decode(header)).expect("header is JSON");
        assert_eq!(header["alg"], "HS256", "accepted {token:?}");
        let signed = &token[..token.len() - signature.len() - 1];
        assert_eq!(
            decode(signature),
            mac(Sha::S256, SECRET.as_bytes(), signed),
            "accepted {token:?} without the secret's signature"
        );
        let claims: Value = serde_json::from_slice(&decode(claims)).expect("claims are JSON");
        assert_eq!(
            identity.user.as_ref().map(|u| u.as_str()),
            claims["sub"].as_str()
        );
    }
}

#[derive(Arbitrary, Debug)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    None,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Text {
    Absent,
    Null,
    Str(String),
    Num(u32),
}

#[derive(Arbitrary, Debug)]
enum Time {
    Absent,
    Null,
    /// Seconds from now.
    Rel(i32),
    Abs(u64),
    /// Seconds from now, as a float.
    Float(f64),
    Str(String),
}

#[derive(Arbitrary, Debug)]
enum Name {
    /// One of [`NAMES`].
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Names {
    Absent,
    Null,
    One(Name),
    Many(Vec<Name>),
    Num(u32),
}

#[derive(Arbitrary, Debug)]
enum List {
    Absent,
    Null,
    Strings(Vec<String>),
    Num(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    strict: bool,
    alg: Alg,
    typ: bool,
    /// Signed with this key when it is not the secret, else with the secret.
    key: Option<Vec<u8>>,
    sub: Text,
    exp: Time,
    nbf: Time,
    aud: Names,
    iss: Names,
    rooms: List,
    join: List,
    /// A claim pushgate does not read.
    extra: Option<(String, i64)>,
}

/// What a token's time claim is to the verifier.
enum Parsed {
    NotPresent,
    Failed,
    Secs(u64),
}

/// The claim's JSON (`None`: left out) and what the verifier makes of it. A `null`
/// time is no NumericDate: malformed, not absent (unlike a `null` `aud` or `iss`), so
/// a token with `"nbf": null` is refused as `invalid_token`.
fn time(t: &Time, now: u64) -> (Option<Value>, Parsed) {
    match t {
        Time::Absent => (None, Parsed::NotPresent),
        Time::Null => (Some(Value::Null), Parsed::Failed),
        Time::Rel(r) => {
            let v = now as i64 + i64::from(*r);
            let parsed = if v < 0 {
                Parsed::Failed
            } else {
                Parsed::Secs(v as u64)
            };
            (Some(json!(v)), parsed)
        }
        Time::Abs(v) => (Some(json!(v)), Parsed::Secs(*v)),
        Time::Float(f) => {
            let v = now as f64 + f;
            match serde_json::Number::from_f64(v) {
                // Not finite: JSON cannot say it.
                None => (None, Parsed::NotPresent),
                Some(n) if v >= 0.0 && v < u64::MAX as f64 => {
                    (Some(Value::Number(n)), Parsed::Secs(v.round() as u64))
                }
                Some(n) => (Some(Value::Number(n)), Parsed::Failed),
            }
        }
        Time::Str(s) => (Some(json!(s)), Parsed::Failed),
    }
}

fn name(n: &Name) -> String {
    match n {
        Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
        Name::Other(s) => s.clone(),
    }
}

/// The claim's JSON, and whether it names one of `accepted` (`None`: not a string or
/// a list of strings, or absent).
fn names(n: &Names, accepted: &[&str]) -> (Option<Value>, Option<bool>) {
    match n {
        Names::Absent => (None, None),
        Names::Null => (Some(Value::Null), None),
        Names::Num(v) => (Some(json!(v)), None),
        Names::One(one) => {
            let one = name(one);
            let ok = accepted.contains(&one.as_str());
            (Some(json!(one)), Some(ok))
        }
        Names::Many(many) => {
            let many: Vec<String> = many.iter().map(name).collect();
            let ok = many.iter().any(|n| accepted.contains(&n.as_str()));
            (Some(json!(many)), Some(ok))
        }
    }
}

/// The claim's JSON and the strings it grants (`None`: refused as a claim).
fn list(l: &List) -> (Option<Value>, Option<Vec<String>>) {
    match l {
        List::Absent => (None, Some(Vec::new())),
        List::Null => (Some(Value::Null), None),
        List::Strings(v) => (Some(json!(v)), Some(v.clone())),
        List::Num(n) => (Some(json!(n)), None),
    }
}

#[derive(Clone, Copy)]
enum Sha {
    S256,
    S384,
    S512,
}

fn mac(sha: Sha, key: &[u8], text: &str) -> Vec<u8> {
    fn with<M: Mac + hmac::digest::KeyInit>(key: &[u8], text: &str) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("any key");
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
    match sha {
        Sha::S256 => with::<Hmac<sha2::Sha256>>(key, text),
        Sha::S384 => with::<Hmac<sha2::Sha384>>(key, text),
        Sha::S512 => with::<Hmac<sha2::Sha512>>(key, text),
    }
}

fn accepted_iff_valid(input: &Input) {
    let config = &configs()[usize::from(input.strict)];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The codes the token deserves; a token is valid iff there are none.
    let mut defects: Vec<&'static str> = Vec::new();
    // Whether the outcome is predictable (no time claim at a limit).
    let mut sure = true;

    let alg = match &input.alg {
        Alg::Hs256 => "HS256".to_owned(),
        Alg::Hs384 => "HS384".to_owned(),
        Alg::Hs512 => "HS512".to_owned(),
        Alg::None => "none".to_owned(),
        Alg::Other(s) => s.clone(),
    };
    if alg != "HS256" {
        defects.push("bad_algorithm");
    }
    let key = match &input.key {
        Some(k) if k != SECRET.as_bytes() => {
            defects.push("bad_signature");
            k.as_slice()
        }
        _ => SECRET.as_bytes(),
    };

    let mut claims = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            claims.insert(k.to_owned(), v);
        }
    };
    let (sub_json, sub) = match &input.sub {
        Text::Absent => (None, None),
        Text::Null => (Some(Value::Null), None),
        Text::Str(s) => (Some(json!(s)), Some(s.clone())),
        Text::Num(n) => (Some(json!(n)), None),
    };
    put("sub", sub_json);
    if sub.is_none() {
        defects.push("invalid_token");
    }

    let (exp_json, exp) = time(&input.exp, now);
    put("exp", exp_json);
    match exp {
        Parsed::NotPresent | Parsed::Failed => defects.push("invalid_token"),
        Parsed::Secs(exp) => {
            let limit = now - config.leeway;
            if exp.abs_diff(limit) <= MARGIN {
                sure = false;
            } else if exp < limit {
                defects.push("expired_token");
            }
        }
    }
    let (nbf_json, nbf) = time(&input.nbf, now);
    put("nbf", nbf_json);
    match nbf {
        Parsed::NotPresent => {}
        Parsed::Failed => defects.push("invalid_token"),
        Parsed::Secs(nbf) => {
            let limit = now + config.leeway;
            if nbf.abs_diff(limit) <= MARGIN {
                sure = false;
            } else if nbf > limit {
                defects.push("not_yet_valid");
            }
        }
    }

    let (aud_json, aud_ok) = names(&input.aud, &AUDIENCES);
    put("aud", aud_json);
    let (iss_json, iss_ok) = names(&input.iss, &ISSUERS);
    put("iss", iss_json);
    if config.strict {
        if aud_ok != Some(true) {
            defects.push("bad_audience");
        }
        if iss_ok != Some(true) {
            defects.push("bad_issuer");
        }
    }

    let (rooms_json, rooms) = list(&input.rooms);
    put("rooms", rooms_json);
    let (join_json, join) = list(&input.join);
    put("join", join_json);
    if rooms.is_none() || join.is_none() {
        defects.push("invalid_token");
    }
    if config.strict && rooms.as_ref().is_some_and(|r| r.len() > MAX_ROOMS) {
        defects.push("rooms");
    }
    if let Some((k, v)) = &input.extra {
        put(&format!("x-{k}"), Some(json!(v)));
    }

    let mut header = json!({"alg": alg});
    if input.typ {
        header["typ"] = json!("JWT");
    }
    let signed = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(Value::Object(claims).to_string())
    );
    let signature = match &input.alg {
        Alg::Hs384 => mac(Sha::S384, key, &signed),
        Alg::Hs512 => mac(Sha::S512, key, &signed),
        Alg::None if input.key.is_none() => Vec::new(),
        _ => mac(Sha::S256, key, &signed),
    };
    let token = format!("{signed}.{}", B64.encode(signature));

    let result = config.auth.authenticate(Some(&token));
    if !sure {
        return;
    }
    defects.sort_unstable();
    defects.dedup();
    match (result, defects.as_slice()) {
        (Ok(identity), []) => {
            assert_eq!(identity.user.as_ref().map(|u| u.as_str()), sub.as_deref());
            let granted: Vec<String> = identity.rooms.iter().map(|r| r.to_string()).collect();
            assert_eq!(Some(granted), rooms);
            let may_join: Vec<String> = identity.join.iter().map(|j| j.to_string()).collect();
            assert_eq!(Some(may_join), join);
        }
        (Ok(_), defects) => panic!("accepted {token:?} despite {defects:?} ({input:?})"),
        (Err(e), []) => panic!("refused valid {token:?}: {e} ({input:?})"),
        (Err(e), [only]) => assert_eq!(e.code(), *only, "{token:?}: {e} ({input:?})"),
        (Err(_), _) => {}
    }
}
