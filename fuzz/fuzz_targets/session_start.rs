//! The `SessionStart` planner on arbitrary protobuf bytes: whatever decodes as a `SessionStart` must
//! be planned or refused with a `StartError`, never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use voice_proto::v1::SessionStart;
use voice_session::{Defaults, SessionPlan};

fn defaults() -> &'static Defaults {
    static D: OnceLock<Defaults> = OnceLock::new();
    D.get_or_init(Defaults::default)
}

fuzz_target!(|data: &[u8]| {
    let Ok(start) = SessionStart::decode(data) else {
        return;
    };
    let _ = SessionPlan::from_start(&start, defaults());
});
