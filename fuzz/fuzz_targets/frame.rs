//! The agent protocol's frame codec, fed as a hostile guest or client
//! would: arbitrary bytes in arbitrary chunks. It never panics, never
//! allocates past MAX_FRAME for a frame, and what it decodes encodes back
//! to a frame that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spinup_protocol::{Frame, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so frames split at every place.
    let Some((&split, rest)) = data.split_first() else { return };
    let mut dec = FrameDecoder::default();
    for chunk in rest.chunks(usize::from(split).max(1)) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let again = Frame::decode(frame.encode()).expect("an encoded frame decodes");
                    assert_eq!(again, frame);
                }
                Ok(None) => break,
                // A protocol error ends the stream.
                Err(_) => return,
            }
        }
    }
    let _ = Frame::decode(bytes::Bytes::copy_from_slice(rest));
});
