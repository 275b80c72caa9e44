"""A small voice-sidecar host in Python (grpcio asyncio), meant to be copied.

It does what a backend does with the sidecar:

* runs a ``ToolHost`` gRPC server with two tools (``calendar_lookup`` and ``crm_update``, with
  artificial latency so the parallel calls visibly overlap);
* opens one ``Converse`` stream, sends ``SessionStart`` (formats, instructions, tools, routing);
* streams a WAV file in real time as 20 ms PCM16 frames, then silence, like an open phone line;
* "plays" the reply into a buffer per assistant item, flushes it on ``Interrupted`` (everything after
  ``played_ms`` of the cut item, and the items the caller never heard), and saves it as a WAV;
* hangs up (``Control.end``) once the model has answered with the tool results.

Stubs come from ``gen.sh`` (grpcio-tools) into ``voice_pb/``. Run ``python voice_host.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import wave
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator, Callable, Optional

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("VOICE_PB_DIR", os.path.join(_HERE, "voice_pb")))
try:
    from voice.v1 import sidecar_pb2 as pb  # noqa: E402
    from voice.v1 import sidecar_pb2_grpc as pb_grpc  # noqa: E402
except ImportError as e:  # pragma: no cover - a setup error, explained
    raise SystemExit(f"voice_pb stubs missing ({e}): run examples/python/gen.sh first") from e

FRAME_MS = 20
DEFAULT_WAV = os.path.join(_HERE, "..", "..", "services", "demo", "assets", "sample-16k.wav")

# ---------------------------------------------------------------------------------------------------
# Tools: declared in SessionStart, executed when the sidecar calls ToolHost.Invoke
# ---------------------------------------------------------------------------------------------------

TOOLS = [
    pb.ToolDefinition(
        name="calendar_lookup",
        description="Look up the caller's calendar events for a date.",
        parameters_json_schema=json.dumps(
            {"type": "object", "properties": {"date": {"type": "string"}}, "required": ["date"]}
        ),
        timeout_ms=5000,
    ),
    pb.ToolDefinition(
        name="crm_update",
        description="Add a note to the caller's CRM record.",
        parameters_json_schema=json.dumps(
            {
                "type": "object",
                "properties": {"contact": {"type": "string"}, "note": {"type": "string"}},
                "required": ["contact", "note"],
            }
        ),
        timeout_ms=5000,
    ),
]


class DemoTools(pb_grpc.ToolHostServicer):
    """The host's tools. Parallel calls of one response arrive as parallel Invoke RPCs."""

    def __init__(self) -> None:
        self.invocations: list[dict] = []  # what the sidecar asked for, in arrival order

    async def Invoke(self, request: pb.ToolInvocation, context: grpc.aio.ServicerContext) -> pb.ToolOutput:
        self.invocations.append(
            {"name": request.name, "call_id": request.call_id, "arguments": request.arguments_json,
             "session_id": request.session_id, "deadline_ms": request.deadline_ms}
        )
        args = json.loads(request.arguments_json or "{}")
        if request.name == "calendar_lookup":
            await asyncio.sleep(0.6)
            out = {"date": args.get("date"), "events": [
                {"time": "09:30", "title": "Dentist"},
                {"time": "14:00", "title": "Project review with Dana"}]}
        elif request.name == "crm_update":
            await asyncio.sleep(0.4)
            out = {"status": "saved", "contact": args.get("contact"), "note_id": "N-1042"}
        else:
            return pb.ToolOutput(error=f"no such tool {request.name}")
        return pb.ToolOutput(output_json=json.dumps(out))


async def start_tool_host(listen: str, tools: pb_grpc.ToolHostServicer) -> tuple[grpc.aio.Server, int]:
    """Starts the ToolHost server; returns it and the bound port (``listen`` may use port 0)."""
    server = grpc.aio.server()
    pb_grpc.add_ToolHostServicer_to_server(tools, server)
    port = server.add_insecure_port(listen)
    await server.start()
    return server, port


# ---------------------------------------------------------------------------------------------------
# Audio in and out
# ---------------------------------------------------------------------------------------------------

def read_wav(path: str) -> tuple[bytes, int]:
    """Mono 16-bit PCM WAV → (little-endian PCM16 bytes, sample rate)."""
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path} must be mono 16-bit PCM")
        return w.readframes(w.getnframes()), w.getframerate()


def write_wav(path: str, pcm: bytes, rate: int) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


