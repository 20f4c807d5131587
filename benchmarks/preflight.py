"""The cost of the checks that come before any work (issue 15), measured side by side in one run:

    python benchmarks/preflight.py

- the every-voxel NaN/Inf/range check (`lnrt.imageio.value_range`) on a 512 x 512 x 250 int16 volume and
  its float32 copy, against one plain `min()` + `max()` over the same array;
- the DICOM header checks (`probe_dicom_folder`) of a synthetic 300-slice 512 x 512 series, against ITK's
  read of its pixels (`read_dicom_series`);
- `lnrt infer` refusing a 1024 x 1024 x 512 gzip bomb at a 0.5 GB limit: wall time and peak memory of the
  process (VmHWM), and the bomb's size on disk.
Writes `benchmarks/results/<host>-<date>-preflight.json`.
"""
from __future__ import annotations

import datetime as dt
import gzip
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lnrt.bench import machine_info, save_result
from lnrt.imageio import value_range

HERE = Path(__file__).resolve().parent


def _best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times), 4)


def voxel_check() -> dict:
    rng = np.random.default_rng(0)
    a = rng.integers(-1024, 2000, size=(250, 512, 512), dtype=np.int16)
    f = a.astype(np.float32)
    return {"shape_zyx": list(a.shape),
            "value_range_int16_s": _best(lambda: value_range(a)),
            "min_max_int16_s": _best(lambda: (a.min(), a.max())),
            "value_range_float32_s": _best(lambda: value_range(f)),
            "min_max_float32_s": _best(lambda: (f.min(), f.max()))}


def dicom_headers(tmp: Path) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_dicom_series import write_series

    from lnrt.dicom_in import probe_dicom_folder, read_dicom_series
    write_series(tmp / "s", n=300, rows=512, cols=512)
    probe = _best(lambda: probe_dicom_folder(tmp / "s"), 3)
    series = probe_dicom_folder(tmp / "s")
    read = _best(lambda: read_dicom_series(series), 3)
    return {"slices": 300, "rows": 512, "columns": 512, "header_checks_s": probe, "itk_pixel_read_s": read,
            "ratio": round(probe / read, 3)}


def bomb(tmp: Path) -> dict:
    import nibabel as nib

    path = tmp / "bomb.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.int16)
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0" * 4)  # vox_offset 352
        block = b"\0" * (1 << 24)
        for _ in range(1024 * 1024 * 512 * 2 // len(block)):
            fh.write(block)
    code = ("import resource, sys, time; from lnrt.cli import main; t0 = time.perf_counter(); "
            "rc = main(sys.argv[1:]); wall = time.perf_counter() - t0; "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(rc, round(wall, 3), int(hwm) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, "infer", str(path), "--out", str(tmp / "o"), "-q",
                          "--max-memory-gb", "0.5"], capture_output=True, text=True).stdout.split()
    return {"gzip_mb": round(path.stat().st_size / 1e6, 1), "exit": int(out[0]), "refusal_in_process_s": float(out[1]),
            "peak_mb": int(out[2]), "before_issue_15_peak_gb": 2.16}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {"benchmark": "preflight", "date": dt.date.today().isoformat(), "machine": machine_info(),
                  "voxel_check": voxel_check(), "dicom_headers": dicom_headers(tmp), "gzip_bomb": bomb(tmp)}
    for k in ("voxel_check", "dicom_headers", "gzip_bomb"):
        print(k, result[k])
    print(f"wrote {save_result(result, HERE / 'results', 'preflight')}")


if __name__ == "__main__":
    main()
