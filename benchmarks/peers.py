"""lnrt against its peers, side by side in one process on one scan (issue: bench and OpenVINO).

    python benchmarks/peers.py [--size 512x512x250] [--threads 2]

Same weights (the default model), same scan (a whole-neck-sized phantom, 0.5 x 0.5 x 1 mm), same
settings (patch 48x96x96, step 0.5, Gaussian sigma 1/8, no mirroring), run pair by pair in one run:
- lnrt end to end (read, preprocess, window, postprocess, components, measure, write) on each CPU
  backend here, against nnU-Net v2's own predictor end to end (read with SimpleITK,
  `predict_single_npy_array`, write with SimpleITK). nnU-Net runs the default model through a results
  folder written here whose plans name `lnrt.models.unet.PlansUNet` and whose CT normalization
  (clip -200..400, mean -200, std 600) equals the model's window; it resamples with 3rd-order splines.
- The sliding-window stage alone on the same normalized model-grid volume: MONAI's
  `sliding_window_inference` with the PyTorch module, against lnrt's window on the same array (whole
  grid, no body skipping, so the same tiles) and lnrt's window as `lnrt infer` runs it (body tiles only).
- Components and measurements: cc3d + NumPy the straightforward way (cc3d.statistics, one boolean
  mask of the whole volume per node) against lnrt's one-pass node table, on the same label map.
Writes `benchmarks/results/<host>-<date>-peers.json` and prints the ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def default_weights() -> dict:
    """The default model's weights: {"unet": config, "model": state dict}."""
    import torch

    from lnrt.package import default_package_path

    return torch.load(Path(default_package_path()).parent / "edge_weights.pt", weights_only=True)


