"""Twilio Media Streams ⇄ voice-sidecar bridge.

Twilio opens one WebSocket per call (TwiML ``<Connect><Stream url="wss://…"/></Connect>``) and speaks
the Media Streams protocol: ``connected``, ``start`` (streamSid, callSid, mediaFormat
audio/x-mulaw 8000 Hz mono), ``media`` (base64 µ-law, 20 ms per message), ``mark``, ``dtmf``, ``stop``.
This bridge turns each call into one ``Converse`` session:

* caller audio: ``media`` payloads go to the sidecar untouched (``SessionStart`` input and output are
  ``CODEC_MULAW`` 8000 Hz, so the sidecar passes G.711 straight through to the model);
* assistant audio: each ``AudioFrame`` goes back as a ``media`` message followed by a ``mark`` whose
  name stands for "item X played up to N ms". Twilio echoes a mark once the audio before it has been
  played to the caller; the bridge turns that acknowledgement into ``PlaybackMark{item_id, played_ms}``,
  so a barge-in truncates the assistant at what the caller actually heard;
* ``Interrupted`` becomes ``clear`` (Twilio drops its buffered audio at once and returns the pending
  marks, which the bridge then ignores: that audio was never played);
* ``stop`` (or the socket closing) half-closes the ``Converse`` stream; ``SessionEnded`` closes the socket.

Run: ``python bridge.py --listen 0.0.0.0:8080 --sidecar 127.0.0.1:50051`` (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Sequence

import grpc
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("VOICE_PB_DIR", os.path.join(_HERE, "voice_pb")))
try:
    from voice.v1 import sidecar_pb2 as pb  # noqa: E402
    from voice.v1 import sidecar_pb2_grpc as pb_grpc  # noqa: E402
except ImportError as e:  # pragma: no cover - a setup error, explained
    raise SystemExit(f"voice_pb stubs missing ({e}): run ../python/gen.sh {_HERE}/voice_pb") from e

log = logging.getLogger("twilio-bridge")

MULAW_8K = pb.AudioFormat(codec=pb.CODEC_MULAW, sample_rate_hz=8000, channels=1, frame_ms=20)


@dataclass
class CallStats:
    """What happened on one call (logged at the end; the tests read it)."""
    stream_sid: str = ""
    call_sid: str = ""
    session_id: str = ""
    media_in: int = 0             # Twilio → sidecar media messages
    media_out: int = 0            # sidecar audio frames → Twilio media messages
    marks_sent: int = 0
    marks_acked: int = 0          # Twilio acknowledgements turned into PlaybackMarks
    marks_cleared: int = 0        # acknowledgements of marks dropped by a clear (not played: ignored)
    playback_marks: int = 0       # PlaybackMarks sent to the sidecar
    last_playback_mark: tuple = ()
    clears: int = 0
    delivered_ms: dict = field(default_factory=dict)    # assistant audio forwarded per item, ms
    interruptions: list = field(default_factory=list)   # (item_id, played_ms)
    transcripts: list = field(default_factory=list)     # (role, text)
    errors: list = field(default_factory=list)
    ended_reason: str = ""


class TwilioBridge:
    def __init__(self, sidecar: str, instructions: str = "You are a friendly phone assistant.",
                 tools: Sequence[pb.ToolDefinition] = (), tool_host: str = "", voice: str = "") -> None:
        self.sidecar = sidecar
        self.instructions = instructions
        self.tools = list(tools)
        self.tool_host = tool_host  # e.g. "http://127.0.0.1:50061" (or the sidecar's --tool-host)
        self.voice = voice
        self.calls: list[CallStats] = []
        self._channel: Optional[grpc.aio.Channel] = None

    def session_start(self, start: dict) -> pb.SessionStart:
        s = pb.SessionStart(input_format=MULAW_8K, output_format=MULAW_8K, instructions=self.instructions,
                            tools=self.tools, voice=self.voice,
                            labels={"channel": "twilio"})
        if self.tool_host:
            s.tool_routing.callback_address = self.tool_host
        return s

    async def handle(self, ws: ServerConnection) -> None:
        """One Twilio call: one WebSocket, one Converse stream."""
        stats = CallStats()
        self.calls.append(stats)
        # Until `start` there is nothing to bridge: read `connected`, then `start`.
        start = None
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("event") == "start":
                start = msg["start"]
                break
            if msg.get("event") == "stop":
                return
        if start is None:
            return
        fmt = start.get("mediaFormat", {})
        if (fmt.get("encoding"), int(fmt.get("sampleRate", 0)), int(fmt.get("channels", 1))) != ("audio/x-mulaw", 8000, 1):
            log.error("unsupported mediaFormat %s", fmt)
            await ws.close(1003, "only audio/x-mulaw 8000 Hz mono")
            return
        stats.stream_sid, stats.call_sid = start["streamSid"], start.get("callSid", "")
        sid = stats.stream_sid
        log.info("call %s stream %s: start", stats.call_sid, sid)

        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.sidecar)
        stub = pb_grpc.VoiceSidecarStub(self._channel)
        outbox: asyncio.Queue[Optional[pb.ClientMessage]] = asyncio.Queue()
        outbox.put_nowait(pb.ClientMessage(start=self.session_start(start)))

        async def requests() -> AsyncIterator[pb.ClientMessage]:
            while (m := await outbox.get()) is not None:
                yield m

        call = stub.Converse(requests())
        names = (f"m{n}" for n in itertools.count(1))
        pending: dict[str, tuple[str, int]] = {}  # mark name → (item_id, ms of the item played once reached)
        item_ms = stats.delivered_ms               # audio forwarded per assistant item, ms

        async def send(obj: dict) -> None:
            await ws.send(json.dumps(obj, separators=(",", ":")))

        async def from_twilio() -> None:
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    ev = msg.get("event")
                    if ev == "media":
                        media = msg["media"]
                        if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                            continue
                        stats.media_in += 1
                        outbox.put_nowait(pb.ClientMessage(audio=pb.AudioFrame(
                            data=base64.b64decode(media["payload"]), seq=int(media.get("chunk", 0)))))
                    elif ev == "mark":
                        name = msg.get("mark", {}).get("name", "")
                        mark = pending.pop(name, None)
                        if mark is None:
                            stats.marks_cleared += 1
                            continue
                        stats.marks_acked += 1
                        stats.playback_marks += 1
                        stats.last_playback_mark = mark
                        outbox.put_nowait(pb.ClientMessage(
                            playback_mark=pb.PlaybackMark(item_id=mark[0], played_ms=mark[1])))
                    elif ev == "dtmf":
                        log.info("stream %s: dtmf %s", sid, msg.get("dtmf", {}).get("digit"))
                    elif ev == "stop":
                        log.info("stream %s: stop", sid)
                        break
            except ConnectionClosed:
                pass
            outbox.put_nowait(None)  # the caller hung up: half-close, the sidecar ends the session

        async def to_twilio() -> None:
            async for m in call:
                kind = m.WhichOneof("message")
                if kind == "audio":
                    a = m.audio
                    ms = a.duration_us / 1000 if a.duration_us else len(a.data) / 8
                    played = item_ms[a.item_id] = item_ms.get(a.item_id, 0.0) + ms
                    name = next(names)
                    pending[name] = (a.item_id, int(played))
                    await send({"event": "media", "streamSid": sid,
                                "media": {"payload": base64.b64encode(a.data).decode()}})
                    await send({"event": "mark", "streamSid": sid, "mark": {"name": name}})
                    stats.media_out += 1
                    stats.marks_sent += 1
                elif kind == "interrupted":
                    i = m.interrupted
                    stats.interruptions.append((i.item_id, i.played_ms))
                    # Twilio drops everything buffered and echoes the pending marks: not played, ignore them.
                    pending.clear()
                    await send({"event": "clear", "streamSid": sid})
                    stats.clears += 1
                    log.info("stream %s: barge-in, %s cut at %d ms: clear", sid, i.item_id, i.played_ms)
                elif kind == "started":
                    stats.session_id = m.started.session_id
                    log.info("stream %s: session %s (upstream %s, passthrough in/out %s/%s)", sid,
                             m.started.session_id, m.started.upstream_audio_format,
                             m.started.input_passthrough, m.started.output_passthrough)
                elif kind == "transcript" and m.transcript.final:
                    role = "user" if m.transcript.role == pb.ROLE_USER else "assistant"
                    stats.transcripts.append((role, m.transcript.text))
                    log.info("stream %s: %s: %s", sid, role.upper(), m.transcript.text)
                elif kind == "error":
                    stats.errors.append((m.error.code, m.error.message))
                    log.warning("stream %s: error %s: %s", sid, m.error.code, m.error.message)
                elif kind == "ended":
                    stats.ended_reason = m.ended.reason
                    return

        rx = asyncio.create_task(from_twilio())
        try:
            await to_twilio()
        except grpc.aio.AioRpcError as e:
            stats.errors.append((e.code().name, e.details()))
            log.error("stream %s: Converse failed: %s %s", sid, e.code().name, e.details())
        finally:
            outbox.put_nowait(None)
            rx.cancel()
            call.cancel()
            await ws.close()
            log.info("stream %s: ended (%s): media in/out %d/%d, marks sent/acked/cleared %d/%d/%d, clears %d",
                     sid, stats.ended_reason or "error", stats.media_in, stats.media_out, stats.marks_sent,
                     stats.marks_acked, stats.marks_cleared, stats.clears)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


async def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Twilio Media Streams ⇄ voice-sidecar bridge")
    p.add_argument("--listen", default="0.0.0.0:8080", help="WebSocket address for Twilio (put TLS in front)")
    p.add_argument("--sidecar", default="127.0.0.1:50051", help="the sidecar's gRPC address (host:port)")
    p.add_argument("--instructions", default="You are a friendly phone assistant.")
    p.add_argument("--voice", default="")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, port = a.listen.rsplit(":", 1)
    bridge = TwilioBridge(a.sidecar, a.instructions, voice=a.voice)
    async with serve(bridge.handle, host, int(port)) as server:
        log.info("listening on ws://%s (Twilio: <Connect><Stream url=\"wss://…\"/></Connect>)", a.listen)
        await server.serve_forever()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        pass
