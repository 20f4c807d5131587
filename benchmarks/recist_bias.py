"""The RECIST bias table of the README: long and short axis error on random rasterised ellipses.

    python benchmarks/recist_bias.py [--n 30]

For each pixel size (0.4, 0.7, 1.0 mm), `n` ellipses with random semi-axes (a 4-18 mm, b 2.5 mm to a),
angle and sub-pixel position, drawn by `lnrt.models.ellipsoids.ellipse_errors`, as tests/test_recist.py draws them (the same seeds), are measured by
`lnrt.recist.recist_axes`; the error against the analytic 2a and 2b is reported in pixels (mean and SD).
Writes `benchmarks/results/<host>-<date>-recist-bias.json`.
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

from lnrt.bench import machine_info, save_result
from lnrt.models.ellipsoids import ellipse_errors


def bias(spacing: float, n: int) -> dict:
    long_err, short_err = ellipse_errors(spacing, n)
    r = lambda v: round(float(v), 3)  # noqa: E731
    return {"pixel_mm": spacing, "n": n, "long_bias_px": r(np.mean(long_err)), "long_sd_px": r(np.std(long_err)),
            "short_bias_px": r(np.mean(short_err)), "short_sd_px": r(np.std(short_err))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rows = [bias(s, args.n) for s in (0.4, 0.7, 1.0)]
    for row in rows:
        print(row)
    result = {"benchmark": "recist_bias", "date": dt.date.today().isoformat(), "machine": machine_info(),
              "rows": rows}
    print(f"wrote {save_result(result, args.out, 'recist-bias')}")


if __name__ == "__main__":
    main()
