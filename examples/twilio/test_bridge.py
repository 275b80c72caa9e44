"""Plays a phone call through the Twilio bridge and the real sidecar (on its simulator).

`FakeTwilio` is a Media Streams client shaped as Twilio documents it: `connected`, `start` (streamSid,
callSid, mediaFormat audio/x-mulaw 8000 Hz mono), `media` every 20 ms (base64 µ-law, track/chunk/
timestamp), `stop`; and it plays what it receives as Twilio does: `media` payloads in real time, a
`mark` echoed once the audio queued before it has played, `clear` dropping the queue and echoing the
pending marks at once; the caller hears audio 400 ms after Twilio gets it. The caller asks a question, talks over the (long) answer two seconds into it,
then hangs up after hearing the start of the second answer.

Sidecar binary: $VOICE_SIDECAR_BIN (default target/debug/voice-sidecar, relative to the repo root).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import math
import os
import socket
import subprocess
import sys
import time
import wave

import pytest
import websockets
from websockets.asyncio.server import serve

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import mulaw  # noqa: E402
from bridge import TwilioBridge  # noqa: E402

SAMPLE = os.path.join(ROOT, "services", "demo", "assets", "sample-16k.wav")
CHUNK = 160  # 20 ms of 8 kHz µ-law
SILENCE = bytes([0xFF]) * CHUNK
BARGE_IN_AFTER_MS = 2000
# The caller hears audio this long after Twilio receives it (network and jitter buffer): only marks
# tell the sidecar about it, so it separates "cut where the caller was" from "cut by the wall clock".
PLAYOUT_DELAY_S = 0.4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sidecar(tmp_path):
    b = os.environ.get("VOICE_SIDECAR_BIN", "target/debug/voice-sidecar")
    binary = b if os.path.isabs(b) else os.path.join(ROOT, b)
    assert os.access(binary, os.X_OK), f"no sidecar binary at {binary} (run_tests.sh builds it)"
    port = free_port()
    logf = tmp_path / "sidecar.log"
    with open(logf, "w") as log:
        proc = subprocess.Popen(
            [binary, "--backend", "sim", "--sim-config", os.path.join(HERE, "sim-call.toml"),
             "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off", "--log", "warn"],
            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, f"the sidecar exited: {logf.read_text()}"
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


def caller_audio() -> tuple[bytes, bytes]:
    """(the question, the barge-in) as 8 kHz µ-law, from the demo's speech sample."""
    with wave.open(SAMPLE) as w:
        pcm = w.readframes(w.getnframes())
    ulaw = mulaw.encode(mulaw.downsample_16k_to_8k(pcm))
    return ulaw, ulaw[int(0.9 * 8000):int(2.9 * 8000)]


