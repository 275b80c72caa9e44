//! Memory across calls in-process, on paused time: notes from the host go into the instructions in a
//! delimited block; at the end the model is asked out of band for the call's key facts, which come
//! back in `SessionEnded.notes` — or empty after the timeout, never a hung end.

mod support;

use serde_json::json;
use std::time::Duration;
use support::Harness;
use tokio::time::Instant;
use voice_proto::v1 as pb;
use voice_session::plan::{MEMORY_CLOSE, MEMORY_OPEN};

fn start() -> pb::SessionStart {
    pb::SessionStart {
        instructions: "You are a pharmacy assistant.".into(),
        memory: "Caller is Ana.\nPrefers text reminders.".into(),
        extract_notes: true,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn memory_is_a_delimited_block_and_notes_come_back_at_the_end() {
    let (mut h, mut up) = {
        let mut h = Harness::spawn(&start());
        let mut up = h.connection().await;
        let update = up.accept().await;
        let i = update["session"]["instructions"]
            .as_str()
            .unwrap()
            .to_string();
        let open = i.find(MEMORY_OPEN).expect("memory block");
        assert!(i.starts_with("You are a pharmacy assistant.\n\n"), "{i}");
        assert!(
            i[open..].contains("Caller is Ana.\nPrefers text reminders.\n"),
            "{i}"
        );
        assert!(i.contains(MEMORY_CLOSE));
        // The preamble block comes after the memory block and knows about it.
        let preamble = i.find("# Conversation style").unwrap();
        assert!(preamble > open);
        assert!(i[preamble..].contains("memory block"), "{i}");
        (h, up)
    };
    h.host.next().await; // SessionStarted
                         // A response is running when the host ends the call: it is cancelled first.
    let rid = up.respond_to_text(&h.host, "refill please").await;
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    let (cancel, _) = up.until("response.cancel").await;
    assert_eq!(cancel["type"], "response.cancel");
    up.done(&rid, "cancelled", json!([])).await;
    let (create, _) = up.until("response.create").await;
    let r = &create["response"];
    assert_eq!(r["conversation"], "none");
    assert_eq!(r["output_modalities"], json!(["text"]));
    assert_eq!(r["tool_choice"], "none");
    assert_eq!(r["metadata"]["purpose"], "extract_notes");
    assert!(r["instructions"].as_str().unwrap().contains("key facts"));
    let notes_rid = up.created_for(&create).await;
    up.send(
        json!({"type": "response.output_text.done", "event_id": "t1", "response_id": notes_rid,
        "item_id": "item_n", "output_index": 0, "content_index": 0,
        "text": "  Ana asked for a refill of her usual prescription.\nReady Friday.  "}),
    )
    .await;
    up.done(&notes_rid, "completed", json!([])).await;
    let ended = h.host.ended().await;
    assert_eq!(ended.reason, "client_end");
    assert_eq!(
        ended.notes,
        "Ana asked for a refill of her usual prescription.\nReady Friday."
    );
}

#[tokio::test(start_paused = true)]
async fn a_model_that_gives_no_notes_does_not_hang_the_end() {
    let (mut h, mut up) = Harness::start(start()).await;
    let t0 = Instant::now();
    h.host.control(pb::control::Action::End(pb::Empty {})).await;
    let (_create, _) = up.until("response.create").await;
    // Upstream never answers.
    let ended = h.host.ended().await;
    assert_eq!(ended.notes, "");
    let waited = Instant::now() - t0;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

#[test]
fn memory_is_bounded_and_optional() {
    let plan =
        voice_session::SessionPlan::from_start(&pb::SessionStart::default(), &Default::default())
            .unwrap();
    assert!(!plan.config.instructions.contains(MEMORY_OPEN));
    let big = pb::SessionStart {
        memory: "x".repeat(voice_session::plan::MAX_MEMORY_BYTES + 1),
        ..Default::default()
    };
    let e = voice_session::SessionPlan::from_start(&big, &Default::default()).unwrap_err();
    assert!(e.to_string().contains("memory is"), "{e}");
}
