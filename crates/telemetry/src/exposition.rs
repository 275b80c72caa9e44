//! `/metrics`: the exporter's text exposition, completed with the families that have no series yet,
//! served over HTTP/1.1 (hyper) on the metrics address.
//!
//! `metrics-exporter-prometheus` only renders a family once it has a series, so a family whose labels
//! are all named by hosts (`voice_tool_calls_total{tool,...}`) would be missing until the first tool
//! call. [`render`] adds `# HELP`/`# TYPE` for every family of [`FAMILIES`] the exporter left out.

use crate::metrics_def::FAMILIES;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::formatting::{write_help_line, write_type_line};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// How often histogram samples are drained into their buckets between scrapes (the exporter's own
/// listener uses the same interval).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The text exposition of everything recorded, plus `# HELP`/`# TYPE` for families with no series.
pub fn render(handle: &PrometheusHandle) -> String {
    complete(handle.render())
}

/// Appends `# HELP`/`# TYPE` lines for every family of [`FAMILIES`] that `text` has no `# TYPE` for.
pub fn complete(mut text: String) -> String {
    let present: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut missing = String::new();
    for f in FAMILIES.iter().filter(|f| !present.contains(f.name)) {
        write_help_line(&mut missing, f.name, None, None, f.help);
        write_type_line(&mut missing, f.name, None, None, f.kind.as_str());
        missing.push('\n');
    }
    text.push_str(&missing);
    text
}

/// Serves `GET /metrics` on `listener` and runs the recorder's upkeep, both as tasks on the current
/// runtime.
pub(crate) fn spawn(listener: TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(serve(listener, handle));
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&req, handle).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn respond<B>(req: &Request<B>, handle: PrometheusHandle) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return status(
            StatusCode::NOT_FOUND,
            "not found: metrics are on /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = status(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    set_tasks_active();
    // Rendering walks every series under the registry's locks: keep it off the async workers.
    let body = match tokio::task::spawn_blocking(move || render(&handle)).await {
        Ok(body) => body,
        Err(e) => {
            warn!(error = %e, "rendering /metrics failed");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n");
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r
}

/// `voice_tasks_active`: the runtime's live task count, read when it is scraped (this scrape's own
/// connection task included).
#[allow(clippy::cast_precision_loss)]
fn set_tasks_active() {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(crate::metrics_def::TASKS_ACTIVE)
            .set(rt.metrics().num_alive_tasks() as f64);
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_def::{
        builder, describe_all, register_known_series, Kind, Series, TOOL_CALLS_TOTAL,
        TOOL_CALL_DURATION,
    };

    fn type_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.strip_prefix("# TYPE ").and_then(|r| r.split(' ').next()) == Some(name))
            .collect()
    }

    fn help_lines(text: &str, name: &str) -> usize {
        text.lines()
            .filter(|l| l.strip_prefix("# HELP ").and_then(|r| r.split(' ').next()) == Some(name))
            .count()
    }

    #[test]
    fn an_empty_exposition_gets_every_family() {
        let text = complete(String::new());
        for f in FAMILIES {
            assert_eq!(
                type_lines(&text, f.name),
                [format!("# TYPE {} {}", f.name, f.kind.as_str())],
                "{}",
                f.name
            );
            assert!(
                text.contains(&format!("# HELP {} {}\n", f.name, f.help)),
                "{}",
                f.name
            );
        }
        assert!(
            !text.lines().any(|l| !l.is_empty() && !l.starts_with('#')),
            "no samples are invented:\n{text}"
        );
    }

    #[test]
    fn families_with_series_are_not_repeated_and_the_rest_are_added() {
        // A private recorder (not the global one), with the same bucket layout as the exporter.
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_all();
            register_known_series();
        });
        let text = render(&handle);
        for f in FAMILIES {
            assert_eq!(type_lines(&text, f.name).len(), 1, "{}\n{text}", f.name);
            assert_eq!(help_lines(&text, f.name), 1, "{}", f.name);
        }
        // A registered histogram: buckets at zero from the exporter, not a bare TYPE line.
        let latency = FAMILIES
            .iter()
            .find(|f| f.kind == Kind::Histogram && f.series == Series::Unlabelled)
            .unwrap();
        assert!(
            text.contains(&format!("{}_count 0\n", latency.name)),
            "{text}"
        );
        // Tool-named: HELP/TYPE only.
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(TOOL_CALLS_TOTAL) || l.starts_with(TOOL_CALL_DURATION)),
            "{text}"
        );
        // Nothing is ever recorded at startup: every sample is zero.
        for l in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let v: f64 = l.rsplit_once(' ').unwrap().1.parse().unwrap();
            assert!(v == 0.0, "{l}");
        }
    }

    #[test]
    fn counting_a_family_removes_its_bare_lines() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_all();
            metrics::counter!(TOOL_CALLS_TOTAL, "tool" => "lookup", "outcome" => "ok").increment(1);
        });
        let text = render(&handle);
        assert_eq!(type_lines(&text, TOOL_CALLS_TOTAL).len(), 1, "{text}");
        assert!(
            text.contains(&format!(
                "{TOOL_CALLS_TOTAL}{{tool=\"lookup\",outcome=\"ok\"}} 1\n"
            )),
            "{text}"
        );
    }
}
