"""End-to-end test of voice_host.py against the real sidecar on its embedded simulator.

The sidecar binary comes from $VOICE_SIDECAR_BIN (default target/debug/voice-sidecar, relative to the
repository root); the simulator plays the demo's script (services/demo/sim-demo.toml): one user turn, a
preamble with two parallel tool calls (calendar_lookup, crm_update), then the answer.
"""

import json
import os
import socket
import subprocess
import sys
import time
import wave

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import voice_host  # noqa: E402
from voice_host import pb  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_bin() -> str:
    b = os.environ.get("VOICE_SIDECAR_BIN", "target/debug/voice-sidecar")
    return b if os.path.isabs(b) else os.path.join(ROOT, b)


@pytest.fixture
def sidecar(tmp_path):
    binary = sidecar_bin()
    assert os.access(binary, os.X_OK), f"no sidecar binary at {binary} (run.sh builds it)"
    port = free_port()
    log = open(tmp_path / "sidecar.log", "w")
    proc = subprocess.Popen(
        [binary, "--backend", "sim", "--sim-config", os.path.join(ROOT, "services/demo/sim-demo.toml"),
         "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off", "--log", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, f"the sidecar exited: {(tmp_path / 'sidecar.log').read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the sidecar did not listen within 15 s"
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_call_through_the_sidecar(sidecar, tmp_path):
    out, summary = tmp_path / "reply.wav", tmp_path / "summary.json"
    r = subprocess.run(
        [sys.executable, os.path.join(HERE, "voice_host.py"), "--sidecar", sidecar,
         "--tools-listen", f"127.0.0.1:{free_port()}", "--out", str(out), "--summary-json", str(summary),
         "--timeout", "45"],
        capture_output=True, text=True, timeout=60)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    s = json.loads(summary.read_text())

    assert s["user_transcripts"] == ["Hi! Can you check my calendar for tomorrow, and note in the CRM that I called?"]
    phases = [t["phase"] for t in s["assistant_transcripts"]]
    assert phases == ["preamble", "answer"], s["assistant_transcripts"]
    assert "calendar" in s["assistant_transcripts"][0]["text"]
    assert "dentist" in s["assistant_transcripts"][1]["text"]

    # Both tools were invoked through ToolHost.Invoke (by the sidecar), with the declared arguments.
    inv = {i["name"]: i for i in s["tool_invocations"]}
    assert sorted(inv) == ["calendar_lookup", "crm_update"], s["tool_invocations"]
    assert json.loads(inv["calendar_lookup"]["arguments"]) == {"date": "tomorrow"}
    assert json.loads(inv["crm_update"]["arguments"])["contact"] == "caller"
    assert all(i["session_id"] == s["session_id"] for i in s["tool_invocations"])
    assert all(i["deadline_ms"] == 5000 for i in s["tool_invocations"])
    assert sorted((t["name"], t["status"]) for t in s["tool_results"]) == [
        ("calendar_lookup", "TOOL_STATUS_OK"), ("crm_update", "TOOL_STATUS_OK")]

    assert s["ended_reason"] == "client_end"
    assert s["summary"]["tool_calls"] == 2 and s["summary"]["turns"] == 1
    assert s["errors"] == [] and s["interruptions"] == []

    # The reply was saved, and it is several seconds of speech at the input's rate.
    assert s["reply_seconds"] > 5, s["reply_seconds"]
    with wave.open(str(out)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        assert abs(w.getnframes() / 16000 - s["reply_seconds"]) < 0.05


def test_player_flushes_what_was_not_heard():
    p = voice_host.Player(16000)
    one_s = bytes(32000)
    p.feed(pb.AudioFrame(item_id="a", data=one_s))
    p.feed(pb.AudioFrame(item_id="a", data=one_s))
    p.feed(pb.AudioFrame(item_id="b", data=one_s))
    dropped = p.flush(pb.Interrupted(item_id="a", played_ms=500, deleted_item_ids=["b"]))
    assert dropped == 2500
    assert p.seconds() == 0.5
