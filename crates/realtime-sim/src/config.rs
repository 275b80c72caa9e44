//! Simulator configuration: what the fake model says (the script), how fast it says it, and which
//! faults to inject. Kept in one serde-deserializable struct so the binary can load it from a JSON or
//! TOML file and tests can build it in code with `..Default::default()`.

use serde::Deserialize;

/// One tool invocation a [`ScriptStep::Tools`] step makes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    /// Tool name; it must have been declared in `session.update` (or `response.create`) `tools`,
    /// otherwise the simulator speaks instead of calling, as a model would.
    pub name: String,
    /// Arguments object; sent as its compact JSON text in `arguments`.
    #[serde(default = "empty_object")]
    pub arguments: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// One scripted model turn. Steps are consumed in order, one per response; a step with
/// `when_text_contains` is skipped by that ordering and used only when the user's text (or the
/// response's instructions) contains the given substring (case-insensitive).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScriptStep {
    /// Speak `text`.
    Say {
        text: String,
        #[serde(default)]
        when_text_contains: Option<String>,
    },
    /// Optionally speak `preamble`, then call every tool in `calls` within the same response
    /// (parallel calls); the next response speaks `then`, with `{outputs}` replaced by the
    /// function_call_output strings the client sent, joined by "; ".
    Tools {
        #[serde(default)]
        preamble: Option<String>,
        calls: Vec<ScriptToolCall>,
        then: String,
        #[serde(default)]
        when_text_contains: Option<String>,
    },
    /// Speak every text in `texts` as its own assistant `message` item, all in one response (as
    /// GPT Realtime 2 does with a preamble and an answer): each item has its own id, output_index,
    /// audio and transcript, and `response.done` lists them in order. An empty list gives a response
    /// with no output.
    Messages {
        texts: Vec<String>,
        #[serde(default)]
        when_text_contains: Option<String>,
    },
}

impl ScriptStep {
    /// A plain spoken reply.
    pub fn say(text: impl Into<String>) -> Self {
        ScriptStep::Say {
            text: text.into(),
            when_text_contains: None,
        }
    }

    /// Several assistant messages in one response, in order.
    pub fn messages<I, S>(texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ScriptStep::Messages {
            texts: texts.into_iter().map(Into::into).collect(),
            when_text_contains: None,
        }
    }

    /// A tool-calling turn; `calls` are `(name, arguments)` pairs.
    pub fn tools(
        preamble: Option<&str>,
        calls: Vec<(&str, serde_json::Value)>,
        then: impl Into<String>,
    ) -> Self {
        ScriptStep::Tools {
            preamble: preamble.map(str::to_owned),
            calls: calls
                .into_iter()
                .map(|(name, arguments)| ScriptToolCall {
                    name: name.to_owned(),
                    arguments,
                })
                .collect(),
            then: then.into(),
            when_text_contains: None,
        }
    }

    /// Makes this step conditional on the user's text containing `needle`.
    #[must_use]
    pub fn when_text_contains(mut self, needle: impl Into<String>) -> Self {
        let needle = Some(needle.into());
        match &mut self {
            ScriptStep::Say {
                when_text_contains, ..
            }
            | ScriptStep::Tools {
                when_text_contains, ..
            }
            | ScriptStep::Messages {
                when_text_contains, ..
            } => *when_text_contains = needle,
        }
        self
    }

    pub(crate) fn condition(&self) -> Option<&str> {
        match self {
            ScriptStep::Say {
                when_text_contains, ..
            }
            | ScriptStep::Tools {
                when_text_contains, ..
            }
            | ScriptStep::Messages {
                when_text_contains, ..
            } => when_text_contains.as_deref(),
        }
    }
}

