"""The Python API: `Session` loads a model once and runs scan after scan; `measure` reports nodes of
an existing segmentation.

    import lnrt
    session = lnrt.Session()                 # the embedded default model, automatic backend
    result = session.run("scan.nii.gz")      # or a DICOM folder, or an lnrt.Volume
    result.nodes, result.timings             # node table (list of dicts), seconds per stage
    result.save("out/")                      # scan.nodes.nii.gz, scan.report.json, scan.nodes.csv

A session keeps only the model and its backend between scans: every array of a run belongs to the
run's `Result`, so memory does not grow with the number of scans.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from . import __version__
from .backends import available, create_backend
from .errors import LnrtError
from .imageio import ScanInfo, read_labels, read_scan, to_sitk
from .nodes import keep_nodes, label_components, node_table
from .outputs import SCHEMA, check_writable, planned_extras, write_outputs, write_text
from .package import ModelPackage
from .preprocess import BodyCropConfig, Grid, body_mask, bounding_box, box_slices, model_grid, normalize, resample
from .region import NeckRegion, NeckRegionConfig, find_neck_region
from .sliding_window import SlidingWindowConfig, sliding_window
from .volume import OBLIQUE_SILENT_DEG, Orientation, Volume, voxel_volume_mm3, world_to_index

log = logging.getLogger("lnrt")
Progress = Callable[[str, int, int], None]


def _physical_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


@dataclass
class Result:
    """What one run gives: labels on the input's grid, the node table, timings and provenance."""

    labels: np.ndarray  # (z, y, x) in the input's array order, uint16
    geometry: Volume  # the input's geometry (its array is the input scan, or the labels for measure)
    nodes: list
    timings: dict
    info: ScanInfo
    model: dict | None = None
    settings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def label_image(self) -> sitk.Image:
        return to_sitk(self.geometry, self.labels)

    def report(self) -> dict:
        g = self.geometry
        inp = {
            "path": self.info.path, "kind": self.info.kind, "stem": self.info.stem,
            "size_xyz": list(g.shape[::-1]), "spacing_xyz_mm": list(g.spacing),
            "origin_xyz_mm": list(g.origin), "direction": np.asarray(g.direction).ravel().tolist(),
        }
        for key in ("series_uid", "study_uid", "modality"):
            if getattr(self.info, key):
                inp[key] = getattr(self.info, key)
        inp.update(self.info.extra)
        return {"schema": SCHEMA, "lnrt_version": __version__, "input": inp, "model": self.model,
                "settings": self.settings, "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "warnings": self.warnings, "nodes": self.nodes}

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False, viewer: bool = True,
             qc: bool = False, dicom_seg: bool | None = None, dicom_sr: bool = False,
             seg_segments: str = "node", equipment=None) -> dict:
        """Write the outputs; see the README's Outputs section. Returns {name: path}.

        Everything that can fail (DICOM datasets, QC pictures) is built in memory first: a failure
        leaves no file behind. A DICOM SEG that is only automatic (DICOM input, no `dicom_seg=True`)
        is skipped with a warning when the series cannot be referenced (no UIDs)."""
        t0 = time.perf_counter()
        extras = planned_extras(self.info.kind == "dicom", viewer, qc, dicom_seg, dicom_sr)
        datasets = {}
        if "dicom_seg" in extras:
            from .dicom_out import Equipment, build_dicom
            try:
                datasets = build_dicom(self.info.files, self.info.path, self.labels, self.nodes,
                                       self.model or {}, dicom_sr, seg_segments,
                                       (self.model or {}).get("classes"), equipment or Equipment())
            except LnrtError as exc:
                if dicom_seg is not None or dicom_sr:
                    raise
                msg = f"no DICOM SEG written: {exc}"
                if msg not in self.warnings:  # a second save must not repeat it
                    self.warnings.append(msg)
                    log.warning("%s", msg)
                extras = tuple(e for e in extras if not e.startswith("dicom"))
        check_writable(out_dir, self.info.stem, overwrite, inputs=(self.info.path,), extras=extras)
        report = self.report()
        qc_page = None
        if qc:
            from .qc import render_qc
            qc_page = render_qc(self.geometry, self.labels, report)
        image = self.label_image()
        paths = write_outputs(out_dir, self.info.stem, image, report, overwrite, inputs=(self.info.path,))
        out = Path(out_dir)
        if viewer:
            from .imageio import write_image
            from .viewer import itksnap_labels, slicer_segmentation
            paths["viewer_nrrd"] = out / f"{self.info.stem}.nodes.seg.nrrd"
            write_image(slicer_segmentation(image, self.nodes), paths["viewer_nrrd"])
            paths["viewer_labels"] = out / f"{self.info.stem}.nodes.label.txt"
            write_text(paths["viewer_labels"], itksnap_labels(self.nodes))
        if qc_page:
            from .qc import write_qc
            paths.update(write_qc(out, self.info.stem, *qc_page))
        if datasets:
            from .dicom_out import write_datasets
            paths.update(write_datasets(out, self.info.stem, datasets))
        self.timings["write"] = time.perf_counter() - t0
        return paths


