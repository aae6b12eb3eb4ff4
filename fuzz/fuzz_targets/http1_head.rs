//! Request heads of the listener's fast path: reading any bytes never panics, a
//! complete head lies within the bytes read and reads the same from its own bytes, and
//! planning it never panics; a fast-path plan never admits a body over the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::transport::http1::{parse, plan, Parsed, Plan, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let Parsed::Complete(head) = parse(data) else {
        return;
    };
    assert!(head.len <= data.len());
    assert_eq!(
        parse(&data[..head.len]),
        Parsed::Complete(parse_again(data))
    );
    if let Plan::Serve { body, .. } = plan(&head, |path| path.starts_with("/socket.io")) {
        assert!(body <= MAX_BODY);
        assert_eq!(head.version, 1);
        assert!(head.method == "GET" || head.method == "POST");
    }
});

fn parse_again(data: &[u8]) -> pushgate::transport::http1::Head<'_> {
    match parse(data) {
        Parsed::Complete(head) => head,
        other => panic!("parsed differently the second time: {other:?}"),
    }
}
