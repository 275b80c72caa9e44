//! The model table: every Realtime model the sidecar knows, in one place — what it can do, what it
//! costs and when it shuts down. Facts from the `openai` package 3.57.0 (model literals, shutdown
//! dates in its docstrings) and OpenAI's model pages; `docs` in the README lists the sources.
//!
//! Dated snapshots (`gpt-realtime-2025-08-28`, `gpt-realtime-mini-2025-12-15`, ...) resolve to their
//! family's row unless they have one of their own. A model not in the table (a proxy's or an Azure
//! deployment's name) is allowed: the caller decides which known model's capabilities to assume.

/// A calendar date (shutdown dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    pub const fn new(year: i32, month: u32, day: u32) -> Date {
        Date { year, month, day }
    }

    /// Days since 1970-01-01 (proleptic Gregorian).
    pub fn days_since_epoch(self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The UTC date of a Unix time in seconds.
    pub fn from_unix(secs: i64) -> Date {
        let z = secs.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }

    /// Today, in UTC.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Date::from_unix(secs)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A speech-to-speech conversation model (`type: "realtime"` sessions).
    Conversation,
    /// A speech-to-text model (input transcription, transcription sessions).
    Transcription,
    /// A speech-to-speech translation model (`/v1/realtime/translations`).
    Translation,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenPrices {
    pub input_text: f64,
    pub input_audio: f64,
    /// Cached input tokens (text and audio alike).
    pub input_cached: f64,
    pub output_text: f64,
    pub output_audio: f64,
}

/// How a model is billed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pricing {
    Tokens(TokenPrices),
    /// USD per minute of audio.
    PerMinute(f64),
}

/// Which input-transcription options a transcription model takes (GA dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TranscriptionOptions {
    /// `delay` (`minimal..xhigh`): `gpt-realtime-whisper` only.
    pub delay: bool,
    /// `keywords[]` and `languages[]`.
    pub keywords: bool,
    /// `prompt`.
    pub prompt: bool,
    /// Works with turn detection (VAD) in a transcription session.
    pub vad: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInfo {
    pub id: &'static str,
    pub kind: Kind,
    /// Accepts `reasoning.effort`.
    pub reasoning: bool,
    /// Accepts `parallel_tool_calls`.
    pub parallel_tool_calls: bool,
    pub transcription: TranscriptionOptions,
    pub pricing: Pricing,
    /// Announced shutdown, if any.
    pub shutdown: Option<Date>,
    /// Where a figure is not from OpenAI's own pages (assumed, or secondary material).
    pub note: &'static str,
}

const fn tokens(
    input_text: f64,
    input_audio: f64,
    input_cached: f64,
    output_text: f64,
    output_audio: f64,
) -> Pricing {
    Pricing::Tokens(TokenPrices {
        input_text,
        input_audio,
        input_cached,
        output_text,
        output_audio,
    })
}

const NO_TRANSCRIPTION: TranscriptionOptions = TranscriptionOptions {
    delay: false,
    keywords: false,
    prompt: false,
    vad: false,
};

const fn conversation(
    id: &'static str,
    reasoning: bool,
    pricing: Pricing,
    shutdown: Option<Date>,
    note: &'static str,
) -> ModelInfo {
    ModelInfo {
        id,
        kind: Kind::Conversation,
        reasoning,
        parallel_tool_calls: reasoning,
        transcription: NO_TRANSCRIPTION,
        pricing,
        shutdown,
        note,
    }
}

const fn stt(
    id: &'static str,
    per_minute: f64,
    transcription: TranscriptionOptions,
    shutdown: Option<Date>,
    note: &'static str,
) -> ModelInfo {
    ModelInfo {
        id,
        kind: Kind::Transcription,
        reasoning: false,
        parallel_tool_calls: false,
        transcription,
        pricing: Pricing::PerMinute(per_minute),
        shutdown,
        note,
    }
}

const SHUTDOWN_2027_01_20: Option<Date> = Some(Date::new(2027, 1, 20));
const SHUTDOWN_2027_02_26: Option<Date> = Some(Date::new(2027, 2, 26));

