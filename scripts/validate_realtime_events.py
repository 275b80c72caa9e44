"""Validates Realtime API events (one JSON object per stdin line) against the `openai` package's
typed models (openai==3.57.0, the protocol's ground truth).

    python3 validate_realtime_events.py server|client ga|beta|translation < events.jsonl

Dialects: `ga` (openai.types.realtime; covers conversation and transcription sessions, whose
session.update/created/updated carry the RealtimeTranscriptionSessionCreateRequest variant), `beta`
(openai.types.beta.realtime) and `translation` (RealtimeTranslationServerEvent and
RealtimeTranslationClientEvent, the /v1/realtime/translations WebSocket).

Exits non-zero, listing each invalid event, if any fails. Used by the simulator's tests (server
events it emits, client events it accepts) and by the end-to-end tests (client events the sidecar
sent)."""
import json
import sys

from pydantic import TypeAdapter

kind, dialect = sys.argv[1], sys.argv[2]
if dialect == "translation":
    from openai.types import realtime as models

    model = (
        models.RealtimeTranslationServerEvent
        if kind == "server"
        else models.RealtimeTranslationClientEvent
    )
else:
    if dialect == "ga":
        from openai.types import realtime as models
    elif dialect == "beta":
        from openai.types.beta import realtime as models
    else:
        sys.exit(f"unknown dialect {dialect!r} (expected ga, beta or translation)")
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