async def stream_microphone(pcm: bytes, rate: int, send: Callable[[pb.ClientMessage], None]) -> None:
    """The "microphone": the sample in real time in 20 ms frames, then silence until cancelled."""
    frame_bytes = rate * FRAME_MS // 1000 * 2
    silence = bytes(frame_bytes)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    seq = 0
    while True:
        seq += 1
        off = (seq - 1) * frame_bytes
        chunk = pcm[off:off + frame_bytes] if off < len(pcm) else silence
        send(pb.ClientMessage(audio=pb.AudioFrame(data=chunk, seq=seq)))
        # Pace on the absolute schedule so the stream does not drift behind real time.
        await asyncio.sleep(max(0.0, t0 + seq * FRAME_MS / 1000 - loop.time()))


class Player:
    """Where the reply goes. A real host writes each frame to a speaker or a phone line; this one
    keeps the audio per assistant item so that ``Interrupted`` can flush exactly what the caller
    did not hear."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.items: dict[str, bytearray] = {}  # item_id → PCM16, in arrival order

    def feed(self, frame: pb.AudioFrame) -> None:
        self.items.setdefault(frame.item_id, bytearray()).extend(frame.data)

    def flush(self, i: pb.Interrupted) -> int:
        """Drops everything after ``played_ms`` of the cut item, and the deleted items. Returns ms dropped."""
        dropped = 0
        keep = self.rate * i.played_ms // 1000 * 2
        buf = self.items.get(i.item_id)
        if buf is not None and len(buf) > keep:
            dropped += len(buf) - keep
            del buf[keep:]
        for item_id in i.deleted_item_ids:
            dropped += len(self.items.pop(item_id, b""))
        return dropped * 1000 // (2 * self.rate)

    def pcm(self) -> bytes:
        return b"".join(self.items.values())

    def seconds(self) -> float:
        return sum(len(b) for b in self.items.values()) / (2 * self.rate)


# ---------------------------------------------------------------------------------------------------
# One call
# ---------------------------------------------------------------------------------------------------

@dataclass
class CallResult:
    session_id: str = ""
    model: str = ""
    user_transcripts: list[str] = field(default_factory=list)
    assistant_transcripts: list[dict] = field(default_factory=list)  # {"phase", "text"}
    tool_calls: list[dict] = field(default_factory=list)  # ToolCallStarted: {"name", "arguments"}
    tool_results: list[dict] = field(default_factory=list)  # ToolCallFinished: {"name", "status", "ms"}
    interruptions: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    ended_reason: str = ""
    summary: dict = field(default_factory=dict)
    reply_seconds: float = 0.0


def session_start(rate: int, tool_host: str) -> pb.SessionStart:
    fmt = pb.AudioFormat(codec=pb.CODEC_PCM16, sample_rate_hz=rate, channels=1, frame_ms=FRAME_MS)
    return pb.SessionStart(
        input_format=fmt,
        output_format=fmt,
        instructions="You are a helpful phone assistant for a small business.",
        tools=TOOLS,
        # GPT Realtime 2: a reasoning model that calls the two tools in parallel.
        model="gpt-realtime-2",
        reasoning=pb.Reasoning(effort=pb.REASONING_EFFORT_LOW),
        parallel_tool_calls=True,
        tool_routing=pb.ToolRouting(callback_address=f"http://{tool_host}"),
    )


async def converse(sidecar: str, wav: str, tool_host: str, out_wav: Optional[str] = None,
                   timeout_s: float = 60, log: Callable[[str], None] = print) -> CallResult:
    """Runs one conversation: streams ``wav``, returns what came back (and saves the reply)."""
    pcm, rate = read_wav(wav)
    result = CallResult()
    player = Player(rate)
    outbox: asyncio.Queue[Optional[pb.ClientMessage]] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ClientMessage]:
        while (m := await outbox.get()) is not None:
            yield m

    t0 = time.monotonic()

    def say(text: str) -> None:
        log(f"[{int((time.monotonic() - t0) * 1000):>6} ms] {text}")

    async with grpc.aio.insecure_channel(sidecar) as channel:
        # The sidecar may still be starting: wait for the channel rather than failing at once.
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = pb_grpc.VoiceSidecarStub(channel)
        outbox.put_nowait(pb.ClientMessage(start=session_start(rate, tool_host)))
        call = stub.Converse(requests())
        say(f"Converse open; will stream {len(pcm) / 2 / rate:.2f} s of speech at {rate} Hz in {FRAME_MS} ms frames")
        mic: Optional[asyncio.Task] = None
        pending_tools = 0
        tool_round_done = False
        answered_after_tools = False
        hung_up = False

        async def receive() -> None:
            nonlocal mic, pending_tools, tool_round_done, answered_after_tools, hung_up
            async for m in call:
                kind = m.WhichOneof("message")
                if kind == "started":
                    s = m.started
                    result.session_id, result.model = s.session_id, s.model
                    say(f"session {s.session_id} started: model {s.model}, upstream audio {s.upstream_audio_format}")
                    mic = asyncio.create_task(stream_microphone(pcm, rate, outbox.put_nowait))
                elif kind == "speech_started":
                    say("user started speaking")
                elif kind == "speech_stopped":
                    say(f"user stopped speaking (at {m.speech_stopped.audio_end_ms} ms of input audio)")
                elif kind == "transcript" and m.transcript.final:
                    t = m.transcript
                    if t.role == pb.ROLE_USER:
                        result.user_transcripts.append(t.text)
                        say(f"USER: {t.text}")
                    elif t.role == pb.ROLE_ASSISTANT:
                        phase = pb.Phase.Name(t.phase).removeprefix("PHASE_").lower()
                        result.assistant_transcripts.append({"phase": phase, "text": t.text})
                        say(f"ASSISTANT ({phase}): {t.text}")
                        answered_after_tools |= tool_round_done
                elif kind == "audio":
                    player.feed(m.audio)
                elif kind == "tool_call_started":
                    c = m.tool_call_started
                    pending_tools += 1
                    result.tool_calls.append({"name": c.name, "arguments": c.arguments_json})
                    say(f"tool call {c.call_id} {c.name}({c.arguments_json})")
                elif kind == "tool_call_finished":
                    c = m.tool_call_finished
                    pending_tools = max(0, pending_tools - 1)
                    tool_round_done |= pending_tools == 0
                    status = pb.ToolStatus.Name(c.status)
                    result.tool_results.append({"name": c.name, "status": status, "ms": c.duration_ms})
                    say(f"tool done {c.call_id} {c.name} {status} in {c.duration_ms} ms")
                elif kind == "interrupted":
                    i = m.interrupted
                    flushed = player.flush(i)
                    result.interruptions.append({"item_id": i.item_id, "played_ms": i.played_ms,
                                                 "deleted": list(i.deleted_item_ids)})
                    say(f"interrupted at {i.played_ms} ms: flushed {flushed} ms of unplayed audio")
                elif kind == "response_done":
                    r = m.response_done
                    result.responses.append({"status": r.status, "voice_to_voice_ms": r.voice_to_voice_ms})
                    say(f"response {r.response_id} {r.status}")
                    # The demo call's policy: hang up once the model has answered with the tool results.
                    if answered_after_tools and pending_tools == 0 and not hung_up:
                        hung_up = True
                        outbox.put_nowait(pb.ClientMessage(control=pb.Control(end=pb.Empty())))
                elif kind == "error":
                    e = m.error
                    result.errors.append({"code": e.code, "message": e.message, "retryable": e.retryable})
                    say(f"error {e.code}: {e.message}")
                elif kind == "ended":
                    e = m.ended
                    s = e.summary
                    result.ended_reason = e.reason
                    result.summary = {"turns": s.turns, "responses": s.responses, "tool_calls": s.tool_calls,
                                      "interruptions": s.interruptions, "dead_air_ms": s.dead_air_ms,
                                      "mean_voice_to_voice_ms": s.mean_voice_to_voice_ms}
                    say(f"session ended ({e.reason}): {s.turns} turn(s), {s.responses} response(s), "
                        f"{s.tool_calls} tool call(s), mean voice-to-voice {s.mean_voice_to_voice_ms} ms")
                    return

        try:
            await asyncio.wait_for(receive(), timeout=timeout_s)
        finally:
            if mic is not None:
                mic.cancel()
            outbox.put_nowait(None)  # half-close our side
            call.cancel()

    result.reply_seconds = player.seconds()
    if out_wav:
        write_wav(out_wav, player.pcm(), rate)
        say(f"assistant audio: {result.reply_seconds:.2f} s written to {out_wav}")
    return result


async def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Python host for voice-sidecar")
    p.add_argument("--sidecar", default="127.0.0.1:50051", help="the sidecar's gRPC address (host:port)")
    p.add_argument("--wav", default=DEFAULT_WAV, help="speech sample, mono 16-bit WAV")
    p.add_argument("--out", default="reply.wav", help="where to write the assistant's audio")
    p.add_argument("--tools-listen", default="127.0.0.1:50061", help="address for this host's ToolHost server")
    p.add_argument("--timeout", type=float, default=60, help="give up after this many seconds")
    p.add_argument("--summary-json", help="also write what was received (and the tool invocations) as JSON")
    a = p.parse_args(argv)

    tools = DemoTools()
    server, port = await start_tool_host(a.tools_listen, tools)
    host = a.tools_listen.rsplit(":", 1)[0]
    try:
        result = await converse(a.sidecar, a.wav, f"{host}:{port}", a.out, a.timeout)
    finally:
        await server.stop(grace=1)
    if a.summary_json:
        with open(a.summary_json, "w") as f:
            json.dump({**asdict(result), "tool_invocations": tools.invocations}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
