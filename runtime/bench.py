"""`lnrt bench`: honest per-stage latency of the whole pipeline, and `lnrt bench compare` across results.

A benchmark loads one `Session` (model + backend + variant), runs the same scan file `warmup` times
unrecorded and `repeat` times recorded, each run reading the file, running every stage and writing
the three contract outputs to a temporary folder, exactly as `lnrt infer` does. Stages (seconds):
read, preprocess (reorient, resample, body crop, normalize), network (the backend's calls only),
accumulate (tiling and Gaussian accumulation around them), postprocess (activation, resampling back to
the scan grid), components, rules, measure, output (the label map in the input's order), write; plus end
to end (wall clock around run and save). Results from older lnrt, which had no rules or output stage,
show 0 there.
Each gets median, p90, p99 and min over the recorded repeats. CPU stages use the host clock; nothing
here runs on a GPU yet (GPU stages will use device events). The result records the machine, the
model (sha256, variant, patch, batch), the scan (size, spacing) and the engine, so a number is never
separated from what produced it. Nothing in the test suite asserts a time.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_json
from .errors import LnrtError
from .optional import require

STAGES = ("read", "preprocess", "network", "accumulate", "postprocess", "components", "rules", "measure", "output",
          "write")
_ZERO = {"median": 0.0, "p90": 0.0, "p99": 0.0, "min": 0.0}  # a stage that results from older lnrt lack
COLORS = {"read": (120, 144, 156), "preprocess": (66, 165, 245), "network": (239, 83, 80),
          "accumulate": (255, 167, 38), "postprocess": (171, 71, 188), "components": (102, 187, 106),
          "rules": (255, 238, 88), "measure": (38, 166, 154), "output": (0, 121, 107), "write": (141, 110, 99)}


def parse_size(text: str) -> tuple:
    """'512x512x250' (x, y, z voxels) or '128' (a cube) -> (x, y, z)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 16:
        raise LnrtError(f"--synthetic {text!r}: expected X x Y x Z voxels like 512x512x250 (each >= 16)")
    return tuple(parts)


def synthetic_scan(size_xyz, spacing_xyz=(0.5, 0.5, 1.0), seed: int = 40000, out_dir: Path | None = None) -> Path:
    """A neck phantom of the given size written as NIfTI (the neck centred, air or body around it)."""
    import SimpleITK as sitk

    from .models.neck import make_spec, render

    nx, ny, nz = size_xyz
    sx, sy, sz = spacing_xyz
    spec = make_spec(seed)
    hu, _, origin = render(spec, (sz, sy, sx), fov_xy=(nx * sx, ny * sy),
                           pad_z=max(0.0, (nz * sz - spec.height) / 2))
    hu = hu[:nz] if hu.shape[0] >= nz else np.pad(hu, [(0, nz - hu.shape[0]), (0, 0), (0, 0)], mode="edge")
    img = sitk.GetImageFromArray(np.round(hu[:, :ny, :nx]).astype(np.int16))
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin(origin)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="lnrt-bench-"))
    path = out_dir / f"synthetic_{nx}x{ny}x{nz}.nii.gz"
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # any import failure means "not usable here"
        return None
    return str(getattr(mod, "__version__", "?")).split("-")[0]


def gpu_info() -> dict | None:
    """The GPU this machine has (lnrt.device's probe), or None."""
    from .device import probe_gpu
    return probe_gpu().to_dict()


def machine_info(threads: int | None = None) -> dict:
    return {"host": platform.node() or "host", "cpu": cpu_model(), "cores": os.cpu_count(),
            "threads": threads or os.cpu_count(), "python": platform.python_version(),
            "gpu": gpu_info(),
            "versions": {k: _version(k) for k in ("onnxruntime", "openvino", "cupy", "tensorrt", "numpy")}}


def stats(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
            "p99": round(float(np.percentile(a, 99)), 4), "min": round(float(a.min()), 4)}


