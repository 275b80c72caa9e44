#!/usr/bin/env bash
# Checks everything under deploy/: Prometheus rules (syntax + unit tests), the Grafana dashboard
# (structure, PromQL syntax, and that every voice_* metric it uses is one the sidecar exports), and the
# Kubernetes manifests (every Kustomize tree rendered, validated with kubernetes-validate --strict
# against the oldest and newest supported Kubernetes versions, plus the deployment rules of
# deploy/README.md).
# Usage: scripts/check-deploy.sh            (from anywhere; installs promtool via apt if missing, and
#        kustomize (Go module proxy) and kubernetes-validate (PyPI) into a cache dir if missing)
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
    "voice_host_stalled_sessions": "gauge",
    "voice_pending_starts": "gauge",
    "voice_admission_refused_total": "counter",
    "voice_tool_channels": "gauge",
    "voice_tool_channel_evictions_total": "counter",
    "voice_limits_hit_total": "counter",
    "voice_log_suppressed_total": "counter",
    "voice_label_values_overflowed_total": "counter",
    "voice_upstream_rollovers_total": "counter",
    "voice_upstream_rollover_gap_seconds": "histogram",
    "voice_record_errors_total": "counter",
    "voice_translation_audio_seconds_total": "counter",
    "voice_translation_latency_seconds": "histogram",
    "voice_shadow_segment_latency_seconds": "histogram",
    "voice_shadow_errors_total": "counter",
    "voice_shadow_audio_seconds_total": "counter",
    "voice_tasks_active": "gauge",
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
# ---------------------------------------------------------------- Kubernetes manifests
# Tools, pinned, installed once into a cache dir (a fresh machine: ~2 min, nearly all of it building
# kustomize; later runs reuse it):
#   kustomize           from the Go module proxy (go install), needs `go` on PATH
#   kubernetes-validate from PyPI into a venv; it bundles the Kubernetes JSON schemas (1.25 .. 1.37)
KUSTOMIZE_VERSION=v5.8.1
KUBERNETES_VALIDATE_VERSION=1.37.0
K8S_OLDEST=1.29.0            # oldest supported: native sidecars (SidecarContainers) on by default
K8S_DIR=deploy/kubernetes
TOOLS="${VOICE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/voice-sidecar/deploy-tools}"
mkdir -p "$TOOLS"

KUSTOMIZE="$TOOLS/kustomize-$KUSTOMIZE_VERSION"
if [ ! -x "$KUSTOMIZE" ]; then
  command -v go >/dev/null 2>&1 || { echo "error: go not on PATH: needed to install kustomize" >&2; exit 1; }
  echo "installing kustomize $KUSTOMIZE_VERSION (go install, from the Go module proxy)"
  GOBIN="$tmp/gobin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  mv "$tmp/gobin/kustomize" "$KUSTOMIZE"
fi
"$KUSTOMIZE" version | grep -qx "$KUSTOMIZE_VERSION" || { echo "error: $KUSTOMIZE is not $KUSTOMIZE_VERSION" >&2; exit 1; }

KV_VENV="$TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -x "$KV_VENV/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip, into $KV_VENV)"
  rm -rf "$KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