const WHISPER_STYLE: TranscriptionOptions = TranscriptionOptions {
    delay: false,
    keywords: false,
    prompt: true,
    vad: true,
};

/// The table. Conversation models first, newest first.
pub const MODELS: &[ModelInfo] = &[
    conversation(
        "gpt-realtime-2",
        true,
        tokens(4.0, 32.0, 0.40, 24.0, 64.0),
        None,
        "",
    ),
    conversation(
        "gpt-realtime-2.1",
        true,
        tokens(4.0, 32.0, 0.40, 24.0, 64.0),
        None,
        "prices as gpt-realtime-2 (OpenAI model page)",
    ),
    conversation(
        "gpt-realtime-2.1-mini",
        true,
        tokens(0.60, 10.0, 0.30, 2.40, 20.0),
        None,
        "prices assumed equal to gpt-realtime-mini (not published in the sources used)",
    ),
    conversation(
        "gpt-realtime-1.5",
        false,
        tokens(4.0, 32.0, 0.40, 16.0, 64.0),
        None,
        "prices assumed equal to gpt-realtime",
    ),
    conversation(
        "gpt-realtime",
        false,
        tokens(4.0, 32.0, 0.40, 16.0, 64.0),
        SHUTDOWN_2027_01_20,
        "",
    ),
    conversation(
        "gpt-realtime-mini",
        false,
        tokens(0.60, 10.0, 0.30, 2.40, 20.0),
        SHUTDOWN_2027_01_20,
        "",
    ),
    stt(
        "gpt-realtime-whisper",
        0.017,
        TranscriptionOptions {
            delay: true,
            keywords: false,
            prompt: false,
            vad: false,
        },
        None,
        "",
    ),
    stt(
        "gpt-live-transcribe",
        0.006,
        TranscriptionOptions {
            delay: false,
            keywords: true,
            prompt: true,
            vad: false,
        },
        None,
        "price assumed equal to gpt-4o-transcribe",
    ),
    stt(
        "gpt-transcribe",
        0.006,
        TranscriptionOptions {
            delay: false,
            keywords: true,
            prompt: true,
            vad: true,
        },
        None,
        "price assumed equal to gpt-4o-transcribe",
    ),
    stt(
        "gpt-4o-transcribe",
        0.006,
        WHISPER_STYLE,
        SHUTDOWN_2027_02_26,
        "",
    ),
    stt(
        "gpt-4o-mini-transcribe",
        0.003,
        WHISPER_STYLE,
        SHUTDOWN_2027_02_26,
        "",
    ),
    stt(
        "gpt-4o-transcribe-diarize",
        0.006,
        WHISPER_STYLE,
        SHUTDOWN_2027_02_26,
        "",
    ),
    stt("whisper-1", 0.006, WHISPER_STYLE, SHUTDOWN_2027_02_26, ""),
    ModelInfo {
        id: "gpt-realtime-translate",
        kind: Kind::Translation,
        reasoning: false,
        parallel_tool_calls: false,
        transcription: NO_TRANSCRIPTION,
        pricing: Pricing::PerMinute(0.034),
        shutdown: None,
        note: "",
    },
];

/// Snapshot names with their own shutdown dates that differ from no family row: none today; dated
/// snapshots share their family's row.
fn family(id: &str) -> &str {
    // `name-YYYY-MM-DD`: strip a trailing date.
    let b = id.as_bytes();
    if b.len() > 11 && b[b.len() - 11] == b'-' {
        let date = &id[id.len() - 10..];
        let ok = date.len() == 10
            && date.bytes().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            });
        if ok {
            return &id[..id.len() - 11];
        }
    }
    id
}

/// The row of a model id (a dated snapshot resolves to its family).
pub fn lookup(id: &str) -> Option<&'static ModelInfo> {
    MODELS
        .iter()
        .find(|m| m.id == id)
        .or_else(|| MODELS.iter().find(|m| m.id == family(id)))
}