def bench(scan=None, synthetic: str | None = None, model=None, backend: str = "auto", variant: str = "fp32",
          repeat: int = 3, warmup: int = 1, threads: int | None = None, batch_size: int | None = None,
          progress=None) -> dict:
    from .session import Session

    if (scan is None) == (synthetic is None):
        raise LnrtError("give a SCAN or --synthetic SIZE (not both)")
    if repeat < 1 or warmup < 0:
        raise LnrtError(f"--repeat {repeat} --warmup {warmup}: expected repeat >= 1 and warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="lnrt-bench-") as tmp:
        path = synthetic_scan(parse_size(synthetic), out_dir=Path(tmp)) if synthetic else Path(scan)
        runs = []
        with Session(model, backend=backend, variant=variant, threads=threads, batch_size=batch_size) as s:
            for i in range(warmup + repeat):
                t0 = time.perf_counter()
                res = s.run(path)
                res.save(Path(tmp) / "out", overwrite=True, viewer=False)
                wall = time.perf_counter() - t0
                if progress:
                    progress(i + 1, warmup + repeat, wall)
                vol = res.geometry  # the scan as read, for its size and spacing
                if i >= warmup:
                    runs.append({"end_to_end": wall, "tiles": res.settings.get("tiles", 0),
                                 "nodes": len(res.nodes), **{k: res.timings.get(k, 0.0) for k in STAGES}})
            info = s.model_info()
            window = s.window
    voxels = int(np.prod(vol.shape))
    med_net = float(np.median([r["network"] for r in runs]))
    med_e2e = float(np.median([r["end_to_end"] for r in runs]))
    tiles = runs[-1]["tiles"]
    return {
        "schema": "lnrt.bench/1", "date": dt.date.today().isoformat(),
        "machine": machine_info(threads),
        "model": {"name": info["name"], "version": info["version"], "sha256": info["sha256"],
                  "variant": variant, "patch_zyx": list(window.patch), "batch": window.batch_size},
        "engine": {k: info[k] for k in ("backend", "device", "backend_version", "threads", "precision_hint")
                   if k in info},
        "scan": {"path": "synthetic" if synthetic else str(scan), "size_xyz": list(vol.shape[::-1]),
                 "spacing_xyz_mm": [round(v, 4) for v in vol.spacing], "voxels": voxels},
        "repeat": repeat, "warmup": warmup,
        "stages_s": {k: stats([r[k] for r in runs]) for k in STAGES + ("end_to_end",)},
        "tiles": tiles, "tiles_per_s": round(tiles / med_net, 2) if med_net > 0 else None,
        "voxels_per_s": round(voxels / med_e2e), "nodes": runs[-1]["nodes"],
        "peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_memory_mb": None,
        "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
    }


def result_name(result: dict) -> str:
    m, e = result["machine"], result["engine"]
    return f"{m['host']}-{result['date']}-bench-{e['backend']}-{result['model']['variant']}.json"


def save_result(result: dict, folder, kind: str | None = None) -> Path:
    """Write `result` atomically as `<host>-<date>-<kind>.json` in `folder` (kind None: a `bench`
    result, named by `result_name`). Every benchmark script saves through here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = result_name(result) if kind is None else f"{result['machine']['host']}-{result['date']}-{kind}.json"
    return write_json(folder / name, result)


def load_results(paths) -> list:
    out = []
    for p in paths:
        try:
            r = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LnrtError(f"{p}: not a readable benchmark result ({exc})") from None
        if not isinstance(r, dict) or r.get("schema") != "lnrt.bench/1":
            raise LnrtError(f"{p}: not an lnrt bench result (schema lnrt.bench/1 expected)")
        out.append(r)
    if not out:
        raise LnrtError("bench compare: expected one or more result JSON files")
    return out


def _label(r: dict) -> str:
    gpu = (r["machine"].get("gpu") or {}).get("name")
    where = gpu or f"{r['machine']['cpu']} x{r['machine']['threads']}"
    return f"{where} | {r['engine']['backend']} {r['model']['variant']}"


def compare_table(results: list) -> str:
    """One markdown table: a row per result, median seconds per stage."""
    head = ["machine / device", "backend", "variant", "scan (x y z)"] + list(STAGES) + ["end to end", "tiles/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        gpu = (r["machine"].get("gpu") or {}).get("name")
        where = gpu or f"{r['machine']['cpu']} ({r['machine']['threads']} threads)"
        st = r["stages_s"]
        cells = [where, f"{r['engine']['backend']} {r['engine'].get('backend_version', '')}".strip(),
                 r["model"]["variant"], "x".join(map(str, r["scan"]["size_xyz"]))]
        cells += [f"{st.get(k, _ZERO)['median']:.3f}" for k in STAGES]
        cells += [f"**{st['end_to_end']['median']:.2f}**", str(r.get("tiles_per_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_chart(results: list, path) -> Path:
    """Stacked horizontal bars of the median stage times, one bar per result (PNG, Pillow)."""
    require("PIL", "qc", "Pillow")
    from PIL import Image, ImageDraw
    labels = [_label(r) for r in results]
    totals = [sum(r["stages_s"].get(k, _ZERO)["median"] for k in STAGES) for r in results]
    width, left, bar, gap, top = 1000, 360, 26, 14, 40
    height = top + len(results) * (bar + gap) + 60
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    scale = (width - left - 80) / max(max(totals), 1e-9)
    d.text((10, 10), "median seconds per stage (stacked)", fill="black")
    for i, (r, lab, tot) in enumerate(zip(results, labels, totals)):
        y = top + i * (bar + gap)
        d.text((10, y + 7), lab[:58], fill="black")
        x = left
        for k in STAGES:
            w = r["stages_s"].get(k, _ZERO)["median"] * scale
            if w > 0:
                d.rectangle([x, y, x + w, y + bar], fill=COLORS[k])
            x += w
        d.text((x + 6, y + 7), f"{tot:.2f} s", fill="black")
    ly = height - 40
    lx = 10
    for k in STAGES:
        d.rectangle([lx, ly, lx + 14, ly + 14], fill=COLORS[k])
        d.text((lx + 18, ly + 2), k, fill="black")
        lx += 24 + 8 * len(k)
    with atomic_path(path) as tmp:
        img.save(tmp)
    return Path(path)


def format_result(r: dict) -> str:
    lines = [f"{_label(r)}; scan {'x'.join(map(str, r['scan']['size_xyz']))} "
             f"({r['scan']['voxels'] / 1e6:.1f} M voxels); {r['repeat']} runs after {r['warmup']} warm-up",
             f"{'stage':<12} {'median':>8} {'p90':>8} {'p99':>8} {'min':>8}"]
    for k in STAGES + ("end_to_end",):
        s = r["stages_s"].get(k, _ZERO)
        lines.append(f"{k:<12} {s['median']:>8.3f} {s['p90']:>8.3f} {s['p99']:>8.3f} {s['min']:>8.3f}")
    lines.append(f"tiles {r['tiles']} ({r['tiles_per_s']} tiles/s), {r['voxels_per_s'] / 1e6:.1f} M voxels/s, "
                 f"peak host memory {r['peak_host_memory_mb']:.0f} MB")
    return "\n".join(lines)
