//! Session tokens that name their node: `<node>~<secret>`.
//!
//! A long-polling session (an Engine.IO `sid`, a Phoenix long-poll `token`) lives on
//! the node that created it. In a cluster its token starts with that node's id, so
//! any node that receives one of its requests knows where to forward it without a
//! lookup per session. The secret stays as unguessable as before (the caller's random
//! bytes); the node id is no secret (socket ids carry it too). Pure code, fuzzed
//! under `fuzz/`.

use crate::id::{NodeId, NODE_ID_MAX_LEN};

/// Between the node id and the secret. Not in a node id's alphabet (`[A-Za-z0-9_-]`)
/// nor in URL-safe base64, and unreserved in URLs, so tokens travel unescaped.
pub const SEPARATOR: char = '~';

/// The token of a session owned by `node`, with `secret` (URL-safe, random).
pub fn compose(node: &NodeId, secret: &str) -> String {
    let mut token = String::with_capacity(node.as_str().len() + 1 + secret.len());
    token.push_str(node.as_str());
    token.push(SEPARATOR);
    token.push_str(secret);
    token
}

/// The node a token names, if it names one: a valid node id, the separator, and a
/// non-empty secret. Tokens of a single node (a bare secret) name none.
pub fn node_of(token: &str) -> Option<&str> {
    let (node, secret) = token.split_once(SEPARATOR)?;
    let valid = !node.is_empty()
        && node.len() <= NODE_ID_MAX_LEN
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (valid && !secret.is_empty()).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_composed_token_names_its_node() {
        let node = NodeId::parse("gw-2").unwrap();
        let token = compose(&node, "q1W_e-rT");
        assert_eq!(token, "gw-2~q1W_e-rT");
        assert_eq!(node_of(&token), Some("gw-2"));
        let longest = NodeId::parse(&"n".repeat(NODE_ID_MAX_LEN)).unwrap();
        assert_eq!(node_of(&compose(&longest, "s")), Some(longest.as_str()));
    }

    #[test]
    fn tokens_that_name_no_valid_node_name_none() {
        for token in [
            "",
            "q1W_e-rTq1W_e-rTq1W_",    // a single node's sid: no separator
            "~secret",                 // no node
            "gw1~",                    // no secret
            "gw.1~secret",             // not a node id
            "eyJhbGciOi.eyJzdWIi.sig", // a JWT (phoenix.js sends the user's as `token`)
            &format!("{}~s", "n".repeat(NODE_ID_MAX_LEN + 1)),
        ] {
            assert_eq!(node_of(token), None, "{token:?}");
        }
        // The secret may hold anything after the first separator.
        assert_eq!(node_of("gw1~a~b"), Some("gw1"));
    }
}
