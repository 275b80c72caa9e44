"""libsoxr (HQ) reference numbers for crates/audio/benches/conversions.rs.

Prints one line per rate pair: `in out x_realtime snr_db`, measured with process CPU time on a
10 s signal, and the 1 kHz SNR computed exactly like the Rust side (least-squares sine fit,
50 ms edges excluded).
"""
import sys
import time

import numpy as np
import soxr


def fit_snr(y, rate, hz):
    edge = rate // 20
    y = y[edge:len(y) - edge].astype(np.float64)
    n = np.arange(edge, edge + len(y))
    w = 2 * np.pi * hz / rate
    basis = np.stack([np.sin(w * n), np.cos(w * n), np.ones_like(n, dtype=np.float64)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    return 10 * np.log10(np.sum(fit ** 2) / max(np.sum((y - fit) ** 2), 1e-30))


def main():
    for pair in sys.argv[1].split(","):
        fin, fout = (int(x) for x in pair.split(":"))
        secs = 10
        t = np.arange(fin * secs) / fin
        x = np.round(0.9 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
        reps = 0
        start = time.process_time()
        while True:
            y = soxr.resample(x, fin, fout, quality="HQ")
            reps += 1
            el = time.process_time() - start
            if el > 0.5:
                break
        print(f"{fin} {fout} {reps * secs / el:.1f} {fit_snr(y, fout, 1000):.1f}", flush=True)


if __name__ == "__main__":
    main()
