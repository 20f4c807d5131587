"""Parity gates: a precision variant is written only if it reproduces the FP32 model.

A gate runs the FP32 model and the candidate through the same `lnrt.Session` pipeline on validation
volumes the calibration never saw and compares what a user receives: the node masks (pooled Dice over
all volumes), the node count, and the short axis of every FP32 node matched to the candidate node that
overlaps it most. It also compares raw logits on network tiles (max absolute difference, argmax
agreement). Thresholds (issue #4): Dice >= 0.99 for FP16 and bf16, >= 0.97 for INT8; matched short axes
within 0.5 mm. A gate stops at the first volume after which it cannot pass any more (a short axis out of
tolerance, or a pooled Dice below the threshold even if every remaining volume matched perfectly), so
a failing variant of a large model does not run every volume (issue 22).

The FP32 reference (`fp32_reference`) is computed once per backend and kept as results and tile logits,
its session closed: a real-sized network's sessions hold gigabytes of activations, and only one session
is open at a time during an export.

When a gate fails, `layer_errors` says where precision is lost: both models run one tile with every
convolution's output exposed, and the nodes whose relative error grows most from their inputs to their
output are suggested for keeping at higher precision (`--keep NODE`). This module needs onnx and
onnxruntime, never torch.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lnrt.atomic import write_json
from lnrt.compare import compare_results, match_nodes, padded_input, tile_parity  # noqa: F401 (re-exported)
from lnrt.package import VARIANT_FILES, ModelPackage, write_manifest

from . import release_memory

DICE_MIN = {"fp16": 0.99, "bf16": 0.99, "int8": 0.97}
SHORT_AXIS_TOL_MM = 0.5
# One tile per network call in the gates: the tiles and their accumulation are the same at any batch, and a
# batch of one halves a real-sized network's activations (the 16.5 M parameter model's FP16 gate on ONNX
# Runtime peaked at 6.7 GB with batch 2)
GATE_BATCH = 1
GATE_SEED0 = 41000  # validation phantoms for gates (calibration uses 40000+, training 1000+)
CALIB_SEED0 = 40000


@dataclass(frozen=True)
class GateConfig:
    dice_min: float
    short_axis_tol_mm: float = SHORT_AXIS_TOL_MM

    @classmethod
    def for_variant(cls, variant: str) -> "GateConfig":
        return cls(dice_min=DICE_MIN.get(variant, 0.99))


def gate_volumes(n: int = 3, seed0: int = GATE_SEED0) -> list:
    """Validation volumes: neck phantoms from seeds no training or calibration uses."""
    from lnrt.models.neck import random_scan

    return [(f"phantom_{seed0 + i}", random_scan(seed0 + i)[0]) for i in range(n)]


def iter_calibration_tiles(session, volumes, per_volume: int = 6, seed: int = 0):
    """Network input tiles (1, C, z, y, x) at random positions inside each volume's body box,
    preprocessed exactly as inference does, made one volume at a time as they are consumed (`volumes`
    may be a lazy iterable of (name, volume))."""
    rng = np.random.default_rng(seed)
    patch = np.array(session.package.input_patch_zyx)
    for _, vol in volumes:
        x = padded_input(session, vol)
        if x is None:
            continue
        hi = np.array(x.shape[1:]) - patch
        for _ in range(per_volume):
            start = [int(rng.integers(0, h + 1)) for h in hi]
            tile = x[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, patch))]
            yield np.ascontiguousarray(tile[None], dtype=np.float32)


def calibration_tiles(session, volumes, per_volume: int = 6, seed: int = 0) -> list:
    """`iter_calibration_tiles` as a list (for the few tiles a gate compares logits on)."""
    return list(iter_calibration_tiles(session, volumes, per_volume, seed))


def layer_errors(ref_onnx, got_onnx, tile: np.ndarray, top: int = 5) -> list:
    """Convolution outputs whose relative error grows most between the two models, worst first."""
    import onnx
    import onnxruntime as ort

    def expose(model):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        names = [(n.name, n.output[0], list(n.input)) for n in m.graph.node
                 if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
        existing = {o.name for o in m.graph.output}
        for _, out, _ in names:
            if out not in existing:
                m.graph.output.append(onnx.ValueInfoProto(name=out))
        return m, names

    ref_m, ref_nodes = expose(ref_onnx)
    got_m, _ = expose(got_onnx)
    feed = {ref_m.graph.input[0].name: tile.astype(np.float32)}

    def outputs(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, feed)))

    ra, ga = outputs(ref_m), outputs(got_m)
    rel = {}
    for _, out, _ in ref_nodes:
        if out in ga:
            a, b = ra[out].astype(np.float32), ga[out].astype(np.float32)
            rel[out] = float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))
    producer = {o: n for n in ref_onnx.graph.node for o in n.output}

    def upstream_error(tensor: str, seen: set) -> float:
        """Largest error among the nearest measured tensors upstream (through activations, concats)."""
        if tensor in rel or tensor in seen:
            return rel.get(tensor, 0.0)
        seen.add(tensor)
        node = producer.get(tensor)
        return max((upstream_error(i, seen) for i in node.input), default=0.0) if node else 0.0

    ranked = []
    for name, out, inputs in ref_nodes:
        if out not in rel:
            continue
        before = max((upstream_error(i, set()) for i in inputs[:1]), default=0.0)
        ranked.append({"node": name, "output": out, "relative_error": round(rel[out], 5),
                       "growth": round(rel[out] - before, 5)})
    ranked.sort(key=lambda r: -r["growth"])
    return ranked[:top]


@dataclass(frozen=True)
class Reference:
    """What a gate compares a candidate with: the FP32 results of the gate volumes and the FP32 logits of
    the check tiles, on one backend."""
    backend: str
    gate_results: list
    tiles: list
    tile_logits: list


def fp32_reference(pkg: ModelPackage, volumes: list, backend: str = "onnxruntime", threads: int | None = None,
                   tiles: list | None = None, progress=None) -> Reference:
    """The FP32 `Reference` of `pkg` on `backend`; its session is closed before this returns. `tiles`
    default to two check tiles of the first volume."""
    from lnrt.session import Session

    with Session(pkg, backend=backend, device="cpu", variant="fp32", threads=threads, batch_size=GATE_BATCH) as ref:
        results = []
        for name, vol in volumes:
            results.append(ref.run(vol))
            if progress:
                progress(f"FP32 reference on {backend}: {name} ({len(results)}/{len(volumes)})")
        if tiles is None:
            tiles = calibration_tiles(ref, volumes[:1], per_volume=2, seed=1)
        logits = [ref.backend.run(t) for t in tiles]
    release_memory()
    return Reference(backend, results, tiles, logits)


def best_dice(per: list, remaining: list) -> float:
    """The highest pooled Dice still reachable after the volumes in `per` (compare_results rows), if
    every result in `remaining` (the reference's) were matched exactly."""
    rest = sum(int(np.count_nonzero(r.labels)) for r in remaining)
    inter = sum(p["intersection"] for p in per) + rest
    total = sum(p["total"] for p in per) + 2 * rest
    return 1.0 if total == 0 else 2 * inter / total


def _temp_package(pkg: ModelPackage, variant: str, model_bytes: bytes, tmp: Path) -> ModelPackage:
    manifest = json.loads(json.dumps(pkg.manifest))
    shutil.copyfile(pkg.onnx_path("fp32"), tmp / VARIANT_FILES["fp32"])
    (tmp / VARIANT_FILES[variant]).write_bytes(model_bytes)
    previous = manifest["input"].get("previous_stage")
    if previous:  # a cascade: its first stage (fp32, pinned by sha256) comes along unchanged
        shutil.copytree(pkg.path / previous["package"], tmp / previous["package"])
    manifest["files"] = {VARIANT_FILES["fp32"]: {}, VARIANT_FILES[variant]: {}}
    # the candidate is a new file: verdicts recorded for the package's earlier one do not apply to it
    # (they would make Session refuse the backend being gated)
    manifest.pop("variants", None)
    write_manifest(tmp, manifest)
    return ModelPackage.load(tmp)


def run_gate(pkg: ModelPackage, variant: str, candidate, volumes: list, tiles: list | None = None,
             backend: str = "onnxruntime", threads: int | None = None, reference: Reference | None = None,
             diagnose: bool = True, progress=None, stop_early: bool = True, kept=()) -> dict:
    """Gate `candidate` (an onnx.ModelProto) as `variant` of `pkg` on one backend; returns the report.

    `reference` is the FP32 `Reference` of `pkg` on the same backend for `volumes` (and its check tiles:
    `tiles`, when given, must be the reference's), so gating several variants runs FP32 once; without it
    one is made here. `diagnose` adds the per-layer error ranking (`layer_errors`, run on ONNX Runtime).
    `stop_early=False` runs every volume (a variant written with --force records its full comparison).
    `kept`: the nodes the candidate already keeps in FP32, never advised again (a kept layer's output
    still differs when its inputs do, so it can rank high while keeping it more cannot help)."""
    import onnx

    from lnrt.session import Session

    cfg = GateConfig.for_variant(variant)
    if reference is None:
        reference = fp32_reference(pkg, volumes, backend, threads, tiles)
    if len(reference.gate_results) != len(volumes):
        raise ValueError(f"the reference holds {len(reference.gate_results)} results for {len(volumes)} volumes")
    tiles = reference.tiles
    with tempfile.TemporaryDirectory() as tmp:
        cand = _temp_package(pkg, variant, candidate.SerializeToString(), Path(tmp))
        with Session(cand, backend=backend, device="cpu", variant=variant, threads=threads,
                     batch_size=GATE_BATCH) as got_s:
            per, stopped = [], None
            for i, ((name, vol), ref) in enumerate(zip(volumes, reference.gate_results)):
                r = compare_results(ref, got_s.run(vol))
                r["volume"] = name
                per.append(r)
                if progress:
                    progress(f"{variant} gate on {backend}: {name} ({i + 1}/{len(volumes)}), Dice {r['dice']:.4f}")
                stopped = _cannot_pass(per, reference.gate_results[i + 1:], cfg) if stop_early else None
                if stopped and i + 1 < len(volumes):
                    break
            tiles_report = tile_parity(reference.tile_logits, got_s.backend, tiles)
            backend_info = got_s.backend.describe()
    release_memory()
    inter = sum(p["intersection"] for p in per)
    total = sum(p["total"] for p in per)
    dice = 1.0 if total == 0 else 2 * inter / total
    sa = max((p["short_axis_max_diff_mm"] for p in per), default=0.0)
    failures = []
    if dice < cfg.dice_min:
        failures.append(f"node-mask Dice {dice:.4f} < {cfg.dice_min}")
    if sa > cfg.short_axis_tol_mm:
        failures.append(f"matched short axes differ by up to {sa:.2f} mm > {cfg.short_axis_tol_mm} mm")
    report = {"variant": variant, "passed": not failures, "failures": failures,
              "thresholds": asdict(cfg), "dice": round(dice, 5), "short_axis_max_diff_mm": round(sa, 4),
              "nodes_fp32": sum(p["nodes_ref"] for p in per), "nodes": sum(p["nodes"] for p in per),
              "tiles": {"count": len(tiles), **tiles_report}, "backend": backend_info, "volumes": per}
    if len(per) < len(volumes):
        report["stopped_early"] = {"after_volumes": len(per), "of": len(volumes), "because": stopped}
    if tiles and diagnose:
        ref_model = onnx.load(str(pkg.onnx_path("fp32")))
        report["most_sensitive_layers"] = layer_errors(ref_model, candidate, tiles[0])
        if failures:
            keep = [r["node"] for r in report["most_sensitive_layers"] if r["node"] not in set(kept)][:3]
            report["advice"] = ("keep these layers at higher precision and export again: "
                                + " ".join(f"--keep {k}" for k in [*kept, *keep]))
    return report


def _cannot_pass(per: list, remaining: list, cfg: GateConfig) -> str | None:
    """Why the gate has already failed whatever the remaining volumes give, or None."""
    sa = max(p["short_axis_max_diff_mm"] for p in per)
    if sa > cfg.short_axis_tol_mm:
        return f"a matched short axis differs by {sa:.2f} mm > {cfg.short_axis_tol_mm} mm"
    best = best_dice(per, remaining)
    if best < cfg.dice_min:
        return f"the pooled Dice cannot reach {cfg.dice_min} (at most {best:.4f})"
    return None


def summary_line(report: dict) -> dict:
    """The part of a gate report the manifest keeps for each backend."""
    return {"passed": report["passed"], "dice": report["dice"],
            "short_axis_max_diff_mm": report["short_axis_max_diff_mm"], "failures": report["failures"],
            "backend_version": report["backend"].get("backend_version")}


def save_report(root: Path, variant: str, report: dict) -> Path:
    return write_json(Path(root) / f"parity.{variant}.json", report)


__all__ = ["GateConfig", "Reference", "fp32_reference", "best_dice", "iter_calibration_tiles", "run_gate",
           "summary_line", "gate_volumes", "calibration_tiles", "layer_errors", "save_report",
           "compare_results"]
