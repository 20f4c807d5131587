"""Build an lnrt model package from a PyTorch module: ONNX export, parity with PyTorch, gated variants.

Everything is written into a staging folder beside `out` (`.OUT.staging`) and renamed into place at the
end, so a failed export leaves nothing behind. A staging folder that a killed export left (the
out-of-memory killer, kill -9: no `finally` runs) is removed by the next export to the same `out`, with a
note; while an export runs it holds a flock on `.OUT.lock` beside `out`, and a second export to the same
`out` is refused.
Each step logs a progress line with the elapsed time (`lnrt.export.Progress`). Steps:
1. export the module (`lnrt.export.torch_export`), axis transpose baked into the graph when the model was
   trained on another axis order (nnU-Net's `transpose_forward`), so the ONNX always takes and returns
   lnrt's (z, y, x) patches;
2. write the FP32 package and check its ONNX against PyTorch on phantom tiles preprocessed exactly as
   `lnrt infer` does (max abs logit difference, argmax Dice >= 0.999, else refused);
3. add the requested precision variants through their parity gates (`lnrt.export.variants`).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from lnrt.atomic import commit, lock_file
from lnrt.errors import LnrtError
from lnrt.package import ModelPackage, make_manifest, write_manifest

from . import Progress, release_memory
from .torch_export import export_module, first_output, slice_module, torch_parity

log = logging.getLogger("lnrt")

ARGMAX_DICE_MIN = 0.999
# Slices per network call for 2D and 2.5D models: a slice is 1/48 of the default 3D tile, so two per call
# would leave the backend idle between calls (benchmarks/slice_models.py measures the batch)
SLICE_BATCH = 16
# A cascade's first stage lives in this folder of its package (input.previous_stage.package)
PREVIOUS_STAGE_DIR = "previous_stage"


def check_input_kind(kind: str, context: int, patch_zyx, spacing_zyx) -> str:
    """The input kind, refused in one line where the patch, context or spacing do not fit it."""
    from lnrt.package import INPUT_KINDS, MAX_CONTEXT_SLICES

    if kind not in INPUT_KINDS:
        raise LnrtError(f"input kind {kind!r}: expected one of {', '.join(INPUT_KINDS)}")
    if kind == "3d":
        if context or any(s is None for s in spacing_zyx):
            raise LnrtError("a 3d model takes no context slices and a spacing on every axis; expected "
                            "--input-kind 2d or 2.5d for a slice model")
        return kind
    if int(patch_zyx[0]) != 1:
        raise LnrtError(f"patch {tuple(patch_zyx)}: a {kind} model's patch is one slice; expected --patch 1 Y X")
    if (kind == "2.5d") != (context > 0) or not 0 <= context <= MAX_CONTEXT_SLICES:
        raise LnrtError(f"{kind} model with {context} context slices: expected 1 to {MAX_CONTEXT_SLICES} "
                        "context slices for 2.5d and none for 2d")
    return kind


def build_package(module, out, name: str, version: str, spacing_zyx, patch_zyx, normalization: dict,
                  classes, provenance: dict, transpose=(0, 1, 2), mirror_axes=(), variants=(),
                  calib=None, keep=(), force: bool = False, overwrite: bool = False,
                  min_volume_mm3: float = 10.0, probe_volumes: int = 1, threads: int | None = None,
                  tiling: str = "body_box", input_kind: str = "3d", context_slices: int = 0,
                  batch_size: int | None = None, previous_stage: tuple | None = None,
                  resampling: dict | None = None, accumulate: str = "float32") -> Path:
    """`previous_stage` = (a finished lnrt package folder, its labels fed as masks) makes a cascade: the
    first stage's package is copied whole into the new package's `previous_stage/` and pinned by its
    sha256 in the manifest, and `module` takes 1 + len(labels) input channels. Precision variants are
    the second stage's: their gates and INT8 calibration run whole cascade sessions (tiles with the mask
    channels), the first stage staying fp32. `resampling`: the manifest's section of that name (None:
    lnrt's own resampling; nnU-Net imports set nnU-Net's, see lnrt.splines); `accumulate`: the sliding
    window's sums (nnU-Net imports: "float16", as nnU-Net's predictor sums)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LnrtError(f"{out}: already exists; expected a new folder (or --overwrite)")
    progress = Progress()
    stage, lock = _staging(out)
    try:
        progress("exporting the network to ONNX")
        kind = check_input_kind(input_kind, context_slices, patch_zyx, spacing_zyx)
        net = first_output(slice_module(module) if kind != "3d" else module, transpose)
        pz, py, px = patch_zyx
        prev = _nest_previous_stage(stage, previous_stage) if previous_stage else None
        model, check = export_module(net, (pz + 2 * context_slices, py, px),
                                     in_channels=1 + len(prev["labels"]) if prev else 1)
        (stage / "model.onnx").write_bytes(model.SerializeToString())
        progress(f"ONNX written ({(stage / 'model.onnx').stat().st_size / 1e6:.1f} MB); checking it against "
                 f"PyTorch on {probe_volumes} phantom(s)")
        batch = batch_size or (SLICE_BATCH if kind != "3d" else 2)
        sw = {"overlap": 0.5, "sigma_scale": 0.125, "mirror_axes": [], "batch_size": batch,
              "allowed_mirror_axes": [int(a) for a in mirror_axes],
              **({"accumulate": accumulate} if accumulate != "float32" else {})}
        prov = dict(provenance)
        prov["export"] = check
        manifest = make_manifest(name, version, spacing_zyx, patch_zyx, normalization, prov,
                                 classes=classes, min_volume_mm3=min_volume_mm3, sliding_window=sw,
                                 input_kind=kind, context_slices=context_slices, previous_stage=prev)
        if tiling != "body_box":  # see lnrt.preprocess.BodyCropConfig
            manifest["body_crop"] = {**manifest["body_crop"], "tiling": tiling}
        if resampling is not None:
            manifest["resampling"] = resampling
        write_manifest(stage, manifest)
        pkg = ModelPackage.load(stage)
        parity = _parity_on_phantoms(pkg, net, probe_volumes, threads)
        release_memory()
        check.update(parity)
        if parity["argmax_dice"] < ARGMAX_DICE_MIN and not force:
            raise LnrtError(f"ONNX export does not reproduce PyTorch: argmax Dice {parity['argmax_dice']:.4f} "
                            f"< {ARGMAX_DICE_MIN}, max logit difference {parity['max_abs_logit_diff']:.3g}")
        manifest["provenance"]["export"] = check
        write_manifest(stage, manifest)
        if variants:  # a cascade's are of its second stage, gated through both stages (the first in fp32)
            from .variants import add_variants
            add_variants(stage, variants, calib=calib, keep=keep, force=force, threads=threads, progress=progress)
        if out.exists() and not out.is_dir():
            out.unlink()
        commit(stage, out)  # an older package folder there is replaced
        progress(f"package written to {out}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        os.close(lock)
    return out


def _nest_previous_stage(stage: Path, previous_stage: tuple) -> dict:
    """Copy the first stage's package into `stage/previous_stage` and return the manifest's
    `input.previous_stage` for it (its sha256 as loaded and verified from the copy)."""
    src, labels = previous_stage
    dst = stage / PREVIOUS_STAGE_DIR
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("parity.*.json"))
    first = ModelPackage.load(dst)
    return {"package": PREVIOUS_STAGE_DIR, "package_sha256": first.package_sha256,
            "labels": [int(v) for v in labels]}


