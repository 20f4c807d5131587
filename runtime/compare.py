"""`lnrt compare PACKAGE SCAN`: every variant and backend available here on one scan, against FP32.

The reference is the FP32 variant on ONNX Runtime's CPU backend (the universal one). Each other
combination runs the same scan through the same `Session` pipeline and is compared on what a user gets
(node-mask Dice, node count, short axis of each reference node against the candidate node overlapping
it most) and on raw logits for network tiles of the scan (max absolute difference, argmax agreement).
The same comparison functions drive the export parity gates (`lnrt.export.gate`).
"""
from __future__ import annotations

import time

import numpy as np

from .errors import LnrtError


def _dice_counts(a: np.ndarray, b: np.ndarray) -> tuple:
    a, b = a > 0, b > 0
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a) + np.count_nonzero(b))


def match_nodes(ref_labels: np.ndarray, ref_nodes: list, got_labels: np.ndarray, got_nodes: list) -> list:
    """For every reference node, the candidate node overlapping it most: (ref, got or None)."""
    by_id = {n["id"]: n for n in got_nodes}
    pairs = []
    for n in ref_nodes:
        z0, y0, x0, z1, y1, x1 = _bbox_zyx(n)
        sel = ref_labels[z0:z1, y0:y1, x0:x1] == n["id"]
        hits = got_labels[z0:z1, y0:y1, x0:x1][sel]
        hits = hits[hits > 0]
        best = int(np.bincount(hits).argmax()) if hits.size else 0
        pairs.append((n, by_id.get(best)))
    return pairs


def _bbox_zyx(node: dict) -> tuple:
    lo, hi = node["bbox_voxels"][:3], node["bbox_voxels"][3:]  # array-order min and max, inclusive
    return lo[0], lo[1], lo[2], hi[0] + 1, hi[1] + 1, hi[2] + 1


def compare_results(ref, got) -> dict:
    """Per-volume comparison of two `Result`s of the same scan."""
    inter, total = _dice_counts(ref.labels, got.labels)
    pairs = match_nodes(ref.labels, ref.nodes, got.labels, got.nodes)
    diffs = [abs(r["short_axis_mm"] - g["short_axis_mm"]) for r, g in pairs if g is not None]
    return {"intersection": inter, "total": total, "dice": 1.0 if total == 0 else 2 * inter / total,
            "nodes_ref": len(ref.nodes), "nodes": len(got.nodes),
            "unmatched": sum(g is None for _, g in pairs),
            "unmatched_short_axes_mm": sorted((round(r["short_axis_mm"], 2) for r, g in pairs if g is None),
                                              reverse=True),
            "short_axis_max_diff_mm": max(diffs, default=0.0),
            "short_axis_median_diff_mm": float(np.median(diffs)) if diffs else 0.0}


def tile_parity(ref, got_backend, tiles: list) -> dict:
    """Logit error and argmax agreement of `got_backend` on `tiles` against `ref`: a backend, or the
    reference logits of the tiles already computed (a list, one array per tile)."""
    err, agree, n = 0.0, 0, 0
    for i, t in enumerate(tiles):
        a, b = (ref[i] if isinstance(ref, list) else ref.run(t)), got_backend.run(t)
        err = max(err, float(np.abs(a - b).max()))
        agree += int(np.count_nonzero(a.argmax(1) == b.argmax(1)))
        n += a[:, 0].size
    return {"max_abs_logit_diff": err, "argmax_agreement": agree / max(n, 1)}


def padded_input(session, vol) -> np.ndarray | None:
    """The network's normalized model-grid input for `vol`, (C, z, y, x), edge-padded to at least one
    input patch (C: 1, or a cascade's CT and first-stage masks). A 2.5D model's context slices are
    edge-padded above and below first, as the sliding window does, so a tile of `input_patch_zyx` cut at
    z0 is the network's input for output slice z0."""
    prep = session.prepare(vol)
    if prep.image is None:
        return None
    x, c = prep.image, session.package.context_slices
    x = x[None] if x.ndim == 3 else x
    if c:
        x = np.pad(x, [(0, 0), (c, c), (0, 0), (0, 0)], mode="edge")
    pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(session.package.input_patch_zyx, x.shape[1:])]
    return np.pad(x, pad, mode="edge") if any(p[1] for p in pad) else x


