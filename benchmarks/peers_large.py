"""lnrt against nnU-Net's predictor and MONAI on a real-sized nnU-Net model, side by side in one run
(issue 22).

    python benchmarks/peers_large.py [--scans neck,whole] [--threads 2] [--cache /tmp/lnrt-peers-large]
    python benchmarks/peers_large.py --folder RUN/nnUNetTrainer__nnUNetPlans__3d_fullres --package PKG \
        --engines openvino:fp32,openvino:int8,onnxruntime:fp32 --tag trained   # a trained model

With `--folder` and `--package` a trained network of the same size (`lnrt.models.train_nnunet`, its
package exported with its gated variants by `lnrt export nnunet`) replaces the random one; an engine's
variant must be one the package holds, i.e. one that passed its gate.

The model is the size users bring: an nnU-Net v2 `3d_fullres` results folder with a PlainConvUNet of 5
stages (32-64-128-256-320 features, InstanceNorm, 16.5 M parameters), patch 64 x 128 x 128 at 2 x 1 x 1 mm
(`lnrt.models.nnunet_folder.LARGE`), **random weights** with the head's bias set so that a third of a
neck phantom's first patch is foreground: timing is what this measures, not segmentation, and such a
network gives thousands of noise components (the worst case for measurement). Imported with
`lnrt export nnunet` (FP32; InstanceNorm, so nnU-Net's tile grid over the whole scan, air tiles skipped).

Scans: a 256 x 256 x 96 neck phantom at the model's spacing (1 x 1 x 2 mm) and a whole neck,
512 x 512 x 250 at 0.5 x 0.5 x 1 mm. Each engine runs in its own process (so its peak memory is its
own, sampled every 0.25 s over the process tree), one after the other:
- `lnrt_<backend>_<variant>`: `Session.run(scan).save(out)`, the session made before the clock starts
  (as the predictor is initialised before it), per-stage timings from the report;
- `nnunet_predictor`: read with SimpleITK, `predict_single_npy_array` (no mirroring, step 0.5, Gaussian),
  write with SimpleITK;
- `monai_window`: MONAI's `sliding_window_inference` (the PyTorch module, batch 2, overlap 0.5, Gaussian
  sigma 1/8) on the same normalized model-grid volume, the window stage alone (every tile of the grid).
Voxel agreement with nnU-Net is of lnrt's foreground before any component filtering (taken from the
pipeline after its postprocess stage): over every voxel, and over the body (HU > -500); the share of
nnU-Net's foreground that lies in air says how much of the all-voxel disagreement is the random
network's calls on air that lnrt's skipped tiles never make. Tile batching is timed per backend too.
Writes `benchmarks/results/<host>-<date>-peers-large.json`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCANS = {"neck": ((256, 256, 96), (1.0, 1.0, 2.0)), "whole": ((512, 512, 250), (0.5, 0.5, 1.0))}
LNRT_ENGINES = ("openvino:fp32", "openvino:bf16", "onnxruntime:fp32")


def nnunet_env(root: Path) -> None:
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(key, str(root))


def make_model(cache: Path, folder: Path | None = None, pkg: Path | None = None) -> tuple:
    """(results folder, lnrt package): the given trained pair, or the random-weight real-sized model,
    made once in `cache`."""
    if folder is not None:
        return folder, pkg
    from lnrt.export.nnunet import import_nnunet
    from lnrt.models import nnunet_folder as nf
    from lnrt.models.neck import make_spec, render

    folder, pkg = cache / "results", cache / "pkg"
    if not (folder / "fold_0" / "checkpoint_final.pth").exists():
        hu, _, _ = render(make_spec(30001), nf.LARGE.spacing, fov_xy=(256.0, 256.0))
        nf.make_folder(folder, folds=(0,), probe=hu, shape=nf.LARGE)
    if not (pkg / "lnrt.json").exists():
        import_nnunet(folder, pkg, variants=())
    return folder, pkg


def foreground_before_filtering(session, scan) -> tuple:
    """(Result of session.run(scan), foreground mask on the input grid before any component filtering):
    the pipeline's stages with a copy of the foreground taken after its postprocess stage."""
    import lnrt.session as ls
    from lnrt.pipeline import STAGES, Stage

    seen = {}

    def snapshot(s, dev):
        if s.fg is not None:
            seen["fg"], seen["box"], seen["orient"] = dev.to_host(s.fg).copy(), s.fg_box, s.orient

    stages = []
    for st in STAGES:
        stages.append(st)
        if st.name == "postprocess":
            stages.append(Stage("snapshot", snapshot))
    original = ls.run_stages
    ls.run_stages = lambda ctx, dev: original(ctx, dev, stages=stages)
    try:
        res = session.run(scan)
    finally:
        ls.run_stages = original
    res.timings.pop("snapshot", None)
    full = np.zeros(tuple(np.asarray(res.labels.shape)[list(seen["orient"].perm)]) if seen else res.labels.shape,
                    bool)
    if seen:
        full[tuple(slice(a, b) for a, b in seen["box"])] = seen["fg"]
        full = seen["orient"].from_canonical(full)
    return res, full


