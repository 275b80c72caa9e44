//! Upstream event parser, both dialects (`ServerEvent::parse`): any text frame must parse or fail
//! cleanly, and the audio-delta fast path (which skips building a JSON tree) must agree with the tree
//! path (`ServerEvent::from_value`) whenever both accept the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voice_realtime::ServerEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = ServerEvent::parse(text);
    if let Ok(ev) = &parsed {
        let _ = ev.kind();
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let tree = ServerEvent::from_value(&v);
        if let (Ok(a), Ok(b)) = (&parsed, &tree) {
            assert_eq!(a, b, "fast path and tree path disagree on {text:?}");
        }
    }
});