/// The default conversation model.
pub const DEFAULT_MODEL: &str = "gpt-realtime-2";
/// The default user-transcription model in the GA dialect.
pub const DEFAULT_TRANSCRIPTION_GA: &str = "gpt-realtime-whisper";
/// The default user-transcription model in the beta dialect (which has no `gpt-realtime-whisper`
/// options): the best transcriber the beta session accepts.
pub const DEFAULT_TRANSCRIPTION_BETA: &str = "gpt-4o-transcribe";

/// Warn this many days before a model's shutdown.
pub const DEPRECATION_WARNING_DAYS: i64 = 30;

/// If `model` is past, or within [`DEPRECATION_WARNING_DAYS`] of, its shutdown on `today`: why.
pub fn deprecation(model: &ModelInfo, today: Date) -> Option<String> {
    let shutdown = model.shutdown?;
    let days = shutdown.days_since_epoch() - today.days_since_epoch();
    if days < 0 {
        Some(format!(
            "{} was shut down on {shutdown}; requests may fail",
            model.id
        ))
    } else if days <= DEPRECATION_WARNING_DAYS {
        Some(format!(
            "{} shuts down on {shutdown} (in {days} days); move to a current model",
            model.id
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_the_issue_names_is_in_the_table() {
        for id in [
            "gpt-realtime-2",
            "gpt-realtime-2.1",
            "gpt-realtime-2.1-mini",
            "gpt-realtime-1.5",
            "gpt-realtime",
            "gpt-realtime-mini",
            "gpt-realtime-whisper",
            "gpt-realtime-translate",
            "whisper-1",
        ] {
            assert!(lookup(id).is_some(), "{id}");
        }
        let ids: std::collections::HashSet<_> = MODELS.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), MODELS.len(), "ids are unique");
        assert_eq!(lookup(DEFAULT_MODEL).unwrap().kind, Kind::Conversation);
        assert!(lookup(DEFAULT_MODEL).unwrap().reasoning);
        assert!(
            lookup(DEFAULT_TRANSCRIPTION_GA)
                .unwrap()
                .transcription
                .delay
        );
    }

    #[test]
    fn snapshots_resolve_to_their_family() {
        assert_eq!(
            lookup("gpt-realtime-2025-08-28").unwrap().id,
            "gpt-realtime"
        );
        assert_eq!(
            lookup("gpt-realtime-mini-2025-12-15").unwrap().id,
            "gpt-realtime-mini"
        );
        assert_eq!(
            lookup("gpt-4o-mini-transcribe-2025-12-15").unwrap().id,
            "gpt-4o-mini-transcribe"
        );
        assert!(lookup("my-azure-deployment").is_none());
        assert!(lookup("gpt-realtime-2-2026-13-99x").is_none());
    }

    #[test]
    fn dates_round_trip_and_count_days() {
        let d = Date::new(2027, 1, 20);
        assert_eq!(Date::from_unix(d.days_since_epoch() * 86_400), d);
        assert_eq!(Date::new(1970, 1, 1).days_since_epoch(), 0);
        assert_eq!(Date::from_unix(1_764_633_600), Date::new(2025, 12, 2));
        assert_eq!(
            Date::new(2027, 3, 1).days_since_epoch() - Date::new(2027, 2, 26).days_since_epoch(),
            3
        );
        assert_eq!(d.to_string(), "2027-01-20");
    }

    #[test]
    fn deprecation_warns_within_30_days_and_after() {
        let m = lookup("gpt-realtime").unwrap();
        assert_eq!(deprecation(m, Date::new(2026, 12, 2)), None, "49 days out");
        let w = deprecation(m, Date::new(2026, 12, 21)).unwrap();
        assert!(w.contains("2027-01-20") && w.contains("30 days"), "{w}");
        assert!(deprecation(m, Date::new(2027, 2, 1))
            .unwrap()
            .contains("was shut down"));
        assert_eq!(
            deprecation(lookup("gpt-realtime-2").unwrap(), Date::new(2030, 1, 1)),
            None
        );
    }
}
