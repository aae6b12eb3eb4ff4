//! Sequences of text and binary messages fed to the `Assembler`: it never panics, and it
//! agrees with a simple model (a binary header awaits exactly its count of binary messages;
//! anything out of turn is an error and resets it).
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pushgate::frontend::socketio::packet::{decode, Assembled, Assembler};

#[derive(Arbitrary, Debug)]
enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

fuzz_target!(|messages: Vec<Message<'_>>| {
    let mut assembler = Assembler::default();
    // Binary messages still awaited, per the model.
    let mut awaited = 0usize;
    let mut received: Vec<Bytes> = Vec::new();
    for message in messages {
        match message {
            Message::Text(text) => {
                let result = assembler.push_text(text);
                if awaited > 0 {
                    assert!(result.is_err(), "text accepted while binary awaited");
                    awaited = 0;
                    received.clear();
                    continue;
                }
                match result {
                    Ok(Assembled::Complete(packet, attachments)) => {
                        assert_eq!(packet.attachments, 0);
                        assert!(attachments.is_empty());
                        assert_eq!(decode(text), Ok(packet));
                    }
                    Ok(Assembled::NeedMore) => {
                        let packet = decode(text).unwrap_or_else(|e| {
                            panic!("assembler accepted {text:?} that decode refuses: {e}")
                        });
                        assert!(packet.kind.is_binary() && packet.attachments > 0);
                        awaited = packet.attachments;
                    }
                    Err(_) => {}
                }
            }
            Message::Binary(bytes) => {
                let bytes = Bytes::copy_from_slice(bytes);
                let result = assembler.push_binary(bytes.clone());
                if awaited == 0 {
                    assert!(result.is_err(), "binary accepted with nothing awaited");
                    continue;
                }
                received.push(bytes);
                awaited -= 1;
                match result {
                    Ok(Assembled::NeedMore) => assert!(awaited > 0),
                    Ok(Assembled::Complete(packet, attachments)) => {
                        assert_eq!(awaited, 0);
                        assert_eq!(packet.attachments, attachments.len());
                        assert_eq!(attachments, std::mem::take(&mut received));
                    }
                    Err(e) => panic!("awaited binary refused: {e}"),
                }
            }
        }
        assert_eq!(assembler.is_pending(), awaited > 0);
    }
});