def _tiles(session, vol, n: int = 2) -> list:
    x = padded_input(session, vol)
    if x is None:
        return []
    patch = session.package.input_patch_zyx
    out = []
    for k in range(n):  # tiles spread along the main diagonal of the body box
        frac = (k + 1) / (n + 1)
        start = [int(frac * (s - p)) for s, p in zip(x.shape[1:], patch)]
        tile = x[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, patch))]
        out.append(np.ascontiguousarray(tile[None]))
    return out


def compare(model, scan, variants=None, backends=None, threads: int | None = None) -> dict:
    """Run the combinations and return {"reference": ..., "rows": [...]} (see module doc)."""
    from .imageio import read_scan
    from .package import ModelPackage
    from .session import Session

    pkg = model if isinstance(model, ModelPackage) else ModelPackage.load(model)
    vol, info = read_scan(scan) if not hasattr(scan, "array") else (scan, None)
    variants = list(variants or pkg.variants())
    from .backends import available

    backends = list(backends or available())
    for v in variants:
        pkg.onnx_path("fp32" if v == "bf16" else v)  # clear error for a variant the package lacks
    ref = Session(pkg, backend="onnxruntime", device="cpu", variant="fp32", threads=threads)
    t0 = time.perf_counter()
    ref_result = ref.run(vol)
    ref_time = time.perf_counter() - t0
    tiles = _tiles(ref, vol)
    rows = []
    for backend in backends:
        for variant in variants:
            if backend == "onnxruntime" and variant == "fp32":
                rows.append({"backend": backend, "variant": variant, "reference": True,
                             "nodes": len(ref_result.nodes), "seconds": round(ref_time, 3),
                             "engine": ref.backend.describe()})
                continue
            try:
                s = Session(pkg, backend=backend, variant=variant, threads=threads)
            except LnrtError as exc:
                rows.append({"backend": backend, "variant": variant, "skipped": str(exc)})
                continue
            with s:
                t0 = time.perf_counter()
                res = s.run(vol)
                seconds = time.perf_counter() - t0
                row = {"backend": backend, "variant": variant, "seconds": round(seconds, 3),
                       "engine": s.backend.describe()}
                row.update(compare_results(ref_result, res))
                row.update(tile_parity(ref.backend, s.backend, tiles))
            rows.append(row)
    ref.close()
    return {"schema": "lnrt.compare/1", "package": pkg.summary("fp32"),
            "scan": {"path": str(scan), "shape_zyx": list(vol.shape), "spacing_xyz_mm": list(vol.spacing)},
            "reference": {"backend": "onnxruntime", "variant": "fp32", "nodes": len(ref_result.nodes)},
            "rows": rows}


def format_compare(result: dict) -> str:
    head = (f"{'backend':<12} {'variant':<7} {'max|dlogit|':>11} {'argmax agr':>10} {'Dice':>7} "
            f"{'nodes':>5} {'max dSA mm':>10} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"{r['backend']:<12} {r['variant']:<7} skipped: {r['skipped']}")
        elif r.get("reference"):
            lines.append(f"{r['backend']:<12} {r['variant']:<7} {'(reference)':>11} {'':>10} {'1':>7} "
                         f"{r['nodes']:>5} {'':>10} {r['seconds']:>7.2f}")
        else:
            lines.append(f"{r['backend']:<12} {r['variant']:<7} {r['max_abs_logit_diff']:>11.3g} "
                         f"{r['argmax_agreement']:>10.5f} {r['dice']:>7.4f} {r['nodes']:>5} "
                         f"{r['short_axis_max_diff_mm']:>10.3f} {r['seconds']:>7.2f}")
    return "\n".join(lines)
