//! Message framing and decoding: any bytes a peer can send. `check` must never claim more
//! than it was given, `decode` must never panic, and every error must become a
//! MongoDB-style error. A message that decodes must survive re-encoding and decoding
//! again with the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match wire::check(data) {
        Ok(Some(n)) => {
            assert!(n <= data.len(), "check claimed {n} of {} bytes", data.len());
            decode(&data[..n]);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_mongo_error();
        }
    }
    // Also straight to decode, as if framing had been skipped.
    decode(data);
});

fn decode(msg: &[u8]) {
    let _ = wire::parse_header(msg);
    match wire::decode(msg) {
        Ok(frame) => {
            if let wire::Request::Msg(m) = frame.request {
                let body = m.into_command();
                // Re-encoding may refuse (over the size limits); otherwise the body must
                // come back byte for byte (bytes, not `==`: NaN is not equal to itself).
                if let Ok(out) = wire::try_encode_msg(1, 2, 0, &body, frame.compressor) {
                    let again = wire::decode(&out).expect("a re-encoded message decodes");
                    let wire::Request::Msg(m2) = again.request else {
                        panic!("OP_MSG came back as another opcode");
                    };
                    assert_eq!(
                        bson::to_vec(&m2.into_command()).unwrap(),
                        bson::to_vec(&body).unwrap(),
                        "round trip changed the body"
                    );
                }
            }
        }
        Err(e) => {
            let _ = e.to_mongo_error().to_string();
        }
    }
}
