//! Tools: the declared set (with compiled argument schemas), the gRPC channels to tool hosts, and the
//! rules that turn whatever a host answers — or fails to — into one output the model can speak about.
//!
//! Every call ends in exactly one `ToolOutcome`; there is no path where a call is forgotten.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use voice_proto::v1 as pb;
use voice_realtime::ToolSpec;

pub struct ToolDef {
    pub name: String,
    pub description: String,
    pub schema: Value,
    pub timeout: Duration,
    /// Session records keep its arguments and outputs as `[redacted]`.
    pub redact_in_records: bool,
    /// Shared between every session that declares the same schema text ([`compiled`]).
    validator: Arc<jsonschema::Validator>,
}

/// Schema text the cache of compiled schemas holds at most, bytes. Compiled, a schema takes tens of
/// times its text (~70× for one with hundreds of properties); entries no live session uses are evicted
/// first, and past the bound schemas are compiled per session and not cached.
pub const SCHEMA_CACHE_BYTES: usize = 1024 * 1024;

#[derive(Default)]
struct SchemaCache {
    map: HashMap<String, Arc<jsonschema::Validator>>,
    bytes: usize,
}

fn schema_cache() -> &'static Mutex<SchemaCache> {
    static CACHE: std::sync::OnceLock<Mutex<SchemaCache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(SchemaCache::default()))
}

/// The compiled validator of a schema, from the process-wide cache keyed by the schema text (sessions
/// that declare the same tool share one), or compiled now and cached.
fn compiled(key: &str, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    if let Some(v) = schema_cache()
        .lock()
        .ok()
        .and_then(|c| c.map.get(key).cloned())
    {
        return Ok(v);
    }
    let v = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
    if let Ok(mut c) = schema_cache().lock() {
        if c.bytes + key.len() > SCHEMA_CACHE_BYTES {
            c.map.retain(|_, v| Arc::strong_count(v) > 1);
            c.bytes = c.map.keys().map(String::len).sum();
        }
        if c.bytes + key.len() <= SCHEMA_CACHE_BYTES && !c.map.contains_key(key) {
            c.bytes += key.len();
            c.map.insert(key.to_string(), v.clone());
        }
    }
    Ok(v)
}

/// Compiled schemas in the cache (tests, metrics).
pub fn schema_cache_len() -> usize {
    schema_cache().lock().map_or(0, |c| c.map.len())
}

impl std::fmt::Debug for ToolDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolDef")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ToolDef {
    pub fn new(
        name: &str,
        description: &str,
        schema_json: &str,
        timeout: Duration,
    ) -> Result<ToolDef, String> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(format!(
                "tool name {name:?} must match [a-zA-Z0-9_-]{{1,64}}"
            ));
        }
        let schema: Value = if schema_json.trim().is_empty() {
            json!({"type": "object", "properties": {}})
        } else {
            serde_json::from_str(schema_json)
                .map_err(|e| format!("tool {name:?}: parameters_json_schema is not JSON: {e}"))?
        };
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(format!("tool {name:?}: parameters_json_schema must be an object schema (\"type\": \"object\")"));
        }
        let validator = compiled(schema_json.trim(), &schema)
            .map_err(|e| format!("tool {name:?}: invalid JSON Schema: {e}"))?;
        if timeout.is_zero() || timeout > Duration::from_secs(600) {
            return Err(format!(
                "tool {name:?}: timeout must be within 1 ms..=600 s"
            ));
        }
        Ok(ToolDef {
            name: name.to_string(),
            description: description.to_string(),
            schema,
            timeout,
            redact_in_records: false,
            validator,
        })
    }
}

impl ToolDef {
    /// Whether two definitions use one compiled schema (the cache shares it).
    pub fn shares_validator_with(&self, other: &ToolDef) -> bool {
        Arc::ptr_eq(&self.validator, &other.validator)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: HashMap<String, Arc<ToolDef>>,
}

/// Why a call was refused without reaching the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    UnknownTool(String),
    BadArguments(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownTool(n) => write!(f, "there is no tool named {n:?}"),
            Refusal::BadArguments(m) => {
                write!(f, "the arguments do not match the tool's schema: {m}")
            }
        }
    }
}

