//! Connection tokens: HS256 JWTs with `sub`, `exp` and optional `rooms`, as pushgate and
//! the socket.io peer expect them.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

/// Token lifetime: longer than any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<[&'a str; 1]>,
}

/// Signs tokens with one secret.
pub struct Minter {
    key: EncodingKey,
    exp: u64,
}

impl Minter {
    pub fn new(secret: &str) -> Minter {
        let now = crate::payload::unix_ns() / 1_000_000_000;
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            exp: now + TOKEN_TTL_SECS,
        }
    }

    /// A token for user `sub`, joining `room` on connect when given.
    pub fn mint(&self, sub: &str, room: Option<&str>) -> String {
        let claims = Claims {
            sub,
            exp: self.exp,
            rooms: room.map(|r| [r]),
        };
        encode(&Header::default(), &claims, &self.key).expect("HS256 signing cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[derive(serde::Deserialize, Debug)]
    struct Back {
        sub: String,
        exp: u64,
        rooms: Option<Vec<String>>,
    }

    #[test]
    fn tokens_verify_with_the_same_secret() {
        let m = Minter::new("s3cret");
        let t = m.mint("u7", Some("r2"));
        let back = decode::<Back>(
            &t,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::default(),
        )
        .unwrap()
        .claims;
        assert_eq!(back.sub, "u7");
        assert_eq!(back.rooms, Some(vec!["r2".to_owned()]));
        assert!(back.exp > crate::payload::unix_ns() / 1_000_000_000);
        let plain = decode::<Back>(
            &m.mint("u1", None),
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::default(),
        )
        .unwrap()
        .claims;
        assert_eq!(plain.rooms, None);
        assert!(decode::<Back>(
            &t,
            &DecodingKey::from_secret(b"other"),
            &Validation::default()
        )
        .is_err());
    }
}