/// Everything tunable about the simulator. Every field has a default, so a config file only names
/// what it changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// If set, `Authorization: Bearer` must carry exactly this key; otherwise any non-empty key passes.
    pub api_key: Option<String>,
    /// The scripted replies, consumed in order per session.
    pub script: Vec<ScriptStep>,
    /// When the script is exhausted: start over (`true`) or speak `default_reply` (`false`).
    pub script_cycle: bool,
    /// Spoken when there is no (more) script.
    pub default_reply: String,
    /// Transcripts handed out, in order, for the user's committed audio turns (conversation and
    /// transcription sessions, per session); when exhausted the transcript is "user speech of N.N
    /// seconds". Translation sessions take their speech segments' source text from here too (then
    /// "user speech N").
    pub user_transcripts: Vec<String>,
    /// Synthesized speech length per character of the spoken text.
    pub ms_per_char: u32,
    /// Audio per `response.(output_)audio.delta`; in transcription sessions, the pacing of the
    /// transcript deltas (one per `chunk_ms` at `realtime_factor`).
    pub chunk_ms: u32,
    /// Delay between the message item starting and its first audio delta (model "thinking").
    pub first_audio_delay_ms: u64,
    /// Streaming speed relative to real time (upstream streams ~4x faster than playback). `0` or
    /// negative: as fast as possible. Translation sessions release one 200 ms frame per
    /// `200 ms / realtime_factor`.
    pub realtime_factor: f64,
    /// Extra delay before `response.created`.
    pub response_delay_ms: u64,
    /// Delay before each function_call item (the model "deciding" to call).
    pub tool_call_delay_ms: u64,
    /// Keep the client events received by all sessions for `SimHandle::events_log`.
    pub record_client_events: bool,
    /// Bound on the recorded client-event and truncation logs (oldest dropped first).
    pub log_capacity: usize,
    /// Fault: close the socket abruptly (no close frame) after this many server events per session.
    pub drop_after_events: Option<u64>,
    /// Fault: send one `server_error` error event after this many server events per session.
    pub error_after_events: Option<u64>,
    /// Fault for transcription and translation sessions only (overrides `drop_after_events` for
    /// them): close the socket abruptly after this many server events, so a companion leg fails
    /// while the conversation beside it goes on.
    pub companion_drop_after_events: Option<u64>,
    /// Inject `drop_after_events` only into every Nth session (the Nth, 2Nth, ... connection
    /// accepted); unset: every session.
    pub drop_every_nth_session: Option<u64>,
    /// Inject `error_after_events` only into every Nth session; unset: every session.
    pub error_every_nth_session: Option<u64>,
    /// Keep the tool ledger (`SimHandle::ledger`): every function call issued and the outputs it
    /// got, across sessions. Grows with the calls made; meant for soak tests.
    pub tool_ledger: bool,
    /// Fault/limit: after this long, send `error` code `session_expired` and close.
    pub session_max_duration_ms: Option<u64>,
    /// Client messages larger than this get an error event (upstream's limit is 15 MiB).
    pub max_message_bytes: usize,
    /// What the model says after the output of a call carried over from an earlier session (a
    /// `function_call` item the client created), `{outputs}` replaced as in a `tools` step.
    pub carried_call_reply: String,
    /// Translation sessions: the language the simulated speaker talks in. When it equals the
    /// session's `audio.output.language` the speech is "already in the target language" and the
    /// session answers with silence and no output transcript, as upstream may.
    pub translation_source_language: String,
    /// Translation sessions: the translated text of each input speech segment, in order; when
    /// exhausted (or empty) the text is the source text prefixed with `(<target language>) `. The
    /// source text of a segment comes from `user_transcripts` like a committed turn's transcript.
    pub translation_outputs: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: None,
            script: Vec::new(),
            script_cycle: false,
            default_reply:
                "Hello! This is the offline realtime simulator. How can I help you today?"
                    .to_owned(),
            user_transcripts: Vec::new(),
            ms_per_char: 70,
            chunk_ms: 100,
            first_audio_delay_ms: 150,
            realtime_factor: 4.0,
            response_delay_ms: 0,
            tool_call_delay_ms: 0,
            record_client_events: false,
            log_capacity: 10_000,
            drop_after_events: None,
            error_after_events: None,
            companion_drop_after_events: None,
            drop_every_nth_session: None,
            error_every_nth_session: None,
            tool_ledger: false,
            session_max_duration_ms: None,
            max_message_bytes: 15 * 1024 * 1024,
            carried_call_reply: "Thanks for holding. {outputs}".to_owned(),
            translation_source_language: "nl".to_owned(),
            translation_outputs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_deserializes_from_json() {
        let cfg: SimConfig = serde_json::from_str(
            r#"{"script":[{"type":"say","text":"hi"},
                {"type":"tools","preamble":"one sec","calls":[{"name":"f","arguments":{"a":1}}],"then":"got {outputs}","when_text_contains":"weather"}],
                "chunk_ms":50}"#,
        )
        .unwrap();
        assert_eq!(cfg.chunk_ms, 50);
        assert_eq!(cfg.ms_per_char, 70);
        assert_eq!(cfg.script[0], ScriptStep::say("hi"));
        assert_eq!(cfg.script[1].condition(), Some("weather"));
    }

    #[test]
    fn messages_step_deserializes() {
        let cfg: SimConfig = serde_json::from_str(
            r#"{"script":[{"type":"messages","texts":["One moment.","It is sunny."]},
                {"type":"messages","texts":["a"],"when_text_contains":"two"}]}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.script[0],
            ScriptStep::messages(["One moment.", "It is sunny."])
        );
        assert_eq!(
            cfg.script[1],
            ScriptStep::messages(vec!["a".to_owned()]).when_text_contains("two")
        );
        assert!(serde_json::from_str::<SimConfig>(
            r#"{"script":[{"type":"messages","text":"x"}]}"#
        )
        .is_err());
    }

    #[test]
    fn unknown_fields_rejected() {
        assert!(serde_json::from_str::<SimConfig>(r#"{"chunkms":5}"#).is_err());
    }

    #[test]
    fn translation_fields_default_and_deserialize() {
        let cfg: SimConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.translation_source_language, "nl");
        assert!(cfg.translation_outputs.is_empty());
        let cfg: SimConfig = serde_json::from_str(
            r#"{"translation_source_language":"es","translation_outputs":["Hello"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.translation_source_language, "es");
        assert_eq!(cfg.translation_outputs, vec!["Hello"]);
    }
}
