"""A tiny pure-Python G.711 µ-law codec (audioop is gone from Python 3.13) for tests and tools."""

from __future__ import annotations

import struct

_BIAS, _CLIP = 0x84, 32635
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def encode_sample(s: int) -> int:
    """One 16-bit sample → µ-law (the classic Sun g711.c algorithm on 14 bits, as audioop does)."""
    s >>= 2
    mask = 0xFF
    if s < 0:
        s, mask = -s, 0x7F
    s = min(s, 8159) + 0x21
    seg = next((i for i, end in enumerate(_SEG_END) if s <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((s >> (seg + 1)) & 0x0F)) ^ mask


def decode_sample(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return _BIAS - t if u & 0x80 else t - _BIAS


_ENC = bytes(encode_sample(s) for s in range(-32768, 32768))
_DEC = [decode_sample(u) for u in range(256)]


def encode(pcm16le: bytes) -> bytes:
    """PCM16 little-endian → µ-law, one byte per sample."""
    n = len(pcm16le) // 2
    return bytes(_ENC[s + 32768] for s in struct.unpack(f"<{n}h", pcm16le[: 2 * n]))


def decode(ulaw: bytes) -> list[int]:
    return [_DEC[u] for u in ulaw]


def downsample_16k_to_8k(pcm16le: bytes) -> bytes:
    """Halves the rate by averaging sample pairs (a crude low-pass, fine for speech-like test audio)."""
    n = len(pcm16le) // 4 * 2
    s = struct.unpack(f"<{n}h", pcm16le[: 2 * n])
    return struct.pack(f"<{n // 2}h", *((s[i] + s[i + 1]) // 2 for i in range(0, n, 2)))