impl ToolRegistry {
    pub fn new(defs: Vec<ToolDef>) -> Result<ToolRegistry, String> {
        let mut tools = HashMap::new();
        for d in defs {
            if tools.contains_key(&d.name) {
                return Err(format!("tool {:?} is declared twice", d.name));
            }
            tools.insert(d.name.clone(), Arc::new(d));
        }
        Ok(ToolRegistry { tools })
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ToolDef>> {
        self.tools.get(name)
    }

    /// Declared names, for bounded metric labels.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut v: Vec<ToolSpec> = self
            .tools
            .values()
            .map(|d| ToolSpec {
                name: d.name.clone(),
                description: d.description.clone(),
                parameters: d.schema.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Checks a call before it reaches the host.
    pub fn check(&self, name: &str, arguments: &str) -> Result<Arc<ToolDef>, Refusal> {
        let def = self
            .tools
            .get(name)
            .ok_or_else(|| Refusal::UnknownTool(name.to_string()))?;
        let args: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments)
                .map_err(|e| Refusal::BadArguments(format!("not JSON: {e}")))?
        };
        if let Err(e) = def.validator.validate(&args) {
            return Err(Refusal::BadArguments(e.to_string()));
        }
        Ok(def.clone())
    }

    /// The metric label for a tool name: declared names only, so a model inventing names cannot blow
    /// up label cardinality.
    pub fn label<'a>(&self, name: &'a str) -> &'a str {
        if self.tools.contains_key(name) {
            name
        } else {
            "_undeclared"
        }
    }
}

/// How a call ended; mirrors `voice.v1.ToolStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolStatus {
    Ok,
    Error,
    Timeout,
    Unreachable,
    InvalidOutput,
    Refused,
    Cancelled,
}

impl ToolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolStatus::Ok => "ok",
            ToolStatus::Error => "error",
            ToolStatus::Timeout => "timeout",
            ToolStatus::Unreachable => "unreachable",
            ToolStatus::InvalidOutput => "invalid_output",
            ToolStatus::Refused => "refused",
            ToolStatus::Cancelled => "cancelled",
        }
    }

    pub fn to_pb(self) -> pb::ToolStatus {
        match self {
            ToolStatus::Ok => pb::ToolStatus::Ok,
            ToolStatus::Error => pb::ToolStatus::Error,
            ToolStatus::Timeout => pb::ToolStatus::Timeout,
            ToolStatus::Unreachable => pb::ToolStatus::Unreachable,
            ToolStatus::InvalidOutput => pb::ToolStatus::InvalidOutput,
            ToolStatus::Refused => pb::ToolStatus::Refused,
            ToolStatus::Cancelled => pb::ToolStatus::Cancelled,
        }
    }
}

/// The end of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    pub call_id: String,
    pub name: String,
    pub status: ToolStatus,
    /// What the model receives as `function_call_output.output` (always JSON).
    pub output: String,
    pub error: Option<String>,
    pub duration: Duration,
}

impl ToolOutcome {
    pub fn failed(
        call_id: impl Into<String>,
        name: impl Into<String>,
        status: ToolStatus,
        message: String,
        duration: Duration,
    ) -> ToolOutcome {
        ToolOutcome {
            call_id: call_id.into(),
            name: name.into(),
            status,
            output: json!({"error": message}).to_string(),
            error: Some(message),
            duration,
        }
    }
}

/// Normalizes what a host answered (`Ok(output_json)` or `Err(error text)`) into an outcome.
pub fn outcome_from_answer(
    call_id: &str,
    name: &str,
    answer: Result<String, String>,
    max_bytes: usize,
    duration: Duration,
) -> ToolOutcome {
    match answer {
        Err(msg) => ToolOutcome::failed(
            call_id,
            name,
            ToolStatus::Error,
            format!("the tool failed: {msg}"),
            duration,
        ),
        Ok(out) if out.len() > max_bytes => ToolOutcome::failed(
            call_id,
            name,
            ToolStatus::InvalidOutput,
            format!(
                "the tool returned {} bytes, more than the {max_bytes}-byte limit",
                out.len()
            ),
            duration,
        ),
        Ok(out) => match serde_json::from_str::<Value>(&out) {
            Ok(_) => ToolOutcome {
                call_id: call_id.to_string(),
                name: name.to_string(),
                status: ToolStatus::Ok,
                output: out,
                error: None,
                duration,
            },
            Err(e) => ToolOutcome::failed(
                call_id,
                name,
                ToolStatus::InvalidOutput,
                format!("the tool returned output that is not valid JSON ({e})"),
                duration,
            ),
        },
    }
}