class FakeTwilio:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.stream_sid, self.call_sid = "MZ" + "0" * 31 + "1", "CA" + "0" * 31 + "2"
        self.account_sid = "AC" + "0" * 31 + "3"
        self.seq = 0
        self.received: list[dict] = []
        self.queue: collections.deque = collections.deque()  # ("audio", bytes, t) | ("mark", name, t)
        self.played_ms = 0.0            # audio played to the "caller", in total
        self.played_samples: list[int] = []
        self.marks_echoed = 0
        self.marks_echoed_by_clear = 0
        self.clear_at_played_ms: list[float] = []
        self.media_after_clear = 0
        self.speak = asyncio.Queue()    # µ-law audio the caller says next (then silence)
        self.t0 = 0.0

    async def send(self, event: str, **body) -> None:
        self.seq += 1
        await self.ws.send(json.dumps({"event": event, "sequenceNumber": str(self.seq), **body,
                                       "streamSid": self.stream_sid}))

    async def begin(self) -> None:
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.send("start", start={
            "accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}})
        self.t0 = asyncio.get_running_loop().time()

    async def microphone(self) -> None:
        loop, chunk, pending = asyncio.get_running_loop(), 0, b""
        while True:
            if not pending and not self.speak.empty():
                pending = self.speak.get_nowait()
            data, pending = (pending[:CHUNK], pending[CHUNK:]) if pending else (SILENCE, b"")
            data = data.ljust(CHUNK, b"\xff")
            chunk += 1
            await self.send("media", media={"track": "inbound", "chunk": str(chunk),
                                            "timestamp": str(chunk * 20 - 20),
                                            "payload": base64.b64encode(data).decode()})
            await asyncio.sleep(max(0.0, self.t0 + chunk * 0.02 - loop.time()))

    async def echo_mark(self, name: str) -> None:
        self.marks_echoed += 1
        await self.send("mark", mark={"name": name})

    async def playout(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.queue and self.queue[0][0] == "mark":
                await self.echo_mark(self.queue.popleft()[1])
            if self.queue and loop.time() >= self.queue[0][2] + PLAYOUT_DELAY_S:
                data = self.queue.popleft()[1]
                await asyncio.sleep(len(data) / 8000)
                self.played_ms += len(data) / 8
                self.played_samples.extend(mulaw.decode(data))
            else:
                await asyncio.sleep(0.002)

    async def reader(self) -> None:
        loop = asyncio.get_running_loop()
        async for raw in self.ws:
            msg = json.loads(raw)
            self.received.append(msg)
            ev = msg["event"]
            if ev == "media":
                self.queue.append(("audio", base64.b64decode(msg["media"]["payload"]), loop.time()))
                if self.clear_at_played_ms:
                    self.media_after_clear += 1
            elif ev == "mark":
                self.queue.append(("mark", msg["mark"]["name"], loop.time()))
            elif ev == "clear":
                # Twilio: buffered audio is dropped and every pending mark is sent back right away.
                self.clear_at_played_ms.append(self.played_ms)
                marks = [x[1] for x in self.queue if x[0] == "mark"]
                self.queue.clear()
                for name in marks:
                    self.marks_echoed_by_clear += 1
                    await self.echo_mark(name)


async def until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def play_call(sidecar: str) -> tuple[FakeTwilio, TwilioBridge]:
    question, barge_in = caller_audio()
    bridge = TwilioBridge(sidecar)
    async with serve(bridge.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}/media") as ws:
            tw = FakeTwilio(ws)
            await tw.begin()
            tw.speak.put_nowait(question)
            tasks = [asyncio.create_task(c) for c in (tw.microphone(), tw.playout(), tw.reader())]
            try:
                await until(lambda: tw.played_ms >= BARGE_IN_AFTER_MS, 30, "2 s of the answer played")
                tw.barge_in_at_played_ms = tw.played_ms
                tw.speak.put_nowait(barge_in)
                await until(lambda: tw.clear_at_played_ms, 10, "a clear after the barge-in")
                played_at_clear = tw.played_ms
                await until(lambda: tw.played_ms >= played_at_clear + 1000, 20, "the second answer playing")
                # Hang up: nothing follows Twilio's `stop` (no more media, no more mark echoes).
                for t in tasks[:2]:
                    t.cancel()
                await asyncio.gather(*tasks[:2], return_exceptions=True)
                await tw.send("stop", stop={"accountSid": tw.account_sid, "callSid": tw.call_sid})
                await asyncio.wait_for(tasks[2], 10)  # the bridge closes the socket once the session ends
            finally:
                for t in tasks:
                    t.cancel()
        await until(lambda: bridge.calls and bridge.calls[0].ended_reason, 5, "the bridge to log the end")
    await bridge.close()
    return tw, bridge


def test_twilio_call_with_barge_in(sidecar):
    tw, bridge = asyncio.run(play_call(sidecar))
    call = bridge.calls[0]
    print(json.dumps({k: v for k, v in vars(call).items()}, default=str, indent=1))
    print(f"client: played {tw.played_ms:.0f} ms, barge-in at {tw.barge_in_at_played_ms:.0f} ms, "
          f"clear at {tw.clear_at_played_ms}, marks echoed {tw.marks_echoed} ({tw.marks_echoed_by_clear} by clear)")

    # Outbound messages are shaped as Twilio expects them.
    kinds = collections.Counter(m["event"] for m in tw.received)
    for m in tw.received:
        assert m["streamSid"] == tw.stream_sid
        if m["event"] == "media":
            assert set(m) == {"event", "streamSid", "media"} and set(m["media"]) == {"payload"}
        elif m["event"] == "mark":
            assert set(m) == {"event", "streamSid", "mark"} and set(m["mark"]) == {"name"}
        else:
            assert m["event"] == "clear" and set(m) == {"event", "streamSid"}, m

    # Audio came back as media events: 20 ms µ-law payloads of audible speech, for both answers.
    assert kinds["media"] > 100, kinds
    payloads = [base64.b64decode(m["media"]["payload"]) for m in tw.received if m["event"] == "media"]
    assert all(len(p) == CHUNK for p in payloads), {len(p) for p in payloads}
    rms = math.sqrt(sum(s * s for s in tw.played_samples) / len(tw.played_samples))
    assert rms > 300, rms
    assert tw.media_after_clear > 25, "no second answer after the barge-in"

    # The barge-in produced exactly one clear, from one Interrupted.
    assert kinds["clear"] == 1 and call.clears == 1 and len(call.interruptions) == 1, kinds

    # Marks round-trip: one per media message, echoed by the client, turned into PlaybackMarks.
    assert kinds["mark"] == kinds["media"] == call.marks_sent == call.media_out
    assert call.marks_acked > 50 and call.playback_marks == call.marks_acked
    assert tw.marks_echoed_by_clear > 0 and call.marks_cleared == tw.marks_echoed_by_clear
    assert call.marks_acked + call.marks_cleared == tw.marks_echoed

    # ... so the sidecar cut the answer where the caller was, not where delivery was: played_ms lies
    # between what the caller had heard when they started talking and when the clear arrived, far short
    # of the audio the sidecar had already sent for that item (the simulator streams 4x real time).
    item_id, played_ms = call.interruptions[0]
    assert tw.barge_in_at_played_ms - 100 <= played_ms <= tw.clear_at_played_ms[0] + 100, (
        played_ms, tw.barge_in_at_played_ms, tw.clear_at_played_ms)
    assert call.delivered_ms[item_id] > played_ms + 4000, (call.delivered_ms, played_ms)

    # Both user turns were heard and answered; the call ended with the caller's stop.
    users = [t for r, t in call.transcripts if r == "user"]
    assert users == ["Hi, I would like to book a table for two tonight.", "Sorry, make that three people."]
    assert any("table for three" in t for r, t in call.transcripts if r == "assistant"), call.transcripts
    assert call.media_in > 200 and call.errors == []
    assert call.ended_reason == "client_closed"


def test_mulaw_codec():
    vectors = {0: 0xFF, -1: 0x7E, 100: 0xF2, -100: 0x72, 1000: 0xCE, -1000: 0x4E, 8000: 0xA0,
               -8000: 0x20, 32767: 0x80, -32768: 0x00}
    assert {s: mulaw.encode_sample(s) for s in vectors} == vectors
    for s in range(-32768, 32768, 97):  # round trip within the segment's quantisation step
        assert abs(mulaw.decode_sample(mulaw.encode_sample(s)) - s) <= max(16, abs(s) // 16)