def _staging(out: Path) -> tuple:
    """(the staging folder beside `out`, the fd holding the export's lock). The lock (a flock on
    `.OUT.lock` beside it, taken before the folder is looked at, held until the export ends, and left in
    place: removing a lock file races with the next export opening it) makes one export per `out` at a
    time; a staging folder found while holding it was left by an export that was killed, and is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.staging")
    try:
        fd = lock_file(out.with_name(f".{out.name}.lock"))
    except BlockingIOError as exc:
        raise LnrtError(f"{out}: another export is writing this package (its lock is {exc}); expected one "
                        "export per output folder") from None
    try:
        if stage.exists() or stage.is_symlink():
            log.warning("removing %s, left by an export that did not finish", stage)
            shutil.rmtree(stage) if stage.is_dir() and not stage.is_symlink() else stage.unlink()
        stage.mkdir()
    except BaseException:
        os.close(fd)
        raise
    return stage, fd


def _parity_on_phantoms(pkg: ModelPackage, net, n: int, threads) -> dict:
    from lnrt.session import Session

    from .gate import calibration_tiles, gate_volumes

    with Session(pkg, backend="onnxruntime", device="cpu", threads=threads) as s:
        tiles = calibration_tiles(s, gate_volumes(n), per_volume=2, seed=5)
        import onnx
        return torch_parity(net, onnx.load(str(pkg.onnx_path("fp32"))), tiles)