/// Tool-host channels cached at once unless configured otherwise (`--max-tool-channels`).
pub const DEFAULT_MAX_TOOL_CHANNELS: usize = 64;

/// One lazily-connected channel per tool-host address, shared by all sessions (HTTP/2 multiplexes
/// parallel calls on it). Bounded: past `capacity` addresses the least recently used channel is
/// dropped (calls running on it keep their clone and finish); the count is the
/// `voice_tool_channels` gauge, evictions `voice_tool_channel_evictions_total`.
#[derive(Debug, Clone)]
pub struct ToolChannels {
    inner: Arc<Mutex<ChannelCache>>,
}

#[derive(Debug)]
struct ChannelCache {
    capacity: usize,
    /// Address → (channel, last use).
    map: HashMap<String, (Channel, u64)>,
    tick: u64,
}

impl Default for ToolChannels {
    fn default() -> Self {
        ToolChannels::new(DEFAULT_MAX_TOOL_CHANNELS)
    }
}

impl ToolChannels {
    pub fn new(capacity: usize) -> ToolChannels {
        ToolChannels {
            inner: Arc::new(Mutex::new(ChannelCache {
                capacity: capacity.max(1),
                map: HashMap::new(),
                tick: 0,
            })),
        }
    }

    /// Channels cached now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelCache> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        if let Some((c, used)) = cache.map.get_mut(addr) {
            *used = tick;
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad tool host address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let ch = ep.connect_lazy();
        // A linear scan: the cache is small (tens of addresses) and a miss is rare.
        while cache.map.len() >= cache.capacity {
            let Some(oldest) = cache
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            cache.map.remove(&oldest);
            metrics::counter!(voice_telemetry::TOOL_CHANNEL_EVICTIONS).increment(1);
        }
        cache.map.insert(addr.to_string(), (ch.clone(), tick));
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(voice_telemetry::TOOL_CHANNELS).set(cache.map.len() as f64);
        Ok(ch)
    }
}

/// tonic's status for a response over the client's decoding limit.
fn is_too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
        || status.code() == tonic::Code::ResourceExhausted
            && status.message().contains("size limit")
}

/// The decoding limit for a tool host's answer: the output limit plus room for the envelope.
fn answer_limit(max_bytes: usize) -> usize {
    max_bytes.saturating_add(1024)
}

/// Runs one call on a `ToolHost` over gRPC. Dropping the future cancels the RPC (the host sees the
/// cancellation), which is how session end and timeouts reach the host.
pub async fn invoke_callback(
    channels: ToolChannels,
    addr: String,
    invocation: pb::ToolInvocation,
    timeout: Duration,
    max_bytes: usize,
) -> ToolOutcome {
    let started = Instant::now();
    let call_id = invocation.call_id.clone();
    let name = invocation.name.clone();
    let ch = match channels.channel(&addr) {
        Ok(c) => c,
        Err(e) => {
            return ToolOutcome::failed(
                &call_id,
                &name,
                ToolStatus::Unreachable,
                e,
                started.elapsed(),
            )
        }
    };
    // An answer over the limit is refused by tonic before it is buffered whole.
    let mut client = pb::tool_host_client::ToolHostClient::new(ch)
        .max_decoding_message_size(answer_limit(max_bytes));
    let mut req = tonic::Request::new(invocation);
    req.set_timeout(timeout);
    let res = tokio::time::timeout(timeout, client.invoke(req)).await;
    let elapsed = started.elapsed();
    match res {
        Err(_) => timeout_outcome(&call_id, &name, timeout, elapsed),
        Ok(Err(status)) => match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled if elapsed >= timeout => {
                timeout_outcome(&call_id, &name, timeout, elapsed)
            }
            _ if is_too_large(&status) => ToolOutcome::failed(
                &call_id,
                &name,
                ToolStatus::InvalidOutput,
                format!("the tool returned more than the {max_bytes}-byte output limit"),
                elapsed,
            ),
            tonic::Code::Unavailable => ToolOutcome::failed(
                &call_id,
                &name,
                ToolStatus::Unreachable,
                format!("the tool host is unreachable: {}", status.message()),
                elapsed,
            ),
            code => ToolOutcome::failed(
                &call_id,
                &name,
                ToolStatus::Error,
                format!("the tool host failed ({code:?}): {}", status.message()),
                elapsed,
            ),
        },
        Ok(Ok(resp)) => {
            let answer = match resp.into_inner().result {
                Some(pb::tool_output::Result::OutputJson(o)) => Ok(o),
                Some(pb::tool_output::Result::Error(e)) => Err(e),
                None => Err("the tool host returned neither output nor error".to_string()),
            };
            outcome_from_answer(&call_id, &name, answer, max_bytes, elapsed)
        }
    }
}

