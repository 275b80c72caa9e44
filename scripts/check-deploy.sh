#!/usr/bin/env bash
# Checks everything under deploy/: Prometheus rules (syntax + unit tests) and the Grafana dashboard
# (structure, PromQL syntax, and that every voice_* metric it uses is one the sidecar exports).
# Usage: scripts/check-deploy.sh            (from anywhere; installs promtool via apt if missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROM_DIR=deploy/prometheus
DASHBOARD=deploy/grafana/voice-sidecar.json

# ---------------------------------------------------------------- promtool
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing the Debian 'prometheus' package (provides /usr/bin/promtool)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: need root or sudo to install promtool (or put promtool on PATH)" >&2; exit 1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    || { $SUDO apt-get update && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }
fi
promtool --version 2>&1 | head -n1

# Rules files only: every *.yml in deploy/prometheus except unit-test files.
rule_files=()
for f in "$PROM_DIR"/*.yml; do
  case "$f" in *_test.yml) ;; *) rule_files+=("$f") ;; esac
done
echo "== promtool check rules ${rule_files[*]}"
promtool check rules "${rule_files[@]}"

echo "== promtool test rules $PROM_DIR/alerts_test.yml"
promtool test rules "$PROM_DIR/alerts_test.yml"

# ---------------------------------------------------------------- dashboard + metric names
echo "== dashboard and metric-name check"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$DASHBOARD" "$tmp/dashboard_exprs.rules.yml" "${rule_files[@]}" <<'PY'
import json, re, sys
from pathlib import Path

dash_path, exprs_out, *rule_files = sys.argv[1:]

# Metrics the sidecar exports: name -> type (metrics_def.rs + session.rs; see design.md "Metrics").
KNOWN = {
    "voice_sessions_active": "gauge",
    "voice_sessions_total": "counter",
    "voice_response_latency_seconds": "histogram",
    "voice_silence_seconds": "histogram",
    "voice_tool_call_duration_seconds": "histogram",
    "voice_tool_calls_in_flight": "gauge",
    "voice_tool_calls_total": "counter",
    "voice_upstream_connect_seconds": "histogram",
    "voice_upstream_reconnects_total": "counter",
    "voice_upstream_errors_total": "counter",
    "voice_upstream_unknown_events_total": "counter",
    "voice_audio_frames_total": "counter",
    "voice_audio_bytes_total": "counter",
    "voice_frame_processing_seconds": "histogram",
    "voice_interruptions_total": "counter",
    "voice_tokens_total": "counter",
    "voice_host_errors_total": "counter",
    "voice_responses_total": "counter",
    # being added alongside these deploy files
    "voice_output_audio_anomalies_total": "counter",
    "voice_dead_air_seconds": "histogram",
    "voice_cost_microdollars_total": "counter",
    "voice_budget_exceeded_total": "counter",
    "voice_host_stall_seconds": "histogram",
    "voice_audio_dropped_total": "counter",
    "voice_preamble_to_answer_seconds": "histogram",
    "voice_idle_timeouts_total": "counter",
    "voice_quiet_mode_total": "counter",
    "voice_quiet_suppressed_responses_total": "counter",
    "voice_model_deprecated_sessions_total": "counter",
    "voice_limits_hit_total": "counter",
    "voice_log_suppressed_total": "counter",
    "voice_label_values_overflowed_total": "counter",
}
errors = []

# Cross-check against the Rust source when it is there: names defined in code but unknown here are
# reported (so this list is kept current); names known here but not yet in code are only noted.
src = Path("crates/telemetry/src/metrics_def.rs")
if src.exists():
    in_code = set(re.findall(r'"(voice_[a-z0-9_]+)"', src.read_text()))
    for n in sorted(in_code - KNOWN.keys()):
        errors.append(f"metrics_def.rs defines {n}, which this check does not know: add it to KNOWN")
    pending = sorted(KNOWN.keys() - in_code)
    if pending:
        print("note: not (yet) in metrics_def.rs: " + ", ".join(pending))

NAME_RE = re.compile(r"\bvoice_[a-z0-9_]*[a-z0-9]")

def check_names(text, where):
    for name in NAME_RE.findall(text):
        if name in KNOWN:
            continue
        base, _, suffix = name.rpartition("_")
        if suffix in ("bucket", "sum", "count") and KNOWN.get(base) == "histogram":
            continue
        hint = " (histogram: use _bucket/_sum/_count)" if KNOWN.get(name) == "histogram" else ""
        errors.append(f"{where}: unknown metric {name}{hint}")

def check_histogram_bare(expr, where):
    for name in NAME_RE.findall(expr):
        if KNOWN.get(name) == "histogram":
            errors.append(f"{where}: histogram {name} used without _bucket/_sum/_count")

# --- dashboard structure
try:
    dash = json.loads(Path(dash_path).read_text())
except Exception as e:  # noqa: BLE001
    sys.exit(f"{dash_path}: not valid JSON: {e}")
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
    errors.append("schemaVersion must be an int >= 36")
if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" for i in dash.get("__inputs", [])):
    errors.append("__inputs must declare DS_PROMETHEUS (prometheus)")
for k in ("title", "uid", "panels"):
    if not dash.get(k):
        errors.append(f"dashboard has no {k}")

def all_panels(ps):
    for p in ps:
        yield p
        yield from all_panels(p.get("panels", []))

exprs = []
ids = set()
panels = list(all_panels(dash.get("panels", [])))
if not [p for p in panels if p.get("type") != "row"]:
    errors.append("dashboard has no panels")
for p in panels:
    where = f"panel {p.get('id')} {p.get('title')!r}"
    if p.get("id") in ids:
        errors.append(f"{where}: duplicate panel id")
    ids.add(p.get("id"))
    gp = p.get("gridPos", {})
    if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
        errors.append(f"{where}: bad gridPos {gp}")
    if p.get("type") == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        errors.append(f"{where}: datasource uid must be ${{DS_PROMETHEUS}}")
    targets = p.get("targets") or []
    if not targets:
        errors.append(f"{where}: no targets")
    for t in targets:
        e = (t.get("expr") or "").strip()
        if not e:
            errors.append(f"{where} ref {t.get('refId')}: empty expr")
            continue
        if t.get("datasource", {}).get("uid", "${DS_PROMETHEUS}") != "${DS_PROMETHEUS}":
            errors.append(f"{where} ref {t.get('refId')}: datasource uid must be ${{DS_PROMETHEUS}}")
        check_names(e, where)
        check_histogram_bare(e, where)
        exprs.append((where, e))
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    check_names(q, f"variable {v.get('name')}")

# Write the dashboard queries as recording rules so promtool can parse them (Grafana macros replaced).
def concrete(e):
    for a, b in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"),
                 ("$job", ".*"), ("$instance", ".*")):
        e = e.replace(a, b)
    if "$" in e:
        errors.append(f"unknown template variable in {e!r}")
    return e
lines = ["groups:", "  - name: dashboard-exprs", "    rules:"]
for i, (_, e) in enumerate(exprs):
    lines += [f"      - record: dashboard:expr_{i}", "        expr: " + json.dumps(concrete(e))]
Path(exprs_out).write_text("\n".join(lines) + "\n")

# --- metric names in the rules files (plain text scan: PyYAML is not assumed to be installed)
for f in rule_files:
    check_names(Path(f).read_text(), f)

if errors:
    print("\n".join("error: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"dashboard OK: {len([p for p in panels if p.get('type') != 'row'])} panels, {len(exprs)} queries, "
      f"all voice_* names known")
PY
echo "== PromQL syntax of the dashboard queries (via promtool check rules)"
promtool check rules "$tmp/dashboard_exprs.rules.yml"
echo "All deploy checks passed."