class Timer:
    def __init__(self):
        self.timings = {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.timings[name] = timer.timings.get(name, 0.0) + time.perf_counter() - self.t0
        return _Stage()


def _orientation(vol: Volume, source: str, warnings: list) -> Orientation:
    o = Orientation.of(vol.direction, source)
    if o.obliquity_deg > OBLIQUE_SILENT_DEG:
        msg = (f"{source}: image axes are {o.obliquity_deg:.1f} degrees oblique; axes are measured in "
               "the image's own slice plane, the mask stays on the input grid")
        warnings.append(msg)
        log.warning(msg)
    return o


def _native_region(native: Grid, crop: Grid) -> tuple:
    """Box of native voxels whose centres lie inside the crop grid's extent."""
    box = []
    for a in range(3):
        lo_edge = crop.origin[a] - 0.5 * crop.spacing[a]
        hi_edge = lo_edge + crop.shape[a] * crop.spacing[a]
        lo = math.ceil((lo_edge - native.origin[a]) / native.spacing[a] - 1e-6)
        hi = math.floor((hi_edge - native.origin[a]) / native.spacing[a] + 1e-6)
        box.append((max(0, lo), min(native.shape[a], hi + 1)))
    return tuple(box)


def _activate(logits: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    logits = logits - logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


@dataclass
class Prepared:
    native: Grid  # the scan's grid in canonical order
    grid: Grid  # the model grid over the same extent
    box: tuple | None  # the body's box on the model grid (None: no body)
    image: np.ndarray | None  # normalized network input inside the box (z, y, x) float32
    body: np.ndarray | None  # body mask inside the box
    neck: NeckRegion | None = None  # where findings are reported, on the model grid (None: no rule)


class Session:
    """Load a model package once; run scans through it."""

    def __init__(self, model: str | os.PathLike | ModelPackage | None = None, backend: str = "auto",
                 device: str = "auto", variant: str = "fp32", threads: int | None = None,
                 batch_size: int | None = None, mirror_axes: tuple | None = None,
                 overlap: float | None = None, min_volume_mm3: float | None = None,
                 memory_limit_gb: float | None = None, neck_region: bool = True,
                 min_short_axis_px: float | None = None):
        self.package = model if isinstance(model, ModelPackage) else ModelPackage.load(model)
        self.variant = variant
        # bf16 is not a file: the fp32 model with OpenVINO's bf16 precision hint
        file_variant = "fp32" if variant == "bf16" else variant
        backend = self._gated_backend(file_variant, backend)
        self.backend = create_backend(self.package.onnx_path(file_variant), backend, device, threads,
                                      precision="bf16" if variant == "bf16" else "f32")
        sw = self.package.section("sliding_window")
        self.window = SlidingWindowConfig(
            patch=self.package.patch_zyx,
            overlap=sw.get("overlap", 0.5) if overlap is None else overlap,
            sigma_scale=sw.get("sigma_scale", 0.125),
            batch_size=batch_size or sw.get("batch_size", 2),
            mirror_axes=tuple(sw.get("mirror_axes", ()) if mirror_axes is None else mirror_axes),
        )
        post = self.package.section("postprocessing")
        self.min_volume_mm3 = post.get("min_volume_mm3", 0.0) if min_volume_mm3 is None else min_volume_mm3
        self.connectivity = int(post.get("connectivity", 26))
        # the package's postprocessing rules (README: Postprocessing); neck_region=False turns the region off
        self.neck_region = NeckRegionConfig.from_manifest(post.get("neck_region")) if neck_region else None
        self.min_short_axis_px = float(post.get("min_short_axis_px", 0.0) if min_short_axis_px is None
                                       else min_short_axis_px)
        self.body = BodyCropConfig(**self.package.section("body_crop"))
        self.memory_limit_gb = memory_limit_gb or 0.8 * _physical_memory_gb()

    def _gated_backend(self, variant: str, backend: str) -> str:
        """A variant never runs on a backend where its parity gate failed: the automatic choice skips
        such a backend, and asking for it by name is an error that says where the variant passed."""
        failed = self.package.gate_failed_on(variant)
        if not failed:
            return backend

        def why(b: str) -> str:
            return "; ".join(failed[b].get("failures") or ["failed"])

        if backend in failed:
            passed = [b for b in self.package.manifest["variants"][variant]["gate_backends"] if b not in failed]
            raise LnrtError(f"{self.package.path}: the {variant} variant failed its parity gate on {backend} "
                            f"({why(backend)}); run it with --backend {' or '.join(passed) or 'another backend'}, "
                            f"or use another variant")
        if backend != "auto":
            return backend
        order = available()  # the automatic choice's own order, less the backends that failed
        usable = [b for b in order if b not in failed]
        if usable == order:
            return backend
        skipped = "; ".join(f"{b}: {why(b)}" for b in order if b in failed)
        if not usable:
            raise LnrtError(f"{self.package.path}: the {variant} variant failed its parity gate on every "
                            f"backend installed here ({skipped}); use another variant")
        log.info("the %s variant failed its parity gate on %s; using %s", variant, skipped, usable[0])
        return usable[0]

    def model_info(self) -> dict:
        info = self.package.summary("fp32" if self.variant == "bf16" else self.variant)
        info["variant"] = self.variant
        info["classes"] = self.package.classes
        info.update(self.backend.describe())
        return info

    def estimate_memory_gb(self, shape_zyx: tuple, spacing_zyx) -> float:
        """Upper estimate of a run's peak memory: native copies plus the model-grid buffers."""
        native = float(np.prod(shape_zyx))
        ratio = float(np.prod(np.asarray(spacing_zyx) / np.asarray(self.package.spacing_zyx)))
        k = len(self.package.classes)
        return (22.0 * native + (12.0 + 8.0 * k) * native * ratio) / 1e9 + 0.3

    def prepare(self, vol: Volume, orient: Orientation | None = None) -> "Prepared":
        """The network's input for a scan: the canonical scan resampled to the model grid, cropped to
        the body's box and normalized (what the sliding window sees), with the body mask."""
        orient = orient or Orientation.of(vol.direction, "<scan>")
        ct_c = orient.to_canonical(vol.array)
        native = Grid(ct_c.shape, tuple(vol.spacing_zyx[list(orient.perm)]))
        mgrid = model_grid(native, self.package.spacing_zyx)
        hu = resample(ct_c, native, mgrid, linear=True, default=-1024.0)
        body = body_mask(hu, self.body)
        margin = [math.ceil(self.body.margin_mm / s) for s in mgrid.spacing]
        box = bounding_box(body, margin)
        if box is None:
            return Prepared(native, mgrid, None, None, None)
        neck = None
        if self.neck_region:
            outline = body if self.body.enabled else body_mask(hu, replace(self.body, enabled=True))
            neck = find_neck_region(outline, mgrid.spacing, self.neck_region)
        x = normalize(hu[box_slices(box)], self.package.section("normalization"))
        return Prepared(native, mgrid, box, x, body[box_slices(box)], neck)

    def run(self, scan: str | os.PathLike | Volume, series_uid: str | None = None,
            progress: Progress | None = None, check_hu: bool = True) -> Result:
        timer = Timer()
        warnings: list = []
        with timer.stage("read"):
            if isinstance(scan, Volume):
                vol, info = scan, ScanInfo(path="<memory>", kind="array", stem="scan")
            else:
                vol, info = read_scan(scan, series_uid=series_uid, check_hu=check_hu)
        source = info.path
        need = self.estimate_memory_gb(vol.shape, vol.spacing_zyx)
        if need > self.memory_limit_gb:
            raise LnrtError(
                f"{source}: volume {'x'.join(map(str, vol.shape[::-1]))} needs about {need:.1f} GB, above "
                f"the {self.memory_limit_gb:.1f} GB limit; expected a smaller volume or a higher "
                "memory limit (--max-memory-gb)"
            )
        orient = _orientation(vol, source, warnings)
        pkg = self.package
        with timer.stage("preprocess"):
            prep = self.prepare(vol, orient)
        native, mgrid, box, x, body_crop = prep.native, prep.grid, prep.box, prep.image, prep.body
        n_classes = len(pkg.classes)
        tile_count, net_s = [0], [0.0]
        fg_prob_c = np.zeros(native.shape, dtype=np.float32)
        class_c = np.zeros(native.shape, dtype=np.uint8)
        if box is None:
            warnings.append(f"{source}: no body found above {self.body.threshold_hu:g} HU; no nodes")
        else:
            def tiles_done(done, total):
                tile_count[0] = total
                if progress:
                    progress("network", done, total)

            def predict(batch):
                t0 = time.perf_counter()
                out = self.backend.run(batch)
                net_s[0] += time.perf_counter() - t0
                return out

            with timer.stage("sliding_window"):
                logits, covered = sliding_window(x, predict, self.window, mask=body_crop,
                                                 progress=tiles_done)
            # split the window's time into the network's calls and lnrt's tiling and accumulation
            timer.timings["network"] = net_s[0]
            timer.timings["accumulate"] = timer.timings.pop("sliding_window") - net_s[0]
            with timer.stage("postprocess"):
                if logits is not None:
                    probs = _activate(logits, pkg.section("output").get("activation", "softmax"))
                    probs[:, ~covered] = 0.0
                    probs[0, ~covered] = 1.0
                    crop_grid = mgrid.crop(box)
                    region = _native_region(native, crop_grid)
                    dst = native.crop(region)
                    sl = box_slices(region)
                    if n_classes == 2:
                        p1 = resample(probs[1], crop_grid, dst)
                        class_c[sl] = p1 > 0.5
                        fg_prob_c[sl] = p1
                    else:
                        back = np.stack([resample(p, crop_grid, dst) for p in probs])
                        class_c[sl] = back.argmax(0).astype(np.uint8)
                        fg_prob_c[sl] = 1.0 - back[0]
                    del probs, logits
        with timer.stage("components"):
            class_in = np.ascontiguousarray(orient.from_canonical(class_c))
            min_vox = math.ceil(self.min_volume_mm3 / voxel_volume_mm3(vol)) if self.min_volume_mm3 else 0
            labels, _ = label_components(class_in > 0, self.connectivity, min_vox)
        with timer.stage("measure"):
            nodes = node_table(labels, vol, orient, image=vol.array,
                               probability=orient.from_canonical(fg_prob_c),
                               classmap=class_in if n_classes > 2 else None, class_names=pkg.classes)
            labels, nodes, rules = self._apply_rules(labels, nodes, vol, orient, prep, warnings, source)
        settings = {"sliding_window": {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in self.window.__dict__.items()},
                    "model_grid_zyx": list(mgrid.shape), "body_box_zyx": box and [list(b) for b in box],
                    "tiles": tile_count[0],
                    "min_volume_mm3": self.min_volume_mm3, "connectivity": self.connectivity,
                    "rules": rules,
                    "orientation": {"perm": list(orient.perm), "flip": list(orient.flip),
                                    "obliquity_deg": round(orient.obliquity_deg, 3)}}
        timer.timings["total"] = sum(timer.timings.values())
        return Result(labels=labels, geometry=vol, nodes=nodes, timings=timer.timings, info=info,
                      model=self.model_info(), settings=settings, warnings=warnings)

    def _apply_rules(self, labels, nodes, vol: Volume, orient: Orientation, prep: Prepared,
                     warnings: list, source: str) -> tuple:
        """The package's rules on which components are findings (README: Postprocessing): the neck
        region and the resolution floor. Returns (labels, nodes, what each rule did)."""
        rules: dict = {}
        keep = np.ones(len(nodes), dtype=bool)
        native, mgrid = prep.native, prep.grid
        if self.min_short_axis_px > 0:
            floor = self.min_short_axis_px * min(native.spacing[1:])
            thin = np.array([n["short_axis_mm"] < floor for n in nodes], dtype=bool)
            rules["min_short_axis"] = {"px": self.min_short_axis_px, "mm": round(floor, 3),
                                       "dropped": int(thin.sum())}
            keep &= ~thin
        if self.neck_region and prep.neck is not None:
            neck = prep.neck
            outside = np.zeros(len(nodes), dtype=bool)
            if nodes:
                idx = world_to_index(vol, np.array([n["centroid_mm"] for n in nodes]))
                c = orient.input_index_to_canonical(idx, vol.shape)
                k = np.floor((c[:, 0] + 0.5) * native.spacing[0] / mgrid.spacing[0])
                outside = ~neck.contains(k, (c[:, 2] + 0.5) * native.spacing[2])
            rules["neck_region"] = {**self.neck_region.to_dict(), "neck_sized": neck.found,
                                    "across_mm": neck.x_mm and [round(v, 1) for v in neck.x_mm],
                                    "dropped": int((outside & keep).sum())}
            keep &= ~outside
            if not neck.found:
                lo, hi = self.neck_region.width_mm
                warnings.append(f"{source}: no neck-sized body section (left-right width {lo:g}-{hi:g} mm) in "
                                f"this scan; the model is for the neck, so no nodes are reported "
                                f"({int(outside.sum())} found; --all-regions reports them)")
        labels, nodes = keep_nodes(labels, nodes, keep)
        return labels, nodes, rules

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure(labels: str | os.PathLike | Volume, image: str | os.PathLike | Volume | None = None,
            connectivity: int = 26, min_volume_mm3: float = 0.0) -> Result:
    """The node report of an existing segmentation.

    An instance-labelled input keeps its ids (node id = label value); a binary mask (values 0 and 1)
    is split into connected components. With `image`, mean HU is reported; it must share the labels'
    geometry.
    """
    timer = Timer()
    warnings: list = []
    with timer.stage("read"):
        if isinstance(labels, Volume):
            lab, info = labels, ScanInfo(path="<memory>", kind="array", stem="labels")
        else:
            lab = read_labels(labels)
            from .imageio import stem_of
            info = ScanInfo(path=str(labels), kind="labels", stem=stem_of(labels))
        img = None
        if image is not None:
            img = image if isinstance(image, Volume) else read_scan(image)[0]
            if not img.same_geometry(lab):
                raise LnrtError(
                    f"{getattr(image, '__fspath__', lambda: 'image')()}: geometry (size "
                    f"{img.shape[::-1]}, spacing {tuple(round(s, 4) for s in img.spacing)}) differs "
                    f"from the labels' ({lab.shape[::-1]}, {tuple(round(s, 4) for s in lab.spacing)}); "
                    "expected the CT the labels were drawn on"
                )
    orient = _orientation(lab, info.path, warnings)
    with timer.stage("components"):
        values = lab.array
        top = int(values.max()) if values.size else 0
        if top <= 1:
            min_vox = math.ceil(min_volume_mm3 / voxel_volume_mm3(lab)) if min_volume_mm3 else 0
            out, _ = label_components(values > 0, connectivity, min_vox)
        else:
            dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
            out = np.ascontiguousarray(values, dtype=dtype)
    with timer.stage("measure"):
        nodes = node_table(out, lab, orient, image=None if img is None else img.array)
    timer.timings["total"] = sum(timer.timings.values())
    settings = {"connectivity": connectivity, "min_volume_mm3": min_volume_mm3,
                "labels": "components of a binary mask" if top <= 1 else "instance ids kept"}
    return Result(labels=out, geometry=lab if img is None else img, nodes=nodes, timings=timer.timings, info=info,
                  model=None, settings=settings, warnings=warnings)


__all__ = ["Session", "Result", "measure"]
