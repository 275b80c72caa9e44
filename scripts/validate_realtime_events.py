"""Validates Realtime API events (one JSON object per stdin line) against the `openai` package's
typed models (openai==3.57.0, the protocol's ground truth).

    python3 validate_realtime_events.py server|client ga|beta < events.jsonl

Exits non-zero, listing each invalid event, if any fails. Used by the simulator's tests (server
events it emits, client events it accepts) and by the end-to-end tests (client events the sidecar
sent)."""
import json
import sys

from pydantic import TypeAdapter

kind, dialect = sys.argv[1], sys.argv[2]
if dialect == "ga":
    from openai.types import realtime as models
else:
    from openai.types.beta import realtime as models
model = models.RealtimeServerEvent if kind == "server" else models.RealtimeClientEvent
ta = TypeAdapter(model)
bad = n = 0
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    n += 1
    ev = json.loads(line)
    try:
        ta.validate_python(ev)
    except Exception as e:  # noqa: BLE001 - any validation failure is reported
        bad += 1
        print("INVALID", ev.get("type"), str(e)[:600], json.dumps(ev)[:400], file=sys.stderr)
print(f"validated {n} {kind} events, {bad} invalid")
sys.exit(1 if bad else 0)