pub fn timeout_outcome(
    call_id: &str,
    name: &str,
    timeout: Duration,
    elapsed: Duration,
) -> ToolOutcome {
    ToolOutcome::failed(
        call_id,
        name,
        ToolStatus::Timeout,
        format!("the tool did not answer within {} ms", timeout.as_millis()),
        elapsed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> ToolRegistry {
        ToolRegistry::new(vec![ToolDef::new(
            "lookup",
            "find",
            r#"{"type":"object","properties":{"date":{"type":"string"}},"required":["date"]}"#,
            Duration::from_secs(1),
        )
        .unwrap()])
        .unwrap()
    }

    #[test]
    fn schema_checks_refuse_before_the_host() {
        let r = reg();
        assert!(r.check("lookup", r#"{"date":"2026-01-01"}"#).is_ok());
        assert!(matches!(
            r.check("lookup", r#"{"day":1}"#),
            Err(Refusal::BadArguments(_))
        ));
        assert!(matches!(
            r.check("lookup", "not json"),
            Err(Refusal::BadArguments(_))
        ));
        assert!(matches!(
            r.check("nope", "{}"),
            Err(Refusal::UnknownTool(_))
        ));
        assert_eq!(r.label("nope"), "_undeclared");
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert!(ToolDef::new("bad name", "", "", Duration::from_secs(1)).is_err());
        assert!(ToolDef::new("t", "", "{", Duration::from_secs(1)).is_err());
        assert!(ToolDef::new("t", "", r#"{"type":"string"}"#, Duration::from_secs(1)).is_err());
        assert!(ToolDef::new(
            "t",
            "",
            r#"{"type":"object","properties":{"a":{"type":"nope"}}}"#,
            Duration::from_secs(1)
        )
        .is_err());
    }

    #[test]
    fn outputs_are_normalized() {
        let d = Duration::from_millis(5);
        assert_eq!(
            outcome_from_answer("c", "t", Ok("{\"a\":1}".into()), 100, d).status,
            ToolStatus::Ok
        );
        let o = outcome_from_answer("c", "t", Ok("nope".into()), 100, d);
        assert_eq!(o.status, ToolStatus::InvalidOutput);
        assert!(serde_json::from_str::<Value>(&o.output).unwrap()["error"].is_string());
        assert_eq!(
            outcome_from_answer("c", "t", Ok("[1,2,3]".into()), 3, d).status,
            ToolStatus::InvalidOutput
        );
        assert_eq!(
            outcome_from_answer("c", "t", Err("boom".into()), 100, d).status,
            ToolStatus::Error
        );
    }

    #[test]
    fn too_large_answers_are_recognized() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 5 bytes",
        );
        assert!(is_too_large(&s));
        assert!(!is_too_large(&tonic::Status::out_of_range(
            "the host's own"
        )));
        assert!(!is_too_large(&tonic::Status::internal("length too large")));
        assert_eq!(answer_limit(usize::MAX), usize::MAX);
    }

    #[tokio::test]
    async fn the_channel_cache_is_bounded_and_keeps_recent_addresses() {
        let c = ToolChannels::new(2);
        c.channel("http://127.0.0.1:1").unwrap();
        c.channel("http://127.0.0.1:2").unwrap();
        c.channel("http://127.0.0.1:1").unwrap(); // :1 is now the most recent
        c.channel("http://127.0.0.1:3").unwrap(); // evicts :2
        assert_eq!(c.len(), 2);
        let cache = c.lock();
        assert!(cache.map.contains_key("http://127.0.0.1:1"));
        assert!(cache.map.contains_key("http://127.0.0.1:3"));
        assert!(!cache.map.contains_key("http://127.0.0.1:2"));
        drop(cache);
        assert!(c.channel("not a url").is_err());
        assert_eq!(c.len(), 2);
    }
}