def child_lnrt(engine: str, scan: Path, pkg: Path, out: Path, threads: int) -> dict:
    import lnrt

    backend, variant = engine.split(":")
    with lnrt.Session(pkg, backend=backend, variant=variant, threads=threads) as s:
        t0 = time.perf_counter()
        res, fg = foreground_before_filtering(s, scan)
        res.save(out / "out", overwrite=True)
        wall = time.perf_counter() - t0
    np.save(out / "mask.npy", fg)
    return {"end_to_end_s": round(wall, 3), "stages_s": {k: round(v, 3) for k, v in res.timings.items()},
            "tiles_run": res.settings["tiles"], "nodes": len(res.nodes),
            "min_volume_rule": res.settings["rules"].get("min_volume")}


def child_nnunet(scan: Path, folder: Path, out: Path, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from peers import nnunet_end_to_end

    torch.set_num_threads(threads)
    nnunet_env(folder)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    t0 = time.perf_counter()
    seg = nnunet_end_to_end(pred, scan, out / "nnunet_seg.nii.gz")
    wall = time.perf_counter() - t0
    np.save(out / "mask.npy", seg > 0)
    return {"end_to_end_s": round(wall, 3)}


def child_monai(scan: Path, folder: Path, pkg: Path, threads: int) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    import lnrt
    from lnrt.export.nnunet import build_network, read_folder
    from lnrt.imageio import read_scan
    from lnrt.preprocess import normalize, resample
    from lnrt.volume import Orientation

    torch.set_num_threads(threads)
    info = read_folder(folder, None, None, "checkpoint_final.pth")
    arch = info["config"]["architecture"]
    net = build_network(arch, 1, 2, folder / "plans.json", "architecture")
    net.load_state_dict(info["checkpoints"][0]["network_weights"])
    net.eval()
    vol, _ = read_scan(scan)
    with lnrt.Session(pkg, backend="onnxruntime", threads=threads) as s:
        prep = s.prepare(vol)
        patch = tuple(s.package.patch_zyx)
        norm = s.package.section("normalization")
    hu = resample(Orientation.of(vol.direction).to_canonical(vol.array), prep.native, prep.grid, default=-1024.0)
    x = torch.from_numpy(normalize(hu, norm)[None, None])
    t0 = time.perf_counter()
    with torch.no_grad():
        sliding_window_inference(x, patch, 2, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    return {"window_s": round(time.perf_counter() - t0, 3), "grid_zyx": list(hu.shape)}


def child_batches(pkg: Path, threads: int) -> dict:
    """Seconds per tile at batch 1, 2 and 4 for each CPU backend and precision (4 tiles each after one
    warm-up call)."""
    from lnrt.backends import REGISTRY, available
    from lnrt.package import ModelPackage

    p = ModelPackage.load(pkg)
    x = np.random.default_rng(0).normal(size=(4, 1) + tuple(p.patch_zyx)).astype(np.float32)
    out = {}
    for name in available():
        for prec in REGISTRY[name].precisions:
            try:
                be = REGISTRY[name].factory(p.onnx_path("fp32"), threads=threads, precision=prec)
            except Exception as exc:  # noqa: BLE001 - e.g. bf16 on a CPU without it
                out[f"{name}_{prec}"] = str(exc)
                continue
            for bs in (1, 2, 4):
                be.run(x[:bs])
                t0 = time.perf_counter()
                for i in range(0, 4, bs):
                    be.run(x[i:i + bs])
                out[f"{name}_{prec}_batch{bs}"] = round((time.perf_counter() - t0) / 4, 3)
            be.close() if hasattr(be, "close") else None
    return out


def run_child(args: list, log) -> dict:
    """Run this script as a child with `args`, sampling the tree's memory; returns its JSON + peak."""
    sys.path.insert(0, str(HERE))
    from peak_memory import tree_rss_mb

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(result_path), *args])
    peak = [0.0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    proc.wait()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with status {proc.returncode}")
    out = json.loads(result_path.read_text())
    result_path.unlink()
    out["peak_rss_mb"] = round(peak[0], 1)
    log(f"{args[0]} {Path(args[1]).name if len(args) > 1 else ''}: {json.dumps(out)}")
    return out


def agreement(ours: np.ndarray, theirs: np.ndarray, hu: np.ndarray) -> dict:
    body = hu > -500
    eq = ours == theirs
    inter = np.count_nonzero(ours & theirs)
    tot = np.count_nonzero(ours) + np.count_nonzero(theirs)
    return {"all_voxels": round(float(eq.mean()), 6), "body_voxels": round(float(eq[body].mean()), 6),
            "dice": round(2 * inter / tot, 5) if tot else 1.0,
            "nnunet_foreground_in_air_share": round(float(theirs[~body].sum() / max(theirs.sum(), 1)), 4),
            "lnrt_foreground_in_air_share": round(float(ours[~body].sum() / max(ours.sum(), 1)), 4)}


def child_main(argv: list) -> None:
    result_path, kind, *rest = argv
    threads = int(os.environ.get("LNRT_BENCH_THREADS", os.cpu_count()))
    if kind == "lnrt":
        engine, scan, pkg, out = rest
        res = child_lnrt(engine, Path(scan), Path(pkg), Path(out), threads)
    elif kind == "nnunet":
        scan, folder, out = rest
        res = child_nnunet(Path(scan), Path(folder), Path(out), threads)
    elif kind == "monai":
        scan, folder, pkg = rest
        res = child_monai(Path(scan), Path(folder), Path(pkg), threads)
    else:
        res = child_batches(Path(rest[0]), threads)
    Path(result_path).write_text(json.dumps(res))


def main() -> None:
    if "--child" in sys.argv:
        return child_main(sys.argv[sys.argv.index("--child") + 1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", default="neck,whole")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lnrt-peers-large")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-batches", action="store_true", help="skip the per-backend batch timing")
    ap.add_argument("--folder", type=Path, help="a trained nnU-Net results folder of this size (with --package)")
    ap.add_argument("--package", type=Path, help="its lnrt package, exported with `lnrt export nnunet`")
    ap.add_argument("--engines", default=",".join(LNRT_ENGINES), help="lnrt's backend:variant pairs")
    ap.add_argument("--tag", default="", help="appended to the results file's name (peers-large-TAG)")
    args = ap.parse_args()
    if (args.folder is None) != (args.package is None):
        ap.error("--folder and --package go together")
    os.environ["LNRT_BENCH_THREADS"] = str(args.threads)
    from lnrt.bench import machine_info, save_result, synthetic_scan
    from lnrt.imageio import read_scan

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    args.cache.mkdir(parents=True, exist_ok=True)
    folder, pkg = make_model(args.cache, args.folder, args.package)
    res = {"schema": "lnrt.peers-large/1", "date": dt.date.today().isoformat(), "machine": machine_info(args.threads),
           "model": {"shape": "PlainConvUNet 5 stages 32-64-128-256-320, InstanceNorm, 16.5 M parameters",
                     "patch_zyx": [64, 128, 128], "spacing_zyx_mm": [2.0, 1.0, 1.0],
                     "weights": f"trained: {args.folder}" if args.folder else
                     "random (timing only), head bias for 1/3 foreground on a neck patch"},
           "settings": {"step": 0.5, "sigma_scale": 0.125, "mirroring": False, "lnrt_batch": 2},
           "batches_s_per_tile": None if args.no_batches else run_child(["batches", str(pkg)], log), "scans": {}}
    for name in args.scans.split(","):
        size, spacing = SCANS[name]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            scan = synthetic_scan(size, spacing_xyz=spacing, out_dir=tmp)
            hu = read_scan(scan)[0].array
            row = {"size_xyz": list(size), "spacing_xyz_mm": list(spacing), "engines": {}}
            masks = {}
            for engine in args.engines.split(","):
                d = tmp / engine.replace(":", "_")
                d.mkdir()
                row["engines"][f"lnrt_{engine.replace(':', '_')}"] = run_child(["lnrt", engine, str(scan), str(pkg),
                                                                                str(d)], log)
                masks[engine] = np.load(d / "mask.npy")
            d = tmp / "nnunet"
            d.mkdir()
            row["engines"]["nnunet_predictor"] = run_child(["nnunet", str(scan), str(folder), str(d)], log)
            theirs = np.load(d / "mask.npy")
            row["engines"]["monai_window"] = run_child(["monai", str(scan), str(folder), str(pkg)], log)
            row["agreement_with_nnunet"] = {e.replace(":", "_"): agreement(m, theirs, hu) for e, m in masks.items()}
            nn = row["engines"]["nnunet_predictor"]["end_to_end_s"]
            row["nnunet_over_lnrt_end_to_end"] = {k: round(nn / v["end_to_end_s"], 2) for k, v in row["engines"].items()
                                                  if k.startswith("lnrt_")}
            monai = row["engines"]["monai_window"]["window_s"]
            row["monai_window_over_lnrt_window"] = {
                k: round(monai / (v["stages_s"]["network"] + v["stages_s"]["accumulate"]), 2)
                for k, v in row["engines"].items() if k.startswith("lnrt_")}
            res["scans"][name] = row
            log(json.dumps({k: row[k] for k in ("nnunet_over_lnrt_end_to_end", "agreement_with_nnunet")}))
    path = save_result(res, args.out, "peers-large" + (f"-{args.tag}" if args.tag else ""))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
