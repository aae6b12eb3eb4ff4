//! Session tokens: reading the node a token names never panics, and a token that names
//! a node is that node's token around the rest (compose ∘ node_of is the identity).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::id::NodeId;
use pushgate::transport::token::{compose, node_of, SEPARATOR};

fuzz_target!(|token: &str| {
    let Some(node) = node_of(token) else {
        return;
    };
    let node = NodeId::parse(node).unwrap_or_else(|e| panic!("{token:?} names a bad node: {e}"));
    let (_, secret) = token
        .split_once(SEPARATOR)
        .unwrap_or_else(|| panic!("{token:?} names a node without a separator"));
    assert_eq!(compose(&node, secret), token);
});
