"""Add gated FP16 and INT8 variants to an lnrt model package (`lnrt export variants PACKAGE`).

For each requested variant: build it from the package's FP32 ONNX (`lnrt.export.precision`), run the
parity gate on validation volumes (`lnrt.export.gate`), and only if it passes (or `force`) write
`model.<variant>.onnx`, `parity.<variant>.json` and the updated manifest, each to a temporary name
first. INT8 calibration tiles come from `calib` (a folder of scans, or a list of scan paths) or, by
default, from generated neck phantoms with seeds nobody else uses; the gate's volumes are never the
calibration volumes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from lnrt.atomic import write_bytes
from lnrt.errors import LnrtError
from lnrt.package import VARIANT_FILES, ModelPackage

from . import Progress, release_memory
from . import gate as gates
from .precision import fp32_nodes, to_fp16, to_int8

log = logging.getLogger("lnrt")
BUILDABLE = ("fp16", "int8")


def _scan_paths(calib) -> list:
    if isinstance(calib, (list, tuple)):
        return [Path(c) for c in calib]
    root = Path(calib)
    if not root.is_dir():
        raise LnrtError(f"{root}: --calib must be a folder of scans (NIfTI/NRRD/MHA files or DICOM folders)")
    items = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if not items:
        raise LnrtError(f"{root}: the calibration folder is empty; expected CT scans")
    return items


def iter_calibration_volumes(calib=None, n_phantoms: int = 4):
    """(name, volume) for INT8 calibration, one at a time as they are consumed: the scans of `calib`, or
    neck phantoms with the calibration seeds."""
    from lnrt.imageio import read_scan
    from lnrt.models.neck import random_scan

    if calib is None:
        for i in range(n_phantoms):
            yield f"phantom_{gates.CALIB_SEED0 + i}", random_scan(gates.CALIB_SEED0 + i)[0]
        return
    for p in _scan_paths(calib):
        yield p.name, read_scan(p)[0]


def calibration_volumes(calib=None, n_phantoms: int = 4) -> list:
    return list(iter_calibration_volumes(calib, n_phantoms))


def _write_atomic(path: Path, data: bytes) -> None:
    write_bytes(path, data)


def gate_backends() -> list:
    """The CPU backends a variant is gated on here: ONNX Runtime first (the reference: it executes
    Q/DQ and Cast exactly as the ONNX specification says), then OpenVINO when it is installed."""
    from lnrt.backends import available

    return ["onnxruntime"] + [b for b in available() if b != "onnxruntime"]


def add_variants(package, variants=BUILDABLE, calib=None, n_calib: int = 4, n_gate: int = 3,
                 keep=(), force: bool = False, threads: int | None = None,
                 calibration: str = "percentile", backends=None, progress=None) -> dict:
    """Build, gate and write precision variants into a package folder; returns {variant: report}.

    Each variant is gated on every backend in `backends` (default: `gate_backends()`). It is written
    when it passes on ONNX Runtime (or `force`); the manifest records the verdict on each backend, and
    `lnrt.Session` refuses to run a variant on a backend where it failed. The same Q/DQ file can be
    computed differently by another backend's kernels (measured: OpenVINO's int8 convolutions on an
    AVX2 CPU without VNNI), which is why one backend's verdict does not speak for the others. A variant
    that fails on ONNX Runtime is not written, so it is not gated on the other backends either (unless
    `force`). Memory: one session is open at a time, and INT8 calibration streams its tiles."""

    bad = [v for v in variants if v not in BUILDABLE]
    if bad:
        raise LnrtError(f"cannot build variant {bad[0]!r}; expected one of {', '.join(BUILDABLE)}")
    progress = progress or Progress()
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    backends = list(backends or gate_backends())
    if backends[0] != "onnxruntime":
        raise LnrtError(f"the gates' first backend must be onnxruntime (the reference), not {backends[0]!r}")
    volumes = gates.gate_volumes(n_gate)
    # FP32 runs once per backend for every variant; on the other backends only once a variant needs it
    refs = _References(pkg, volumes, backends, threads, progress)
    reports = {}
    for variant in variants:
        progress(f"building the {variant} variant")
        candidate, extra = _build(pkg, variant, keep, calib, n_calib, calibration, threads, progress)
        report = _gate_everywhere(pkg, variant, candidate, volumes, refs, force, threads, progress, tuple(keep))
        report.update(extra, keep=list(keep), gate_volumes=[n for n, _ in volumes])
        reports[variant] = report
        report["written"] = bool(report["passed"] or force)
        gates.save_report(pkg.path, variant, report)  # kept as the record even when the gate fails
        if not report["written"]:
            log.warning("%s variant failed its gate (%s); not written (--force writes it anyway)",
                        variant, "; ".join(report["failures"]))
            continue
        _write_atomic(pkg.path / VARIANT_FILES[variant], candidate.SerializeToString())
        _update_manifest(pkg, variant, report)
        progress(f"{variant} variant written")
    return reports


def _build(pkg: ModelPackage, variant: str, keep, calib, n_calib: int, calibration: str, threads, progress):
    """(candidate onnx.ModelProto, report fields) of one variant."""
    import onnx

    from lnrt.session import Session

    fp32 = onnx.load(str(pkg.onnx_path("fp32")))
    if variant == "fp16":
        candidate = to_fp16(fp32, keep)
        return candidate, {"kept_fp32": fp32_nodes(candidate)}
    n_tiles = [0]

    def tile_done(i):
        n_tiles[0] = i
        progress(f"int8 calibration: tile {i}")

    with Session(pkg, backend="onnxruntime", device="cpu", variant="fp32", threads=threads) as prep:
        tiles = gates.iter_calibration_tiles(prep, iter_calibration_volumes(calib, n_calib), seed=2)
        candidate = to_int8(fp32, tiles, keep, method=calibration, threads=threads, progress=tile_done)
    release_memory()
    return candidate, {"calibration": {
        "source": str(calib) if calib else
        f"neck phantoms, seeds {gates.CALIB_SEED0}..{gates.CALIB_SEED0 + n_calib - 1}",
        "volumes": len(_scan_paths(calib)) if calib else n_calib, "tiles": n_tiles[0], "method": calibration,
        "streaming": "tile by tile, a 2048-bin |x| histogram per tensor (lnrt.export.precision)",
        "input_layer": "kept in float32", "activations": "int8 symmetric per tensor",
        "placement": "inputs of Conv, ConvTranspose, Gemm, MatMul only", "weights": "int8 symmetric per channel"}}


class _References(dict):
    """backend -> its FP32 `gates.Reference`, made on first use (ONNX Runtime's check tiles for all)."""

    def __init__(self, pkg, volumes, backends, threads, progress):
        super().__init__()
        self.args, self.backends = (pkg, volumes, threads, progress), list(backends)

    def __missing__(self, backend: str):
        pkg, volumes, threads, progress = self.args
        tiles = None if backend == "onnxruntime" else self["onnxruntime"].tiles
        self[backend] = gates.fp32_reference(pkg, volumes, backend=backend, threads=threads, tiles=tiles,
                                             progress=progress)
        return self[backend]


def _gate_everywhere(pkg, variant, candidate, volumes, refs, force, threads, progress, keep=()) -> dict:
    """The ONNX Runtime gate report with every other backend's verdict in `gate_backends`. With `force`
    every volume runs: the written variant's record is then complete."""
    report = gates.run_gate(pkg, variant, candidate, volumes, threads=threads, reference=refs["onnxruntime"],
                            progress=progress, stop_early=not force, kept=keep)
    report["gate_backends"] = {"onnxruntime": gates.summary_line(report)}
    for b in refs.backends[1:]:
        if not (report["passed"] or force):
            report["gate_backends"][b] = {"passed": False, "dice": None, "short_axis_max_diff_mm": None,
                                          "failures": ["not gated: the variant failed on onnxruntime"],
                                          "backend_version": None}
            continue
        other = gates.run_gate(pkg, variant, candidate, volumes, threads=threads, backend=b,
                               reference=refs[b], diagnose=False, progress=progress, stop_early=not force)
        report["gate_backends"][b] = gates.summary_line(other)
        report.setdefault("other_backends", {})[b] = {k: other[k] for k in ("backend", "tiles", "volumes")}
        if not other["passed"]:
            log.warning("%s variant fails its gate on %s (%s); lnrt will not run it there", variant, b,
                        "; ".join(other["failures"]))
    return report


def _update_manifest(pkg: ModelPackage, variant: str, report: dict) -> None:
    manifest = json.loads(json.dumps(pkg.manifest))
    fname = VARIANT_FILES[variant]
    manifest["files"][fname] = {}  # hashed, sized and sealed by write_manifest (via pkg.rewrite)
    manifest.setdefault("variants", {})[variant] = {
        "file": fname, "gate_passed": report["passed"], "dice_vs_fp32": report["dice"],
        "short_axis_max_diff_mm": report["short_axis_max_diff_mm"], "report": f"parity.{variant}.json",
        "gate_backends": report["gate_backends"]}
    pkg.rewrite(manifest)
