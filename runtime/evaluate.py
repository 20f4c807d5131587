"""`lnrt evaluate PRED GT`: the metrics lymph-node segmentation papers report.

Per scan:
- node detection: a true node (a ground-truth instance; a binary truth is split into 26-connected
  components) is detected "at any overlap" when a predicted voxel touches it, and "at > 50 %" when
  predicted voxels cover more than half of its voxels;
- false-positive nodes: predicted components (26-connected) that touch no true node;
- Dice of the foreground (all nodes together);
- Hausdorff distance HD and HD95 in mm between the foreground surfaces (surface voxels = voxels with a
  background face neighbour; distances from SimpleITK's Maurer distance map with the image spacing; HD95
  is the larger of the two directed 95th percentiles, as MONAI computes it); null when either side is
  empty;
- short-axis error of each detected node: the short axis (lnrt.recist, in the patient's axial plane) of
  the predicted component overlapping it most, minus the true node's own measured short axis;
- recall stratified by the true node's short axis: < 10, 10-15 and >= 15 mm (RECIST 1.1's cut-offs).
Over a set of scans, detection counts are pooled (recall = detected / all true nodes), false positives
averaged per scan, Dice and HD averaged, and the short-axis error summarised by its median.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LnrtError
from .imageio import read_labels, stem_of
from .nodes import component_stats, label_components
from .recist import recist_axes
from .volume import Orientation, Volume

STRATA = (("<10", 0.0, 10.0), ("10-15", 10.0, 15.0), (">=15", 15.0, math.inf))


def _instances(arr: np.ndarray) -> np.ndarray:
    if arr.size and int(arr.max()) <= 1:
        return label_components(arr > 0, 26)[0]
    return arr


def _surface(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    for axis in range(3):
        for step in (1, -1):
            shifted = np.roll(mask, step, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = 0 if step == 1 else -1
            shifted[tuple(edge)] = False
            inner &= shifted
    return mask & ~inner


def _distances(src: np.ndarray, dst: np.ndarray, spacing_xyz) -> np.ndarray:
    img = sitk.GetImageFromArray(dst.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    # keep the image alive while its array is used (a view of a temporary image would dangle)
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    dmap = sitk.GetArrayViewFromImage(dist)
    out = np.abs(dmap[_surface(src)])
    del dmap
    return out


def hausdorff(a: np.ndarray, b: np.ndarray, spacing_xyz) -> tuple:
    if not a.any() or not b.any():
        return None, None
    # distance of each surface voxel to the other mask's boundary; voxels inside the other count 0
    da = _distances(a, b, spacing_xyz) * ~b[_surface(a)]
    db = _distances(b, a, spacing_xyz) * ~a[_surface(b)]
    return float(max(da.max(), db.max())), float(max(np.percentile(da, 95), np.percentile(db, 95)))


def _boxes(labels: np.ndarray) -> tuple:
    """(ids present, {id: crop slices}) from one pass of component statistics."""
    st = component_stats(np.ascontiguousarray(labels), int(labels.max(initial=0)))
    ids = np.flatnonzero(st["count"]) + 1
    return [int(i) for i in ids], {int(i): tuple(slice(int(b[a]), int(b[a + 3]) + 1) for a in range(3))
                                   for i, b in zip(ids, st["bbox"][ids - 1])}


def _short_axes(labels: np.ndarray, ids, boxes: dict, vol: Volume, orient: Orientation) -> dict:
    """Short axis of each id, measured on its own crop (never a whole-volume mask per id)."""
    sp_c = vol.spacing_zyx[list(orient.perm)]
    out = {}
    for i in ids:
        axes = recist_axes(orient.to_canonical(labels[boxes[i]] == i), sp_c)
        out[int(i)] = axes.short_mm if axes else 0.0
    return out


def evaluate_scan(pred: Volume, truth: Volume, name: str = "scan") -> dict:
    if pred.shape != truth.shape:
        raise LnrtError(f"{name}: prediction shape {pred.shape[::-1]} differs from the truth's "
                        f"{truth.shape[::-1]}; expected masks on the same grid")
    if not np.allclose(pred.spacing, truth.spacing, rtol=1e-4):
        raise LnrtError(f"{name}: prediction spacing {pred.spacing} differs from the truth's {truth.spacing}")
    if not pred.same_geometry(truth):  # same grid, placed elsewhere or turned: scoring it would lie
        raise LnrtError(f"{name}: prediction origin {tuple(round(float(v), 3) for v in pred.origin)} or direction "
                        f"differs from the truth's ({tuple(round(float(v), 3) for v in truth.origin)}); expected "
                        "masks on the same grid in the same place")
    p = _instances(np.asarray(pred.array))
    t = _instances(np.asarray(truth.array))
    pf, tf = p > 0, t > 0
    orient = Orientation.of(truth.direction, name)
    t_ids, t_boxes = _boxes(t)
    p_ids, p_boxes = _boxes(p)
    true_short = _short_axes(t, t_ids, t_boxes, truth, orient)
    nodes = []
    matched_pred = {}
    p_counts = np.bincount(p.ravel())
    for i in t_ids:
        box = t_boxes[i]
        m = t[box] == i
        covered = pf[box][m]
        overlap = p[box][m][covered]
        best = int(np.bincount(overlap).argmax()) if overlap.size else None
        # the node's Dice against every predicted component touching it (a split node counts all its
        # pieces; a component that spills beyond the node counts whole): 0 for a missed node
        touching = int(p_counts[np.unique(overlap)].sum()) if overlap.size else 0
        nodes.append({"id": i, "short_axis_mm": round(true_short[i], 3), "voxels": int(m.sum()),
                      "coverage": round(float(covered.mean()), 4), "detected": bool(covered.any()),
                      "detected_50": bool(covered.mean() > 0.5), "pred_id": best,
                      "dice": round(2.0 * int(covered.sum()) / (int(m.sum()) + touching), 4)})
        if best is not None:
            matched_pred[i] = best
    pred_short = _short_axes(p, sorted(set(matched_pred.values())), p_boxes, pred, orient)
    for n in nodes:
        if n["pred_id"] is not None:
            n["short_axis_error_mm"] = round(pred_short[n["pred_id"]] - n["short_axis_mm"], 3)
    touching = set(np.unique(p[tf]).tolist()) - {0}
    fp = [i for i in p_ids if i not in touching]
    inter = np.logical_and(pf, tf).sum()
    denom = pf.sum() + tf.sum()
    hd, hd95 = hausdorff(pf, tf, truth.spacing)
    return {"name": name, "true_nodes": len(t_ids), "pred_nodes": len(p_ids),
            "detected": sum(n["detected"] for n in nodes), "detected_50": sum(n["detected_50"] for n in nodes),
            "false_positives": len(fp), "dice": round(float(2 * inter / denom), 4) if denom else 1.0,
            "hd_mm": None if hd is None else round(hd, 3), "hd95_mm": None if hd95 is None else round(hd95, 3),
            "nodes": nodes}


def summarize(scans: list) -> dict:
    nodes = [n for s in scans for n in s["nodes"]]

    def recall(sel, key="detected"):
        sel = list(sel)
        return None if not sel else round(sum(n[key] for n in sel) / len(sel), 4)
    def mean(v):
        return None if not v else round(float(np.mean(v)), 4)

    def stratum(lo, hi):
        sel = [n for n in nodes if lo <= n["short_axis_mm"] < hi]
        return {"nodes": len(sel), "recall": recall(sel), "recall_50": recall(sel, "detected_50"),
                "dice_per_node_mean": mean([n["dice"] for n in sel])}
    strata = {label: stratum(lo, hi) for label, lo, hi in STRATA}
    errors = [n["short_axis_error_mm"] for n in nodes if n["detected"] and "short_axis_error_mm" in n]
    hds = [s["hd_mm"] for s in scans if s["hd_mm"] is not None]
    hd95s = [s["hd95_mm"] for s in scans if s["hd95_mm"] is not None]
    return {
        "scans": len(scans), "true_nodes": len(nodes),
        "recall": recall(nodes), "recall_50": recall(nodes, "detected_50"),
        "recall_short_ge_5mm": recall(n for n in nodes if n["short_axis_mm"] >= 5),
        "recall_short_ge_10mm": recall(n for n in nodes if n["short_axis_mm"] >= 10),
        "recall_by_short_axis": strata,
        "false_positives_per_scan": mean([s["false_positives"] for s in scans]),
        "dice_mean": mean([s["dice"] for s in scans]),
        "hd_mm_mean": mean(hds), "hd95_mm_mean": mean(hd95s),
        "short_axis_error_mm_median": None if not errors else round(float(np.median(errors)), 3),
        "short_axis_abs_error_mm_median": None if not errors else round(float(np.median(np.abs(errors))), 3),
        "short_axis_abs_error_mm_p90": None if not errors else round(float(np.percentile(np.abs(errors), 90)), 3),
        "dice_per_node_mean": mean([n["dice"] for n in nodes]),
        "worst_nodes": worst_nodes(scans),
    }


WORST_NODES = 10  # listed in a summary: enough to see a pattern (issue 19's slivers), short enough to read


def worst_nodes(scans: list, count: int = WORST_NODES) -> list:
    """The true nodes segmented worst (lowest per-node Dice, then lowest coverage, then largest), with
    the scan they are in: where to look first when a model stops short."""
    rows = [{"scan": s["name"], "id": n["id"], "short_axis_mm": n["short_axis_mm"], "coverage": n["coverage"],
             "dice": n["dice"], "short_axis_error_mm": n.get("short_axis_error_mm")}
            for s in scans for n in s["nodes"]]
    return sorted(rows, key=lambda r: (r["dice"], r["coverage"], -r["short_axis_mm"]))[:count]


_SUFFIXES = (".nodes", ".truth", ".labels", ".label", ".seg", ".gt")


def _key(path: Path) -> str:
    stem = stem_of(path)
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_paths(pred: str | os.PathLike, truth: str | os.PathLike) -> list:
    """(pred, truth) file pairs: two files, or two folders matched by stem (ignoring .nodes/.truth...)."""
    p, t = Path(pred), Path(truth)
    for q in (p, t):
        if not q.exists():
            raise LnrtError(f"{q}: no such file or folder; expected a label image or a folder of them")
    if p.is_file() and t.is_file():
        return [(p, t)]
    if p.is_dir() and t.is_dir():
        def images(d):
            return {_key(f): f for f in sorted(d.iterdir())
                    if f.is_file() and any(f.name.lower().endswith(s) for s in (".nii", ".nii.gz", ".nrrd", ".mha"))}
        pi, ti = images(p), images(t)
        common = sorted(set(pi) & set(ti))
        if not common:
            raise LnrtError(f"{p} and {t}: no label images with matching names; expected pairs such as "
                            "scan.nodes.nii.gz and scan.nii.gz")
        return [(pi[k], ti[k]) for k in common]
    raise LnrtError(f"{p} and {t}: give two files or two folders")


def evaluate(pred: str | os.PathLike, truth: str | os.PathLike) -> dict:
    scans = [evaluate_scan(read_labels(a), read_labels(b), _key(a)) for a, b in pair_paths(pred, truth)]
    return {"schema": "lnrt.evaluation/1", "summary": summarize(scans), "scans": scans}


def format_table(result: dict) -> str:
    s = result["summary"]
    lines = [f"{'scan':<24} {'true':>5} {'found':>6} {'>50%':>5} {'FP':>4} {'Dice':>6} {'HD95 mm':>8}"]
    for r in result["scans"]:
        hd = "-" if r["hd95_mm"] is None else f"{r['hd95_mm']:.1f}"
        lines.append(f"{r['name'][:24]:<24} {r['true_nodes']:>5} {r['detected']:>6} {r['detected_50']:>5} "
                     f"{r['false_positives']:>4} {r['dice']:>6.3f} {hd:>8}")

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)
    lines += ["", f"recall (any overlap) {f(s['recall'])}   recall (>50 %) {f(s['recall_50'])}   "
              f"short >= 5 mm {f(s['recall_short_ge_5mm'])}   short >= 10 mm {f(s['recall_short_ge_10mm'])}",
              "recall by true short axis: " + "   ".join(
                  f"{k} mm: {f(v['recall'])} ({v['nodes']})" for k, v in s["recall_by_short_axis"].items()),
              f"false positives per scan {f(s['false_positives_per_scan'], '{:.2f}')}   mean Dice "
              f"{f(s['dice_mean'])}   mean HD {f(s['hd_mm_mean'], '{:.1f}')} mm   mean HD95 "
              f"{f(s['hd95_mm_mean'], '{:.1f}')} mm",
              f"short-axis error of detected nodes: median {f(s['short_axis_error_mm_median'], '{:+.2f}')} mm, "
              f"median |error| {f(s['short_axis_abs_error_mm_median'], '{:.2f}')} mm, 90th percentile |error| "
              f"{f(s['short_axis_abs_error_mm_p90'], '{:.2f}')} mm",
              f"Dice per node: mean {f(s['dice_per_node_mean'])}   by true short axis: " + "   ".join(
                  f"{k} mm: {f(v['dice_per_node_mean'])}" for k, v in s["recall_by_short_axis"].items())]
    if s["worst_nodes"]:
        lines += ["", "worst nodes (scan, id, true short axis, coverage, Dice, short-axis error):"]
        lines += [f"  {w['scan'][:24]:<24} {w['id']:>4} {w['short_axis_mm']:>6.1f} mm {w['coverage']:>6.1%} "
                  f"{w['dice']:>6.3f} {f(w['short_axis_error_mm'], '{:+.1f}'):>6} mm" for w in s["worst_nodes"]]
    return "\n".join(lines)