def nnunet_folder(root: Path, state: dict) -> Path:
    """An nnU-Net v2 results folder holding the default model's weights."""
    import torch

    from lnrt.models.train import SPACING, WINDOW, INFER_PATCH

    cfg = dict(state["unet"])
    for k in ("in_channels", "num_classes", "deep_supervision"):
        cfg.pop(k)
    lo, hi = WINDOW
    plans = {
        "dataset_name": "Dataset902_LnrtDefault", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(SPACING), "original_median_shape_after_transp": [64, 256, 256],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": lo, "median": 40.0, "min": -1024.0, "percentile_00_5": lo,
            "percentile_99_5": hi, "std": hi - lo}},
        "configurations": {"3d_fullres": {
            "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(INFER_PATCH), "median_image_size_in_voxels": [64, 256, 256],
            "spacing": list(SPACING), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {"network_class_name": "lnrt.models.unet.PlansUNet", "arch_kwargs": cfg,
                             "_kw_requires_import": []},
            "batch_dice": False}},
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lymph_node": 1}, "numTraining": 1,
               "file_ending": ".nii.gz"}
    (root / "fold_0").mkdir(parents=True, exist_ok=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    torch.save({"network_weights": state["model"], "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": [0, 1, 2]},
               root / "fold_0" / "checkpoint_final.pth")
    return root


def nnunet_end_to_end(pred, scan: Path, out_path: Path) -> np.ndarray:
    """nnU-Net's predictor end to end on a scan file: SimpleITK read, `predict_single_npy_array`, SimpleITK
    write of the segmentation to `out_path`; returns the segmentation."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(scan))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)[None]
    seg = pred.predict_single_npy_array(arr, {"spacing": list(img.GetSpacing())[::-1]})
    out = sitk.GetImageFromArray(seg.astype(np.uint8))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(out_path), useCompression=True)
    return seg


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def naive_nodes(mask: np.ndarray, vol) -> int:
    """cc3d + NumPy the straightforward way: statistics, then one whole-volume mask per node."""
    import cc3d

    from lnrt.recist import recist_axes

    labels = cc3d.connected_components(mask, connectivity=26)
    stats = cc3d.statistics(labels)
    sp = vol.spacing_zyx
    for i, box in enumerate(stats["bounding_boxes"]):
        if i == 0:
            continue
        node = labels == i
        recist_axes(node[box], sp)
    return len(stats["voxel_counts"]) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512x512x250")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    import torch

    import lnrt
    from lnrt.backends import available
    from lnrt.bench import machine_info, parse_size, save_result, synthetic_scan
    from lnrt.imageio import read_scan
    from lnrt.nodes import label_components, node_table
    from lnrt.sliding_window import SlidingWindowConfig, sliding_window
    from lnrt.volume import Orientation

    torch.set_num_threads(args.threads)
    os.environ.setdefault("nnUNet_raw", "/tmp")
    os.environ.setdefault("nnUNet_preprocessed", "/tmp")
    os.environ.setdefault("nnUNet_results", "/tmp")
    res = {"schema": "lnrt.peers/1", "date": dt.date.today().isoformat(), "machine": machine_info(args.threads),
           "settings": {"patch_zyx": [48, 96, 96], "step": 0.5, "sigma_scale": 0.125, "mirroring": False}}
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = synthetic_scan(parse_size(args.size), out_dir=tmp)
        vol, _ = read_scan(scan)
        res["scan"] = {"size_xyz": list(vol.shape[::-1]), "spacing_xyz_mm": list(vol.spacing)}
        # 1. end to end: lnrt per backend vs nnU-Net's predictor
        e2e = {}
        for backend in available():
            with lnrt.Session(backend=backend, threads=args.threads) as s:
                s.run(scan)  # warm-up
                r, t = timed(lambda: s.run(scan).save(tmp / f"o_{backend}", overwrite=True))
                e2e[f"lnrt_{backend}"] = round(t, 3)
                log(f"lnrt {backend}: {t:.1f} s")
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        state = default_weights()
        folder = nnunet_folder(tmp / "nnunet", state)
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                               device=torch.device("cpu"), allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))

        seg, t = timed(lambda: nnunet_end_to_end(pred, scan, tmp / "nnunet_seg.nii.gz"))
        e2e["nnunet_predictor"] = round(t, 3)
        log(f"nnU-Net predictor: {t:.1f} s")
        with lnrt.Session(backend="onnxruntime", threads=args.threads) as s:
            ours = s.run(scan).labels > 0
        theirs = seg > 0
        tot = ours.sum() + theirs.sum()
        e2e["dice_lnrt_vs_nnunet"] = round(float(2 * (ours & theirs).sum() / tot), 4) if tot else 1.0
        res["end_to_end_s"] = e2e
        # 2. the window stage on the same normalized model-grid volume
        from monai.inferers import sliding_window_inference

        from lnrt.models.unet import UNet
        net = UNet(state["unet"])
        net.load_state_dict(state["model"])
        net.eval()
        window = {}
        with lnrt.Session(backend="onnxruntime", threads=args.threads) as s:
            prep = s.prepare(vol)
        from lnrt.preprocess import normalize, resample
        hu = resample(Orientation.of(vol.direction).to_canonical(vol.array), prep.native, prep.grid,
                      default=-1024.0)
        full = normalize(hu, lnrt.ModelPackage.load().section("normalization"))
        x = torch.from_numpy(full[None, None])
        with torch.no_grad():
            _, t = timed(lambda: sliding_window_inference(x, (48, 96, 96), 2, net, overlap=0.5, mode="gaussian",
                                                          sigma_scale=0.125))
        window["monai_torch_full_grid"] = round(t, 3)
        log(f"MONAI window: {t:.1f} s")
        cfg = SlidingWindowConfig(patch=(48, 96, 96), overlap=0.5, sigma_scale=0.125, batch_size=2)
        for backend in available():
            with lnrt.Session(backend=backend, threads=args.threads) as s:
                _, t = timed(lambda: sliding_window(full, s.backend.run, cfg))
                window[f"lnrt_{backend}_full_grid"] = round(t, 3)
                _, t = timed(lambda: sliding_window(prep.image, s.backend.run, cfg, mask=prep.body))
                window[f"lnrt_{backend}_body_tiles"] = round(t, 3)
                log(f"lnrt window {backend}: {window[f'lnrt_{backend}_full_grid']:.1f} s full grid, {t:.1f} s body")
        res["window_s"] = window
        # 3. components and measurements on the same mask
        orient = Orientation.of(vol.direction)
        (labels, _), t_cc = timed(lambda: label_components(ours, 26, 0))
        _, t_me = timed(lambda: node_table(labels, vol, orient, image=vol.array))
        n, t_naive = timed(lambda: naive_nodes(ours, vol))
        res["components_measure_s"] = {"lnrt": round(t_cc + t_me, 3), "cc3d_numpy_naive": round(t_naive, 3),
                                       "nodes": int(n)}
    best = min(v for k, v in e2e.items() if k.startswith("lnrt_"))
    best_w = min(v for k, v in window.items() if k.endswith("_full_grid") and k.startswith("lnrt"))
    res["ratios"] = {
        "nnunet_predictor_over_lnrt_end_to_end": round(e2e["nnunet_predictor"] / best, 2),
        "monai_window_over_lnrt_window_same_tiles": round(window["monai_torch_full_grid"] / best_w, 2),
        "monai_window_over_lnrt_window_as_run": round(window["monai_torch_full_grid"] / min(
            v for k, v in window.items() if k.endswith("_body_tiles")), 2),
        "naive_over_lnrt_components_measure": round(t_naive / (t_cc + t_me), 2),
    }
    path = save_result(res, args.out, "peers")
    print(json.dumps({k: res[k] for k in ("end_to_end_s", "window_s", "components_measure_s", "ratios")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