KV="$KV_VENV/bin/kubernetes-validate"
K8S_NEWEST="$("$KV_VENV/bin/python" - <<'PY'
import re
from importlib import resources
d = resources.files("kubernetes_validate") / "kubernetes-json-schema"
vs = {tuple(map(int, m.groups())) for e in d.iterdir() if (m := re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", e.name))}
print(".".join(map(str, max(vs))))
PY
)"
echo "kustomize $KUSTOMIZE_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION (Kubernetes $K8S_OLDEST and $K8S_NEWEST)"

# Render every Kustomize tree: the base, each overlay, the prometheus-adapter snippet.
mkdir -p "$tmp/k8s"
targets=("$K8S_DIR/base" "$K8S_DIR"/overlays/*/ "$K8S_DIR/prometheus-adapter")
rendered=()
for t in "${targets[@]}"; do
  t="${t%/}"
  out="$tmp/k8s/$(echo "${t#"$K8S_DIR"/}" | tr / -).yaml"
  echo "== kustomize build $t"
  "$KUSTOMIZE" build "$t" >"$out"
  rendered+=("$out")
done

# Schema validation. kubernetes-validate only warns about kinds it has no schema for; only the CRDs
# listed here may be skipped (their fields are checked below), anything else (a mistyped apiVersion
# or kind) fails.
CRD_KINDS_RE='kind (PodMonitor) with api version monitoring\.coreos\.com/v1 '
for v in "$K8S_OLDEST" "$K8S_NEWEST"; do
  echo "== kubernetes-validate --strict -k $v (${#rendered[@]} rendered trees)"
  if ! "$KV" --strict --quiet -k "$v" "${rendered[@]}" >"$tmp/kv.out" 2>&1; then
    cat "$tmp/kv.out" >&2; echo "error: kubernetes-validate failed for Kubernetes $v" >&2; exit 1
  fi
  if grep -Ev "Couldn't find schema for $CRD_KINDS_RE" "$tmp/kv.out" | grep -q .; then
    cat "$tmp/kv.out" >&2; echo "error: unexpected kubernetes-validate output for Kubernetes $v" >&2; exit 1
  fi
done

# What deploy/README.md promises about the rendered manifests (native sidecar, probes, drain budget,
# key from a Secret file, hardening, sizing, PDB, HPA, adapter rule).
echo "== manifest rules (native sidecar, probes, grace, security, sizing, PDB, HPA)"
"$KV_VENV/bin/python" - "${rendered[@]}" <<'PY'
import re, sys
from pathlib import Path
import yaml

errors = []
def err(where, msg): errors.append(f"{where}: {msg}")

MIB = 1024 * 1024
KIB_PER_SESSION = 250          # BENCHMARKS.md: worst per-session RSS measured (Opus 249, µ-law 86-107)
BASE_RSS_MIB = 16              # BENCHMARKS.md: 8.5 MiB idle, rounded up with margin
SIDECAR_HARD_STOP_S = 2        # services/sidecar: exits 2 s after the grace period at the latest

def qty_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(q))
    if not m: raise ValueError(q)
    return int(m[1]) * {None: 1, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}[m[2]]

def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}

def prestop_sleep(c):
    ps = (c.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in ps: return int(ps["sleep"]["seconds"])
    cmd = (ps.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0].endswith("sleep"): return int(cmd[1])
    return None

for f in sys.argv[1:]:
    tree = Path(f).stem
    docs = [d for d in yaml.safe_load_all(Path(f).read_text()) if d]
    by_kind = {}
    for d in docs: by_kind.setdefault(d["kind"], []).append(d)
    for dep in by_kind.get("Deployment", []):
        w = f"{tree} Deployment/{dep['metadata']['name']}"
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        sidecars = [c for c in pod.get("initContainers", []) if c["name"] == "voice-sidecar"]
        if not sidecars or any(c["name"] == "voice-sidecar" for c in pod.get("containers", [])):
            err(w, "voice-sidecar must be an initContainers entry (native sidecar), not under containers"); continue
        sc = sidecars[0]
        if sc.get("restartPolicy") != "Always": err(w, "voice-sidecar needs restartPolicy: Always")
        env = env_of(sc)
        for probe, service in (("startupProbe", None), ("readinessProbe", "voice.v1.VoiceSidecar"), ("livenessProbe", None)):
            p = sc.get(probe) or {}
            g = p.get("grpc")
            if not g or g.get("port") != 50051: err(w, f"{probe} must be a grpc probe on port 50051"); continue
            if g.get("service") != service: err(w, f"{probe} must ask for service {service!r}, not {g.get('service')!r}")
        if env.get("VOICE_SIDECAR_LISTEN", "127.0.0.1:50051").startswith("127."):
            err(w, "grpc probes dial the pod IP: VOICE_SIDECAR_LISTEN must not be 127.0.0.1")
        # Drain budget: everything that can run in sequence fits in the grace period.
        grace = int(env.get("VOICE_SIDECAR_SHUTDOWN_GRACE_SECS") or 20)
        sc_sleep = prestop_sleep(sc)
        if sc_sleep is None: err(w, "voice-sidecar needs a preStop sleep")
        apps = pod.get("containers", [])
        app_sleep = max((prestop_sleep(c) or 0 for c in apps), default=0)
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        need = app_sleep + (sc_sleep or 0) + grace + SIDECAR_HARD_STOP_S
        if tgps <= need:
            err(w, f"terminationGracePeriodSeconds {tgps} must exceed preStops + shutdown grace + hard stop = {need}")
        # API key from a mounted Secret file.
        args = sc.get("args", [])
        kf = [a.split("=", 1)[1] for a in args if a.startswith("--api-key-file=")] or \
             ([env["VOICE_SIDECAR_API_KEY_FILE"]] if env.get("VOICE_SIDECAR_API_KEY_FILE") else [])
        if not kf: err(w, "voice-sidecar must read its key with --api-key-file")
        elif "OPENAI_API_KEY" in env: err(w, "OPENAI_API_KEY must not be set: the key comes from a file")
        else:
            mounts = {m["name"]: m for m in sc.get("volumeMounts", [])}
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            ok = any(kf[0].startswith(m["mountPath"].rstrip("/") + "/") and m.get("readOnly")
                     and "secret" in vols.get(n, {}) for n, m in mounts.items())
            if not ok: err(w, f"{kf[0]} must be in a read-only mounted Secret volume")
        # Hardening, every container.
        psc = pod.get("securityContext", {})
        for c in apps + pod.get("initContainers", []):
            csc = {**psc, **c.get("securityContext", {})}
            cw = f"{w} container {c['name']}"
            if csc.get("runAsNonRoot") is not True: err(cw, "runAsNonRoot must be true")
            if not isinstance(csc.get("runAsUser"), int) or csc["runAsUser"] == 0: err(cw, "needs a non-zero numeric runAsUser")
            if csc.get("readOnlyRootFilesystem") is not True: err(cw, "readOnlyRootFilesystem must be true")
            if csc.get("allowPrivilegeEscalation") is not False: err(cw, "allowPrivilegeEscalation must be false")
            if "ALL" not in (csc.get("capabilities") or {}).get("drop", []): err(cw, "must drop ALL capabilities")
            res = c.get("resources", {})
            if "cpu" in res.get("limits", {}): err(cw, "no CPU limit (CFS throttling hurts audio latency)")
            if "cpu" not in res.get("requests", {}) or "memory" not in res.get("requests", {}):
                err(cw, "needs cpu and memory requests")
            if "memory" not in res.get("limits", {}): err(cw, "needs a memory limit")
        # Memory limit sized from BENCHMARKS.md for the session cap.
        max_sessions = int(env.get("VOICE_SIDECAR_MAX_SESSIONS") or 2000)
        lim = sc.get("resources", {}).get("limits", {}).get("memory")
        if lim:
            need_b = BASE_RSS_MIB * MIB + max_sessions * KIB_PER_SESSION * 1024
            if qty_bytes(lim) < need_b:
                err(w, f"memory limit {lim} < {need_b / MIB:.0f} MiB for {max_sessions} sessions "
                       f"({BASE_RSS_MIB} MiB + {KIB_PER_SESSION} KiB/session)")
        # A PDB covers these pods; the PodMonitor selects them on a declared port.
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", [])
                if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
        if not pdbs: err(w, "no PodDisruptionBudget selects its pods")
        ports = {p.get("name") for c in apps + pod.get("initContainers", []) for p in c.get("ports", [])}
        for pm in by_kind.get("PodMonitor", []):
            sel = pm["spec"]["selector"].get("matchLabels", {})
            if not sel or not all(labels.get(k) == v for k, v in sel.items()):
                err(f"{tree} PodMonitor/{pm['metadata']['name']}", "selector does not match the pods")
            for ep in pm["spec"].get("podMetricsEndpoints", []):
                if ep.get("port") not in ports or ep.get("path", "/metrics") != "/metrics":
                    err(f"{tree} PodMonitor/{pm['metadata']['name']}", f"endpoint {ep} is not the sidecar's metrics port")
        for hpa in by_kind.get("HorizontalPodAutoscaler", []):
            hw = f"{tree} HorizontalPodAutoscaler/{hpa['metadata']['name']}"
            ref = hpa["spec"]["scaleTargetRef"]
            if ref.get("kind") != "Deployment" or ref.get("name") != dep["metadata"]["name"]: continue
            if "replicas" in dep["spec"]: err(w, "spec.replicas must be unset when an HPA scales it")
            ms = [m for m in hpa["spec"].get("metrics", [])
                  if m.get("type") == "Pods" and m["pods"]["metric"]["name"] == "voice_sessions_active"]
            if not ms: err(hw, "needs a Pods metric voice_sessions_active"); continue
            t = ms[0]["pods"]["target"]
            if t.get("type") != "AverageValue" or not (0 < int(t["averageValue"]) < max_sessions):
                err(hw, f"target must be an AverageValue below --max-sessions ({max_sessions})")
    for cm in by_kind.get("ConfigMap", []):
        if cm["metadata"]["name"] != "prometheus-adapter": continue
        w = f"{tree} ConfigMap/prometheus-adapter"
        rules = yaml.safe_load(cm["data"]["config.yaml"]).get("rules", [])
        r = [r for r in rules if "voice_sessions_active" in r.get("seriesQuery", "")]
        if not r: err(w, "no rule for voice_sessions_active"); continue
        r = r[0]
        if r.get("name", {}).get("as") != "voice_sessions_active": err(w, "the rule must serve the name voice_sessions_active")
        if set(r.get("resources", {}).get("overrides", {})) != {"namespace", "pod"}: err(w, "map namespace and pod labels")
        for k in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            if k not in r.get("metricsQuery", ""): err(w, f"metricsQuery lacks {k}")

if errors:
    print("\n".join("error: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"manifest rules OK: {len(sys.argv) - 1} rendered trees")
PY
echo "All deploy checks passed."
