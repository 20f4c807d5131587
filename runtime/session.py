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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ._version import __version__
from .backends import REGISTRY, available, choose
from .config import RunConfig
from .device import CPU, cuda_device, out_of_memory
from .errors import LnrtError, one_line
from .imageio import ScanHeader, ScanInfo, probe_scan, read_labels, read_scan, stem_of, to_sitk
from .nodes import (Frame, check_connectivity, component_stats, index_map, is_multiclass, label_components,
                    measure_nodes)
from .outputs import SCHEMA, Output, OutputPlan, contract_outputs, write_image_file, write_outputs
from .outputs import plan as plan_outputs
from .package import ModelPackage
from .pipeline import (CASCADE_STAGES, PreviousStage, Prepared, Progress, Scan, number_nodes, orientation,
                       prepare_volume, run_stages, settings)
from .references import node_references
from .volume import Orientation, Volume, voxel_volume_mm3

log = logging.getLogger("lnrt")


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

    def __repr__(self) -> str:
        g = self.geometry
        return (f"Result({self.info.path}: {len(self.nodes)} node{'s' * (len(self.nodes) != 1)}, "
                f"{'x'.join(map(str, g.shape[::-1]))} voxels, {self.timings.get('total', 0.0):.2f} s, "
                f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)})")

    def label_image(self) -> sitk.Image:
        return to_sitk(self.geometry, self.labels)

    @property
    def classes(self) -> list:
        """The model's class names (index = label value; background first)."""
        return list((self.model or {}).get("classes") or ["background", "lymph_node"])

    def class_map(self) -> np.ndarray | None:
        """A multi-class model's class map on the input's grid (uint8, the labels' shape): each node's
        voxels hold the index of its voted class (`node["class"]`), background 0; None for a binary model.
        The node's class, not each voxel's argmax: a node is one finding with one class."""
        names = self.classes
        if not is_multiclass(names):
            return None
        lut = np.zeros(int(self.labels.max(initial=0)) + 1, np.uint8)
        for n in self.nodes:
            lut[n["id"]] = names.index(n["class"]) if n["class"] in names else 0
        return lut[self.labels]

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

    def plan(self, out_dir: str | os.PathLike, overwrite: bool = False, viewer: bool = True, qc: bool = False,
             dicom_seg: bool | None = None, dicom_sr: bool = False, contract: bool = True) -> OutputPlan:
        """What `save` with these options would write, checked now (raises `LnrtError` if it cannot)."""
        return plan_outputs(out_dir, self.info.stem, overwrite, (self.info.path,), self.info.kind == "dicom",
                            viewer, qc, dicom_seg, dicom_sr, contract=contract, multiclass=is_multiclass(self.classes))

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False, viewer: bool = True,
             qc: bool = False, dicom_seg: bool | None = None, dicom_sr: bool = False,
             seg_segments: str = "node", equipment=None, contract: bool = True, uid_seed: str | None = None) -> dict:
        """Write the outputs; see the README's Outputs section. Returns {name: path}. `contract=False`
        writes only the optional outputs asked for (added to a finished run: `lnrt.reload`). `uid_seed`
        makes the DICOM UIDs repeatable (`lnrt.dicom_out.derived_uid`; `lnrt serve` uses it).

        Everything that can fail (DICOM datasets, QC pictures) is built in memory first: a failure
        leaves no file behind. A DICOM SEG that is only automatic (DICOM input, no `dicom_seg=True`)
        is skipped with a warning when the series cannot be referenced (no UIDs) or highdicom is missing.
        Without nodes no SEG is written (it cannot hold zero segments); a requested SR still is, saying
        that no lymph node was detected. Every planned output that is not written gets one warning: one
        log line and the same text in `warnings` (and the report), once however often `save` runs."""
        t0 = time.perf_counter()
        todo = self.plan(out_dir, overwrite, viewer, qc, dicom_seg, dicom_sr, contract)
        datasets = {}

        def skipped(msg: str, *keys: str) -> OutputPlan:
            if msg not in self.warnings:  # a second save must not repeat it
                self.warnings.append(msg)
                log.warning("%s", msg)
            return todo.without(*keys)

        if "dicom_seg" in todo.extras:
            from .dicom_out import NO_SEGMENTS, Equipment, build_dicom
            try:
                datasets = build_dicom(self.info.files, self.info.path, self.labels, self.nodes,
                                       self.model or {}, dicom_sr, seg_segments,
                                       (self.model or {}).get("classes"), equipment or Equipment(), uid_seed)
            except LnrtError as exc:
                if dicom_seg is not None or dicom_sr:
                    raise
                todo = skipped(f"no DICOM SEG written: {exc}", "dicom_seg", "dicom_sr")
            else:
                if "dicom_seg" not in datasets:
                    said = "; the DICOM SR says that no lymph node was detected" if "dicom_sr" in datasets else ""
                    todo = skipped(f"{self.info.path}: no DICOM SEG written: {NO_SEGMENTS}{said}", "dicom_seg")
        report = self.report()
        image = self.label_image()
        outputs = contract_outputs(image, report) if contract else {}
        if "classes" in todo.extras:
            class_image = to_sitk(self.geometry, self.class_map())
            outputs["classes"] = Output(lambda p: write_image_file(class_image, p))
        if viewer:
            from .viewer import itksnap_labels, slicer_segmentation
            nrrd = slicer_segmentation(image, self.nodes)
            outputs["viewer_nrrd"] = Output(lambda p: write_image_file(nrrd, p))
            outputs["viewer_labels"] = Output(lambda p: p.write_text(itksnap_labels(self.nodes), encoding="utf-8"))
        if qc:
            from .qc import qc_outputs, render_qc
            outputs.update(qc_outputs(*render_qc(self.geometry, self.labels, report)))
        if datasets:
            from .dicom_out import dicom_outputs
            outputs.update(dicom_outputs(datasets))
        paths = write_outputs(todo, outputs)
        self.timings["write"] = time.perf_counter() - t0
        return paths


def _model_grid_bytes(cfg: RunConfig, native: float, spacing_zyx) -> float:
    """Bytes one stage of `cfg` holds beyond the scan's working copies (see `estimate_memory_gb`)."""
    model = [s if m is None else m for s, m in zip(spacing_zyx, cfg.spacing_zyx)]
    ratio = float(np.prod(np.asarray(spacing_zyx, dtype=float) / np.asarray(model, dtype=float)))
    k = len(cfg.classes)
    nnunet = cfg.resample_data is not None
    return (12.0 + (12.0 if nnunet else 8.0) * k) * native * ratio + (12.0 * native if nnunet else 0.0)


class Session:
    """Load a model package once; run scans through it (the stages are in `lnrt.pipeline`)."""

    def __init__(self, model: str | os.PathLike | ModelPackage | None = None, backend: str = "auto",
                 device: str = "auto", variant: str = "fp32", threads: int | None = None,
                 batch_size: int | None = None, mirror_axes: tuple | None = None,
                 overlap: float | None = None, min_volume_mm3: float | None = None,
                 memory_limit_gb: float | None = None, neck_region: bool = True,
                 min_short_axis_px: float | None = None, split_touching_mm: float | None = None):
        self.package = model if isinstance(model, ModelPackage) else ModelPackage.load(model)
        self.variant = variant
        # bf16 is not a file: the fp32 model with OpenVINO's bf16 precision hint
        file_variant = "fp32" if variant == "bf16" else variant
        precision = "bf16" if variant == "bf16" else "f32"
        name, self.backend_device = choose(self._gated_backend(file_variant, backend), device, precision)
        # The stages run where the network runs: with a GPU backend the scan enters the GPU once and only the
        # labels over the nodes' box and the node table come back (lnrt.pipeline, lnrt.device_ops)
        self.device = cuda_device() if self.backend_device == "cuda" else CPU
        # verified now, whether the package was loaded here or handed in: a file swapped since
        # ModelPackage.load is refused, and the report carries the sha256 of what the backend reads
        self.model_sha256 = self.package.verify_model(file_variant)
        self.package.check_model_io(file_variant)
        self.backend = REGISTRY[name].factory(self.package.onnx_path(file_variant), threads=threads,
                                              precision=precision, package=self.package, variant=file_variant)
        self.config = RunConfig.from_package(self.package, batch_size, mirror_axes, overlap, min_volume_mm3,
                                             neck_region, min_short_axis_px, split_touching_mm)
        self.memory_limit_gb = memory_limit_gb or 0.8 * _physical_memory_gb()
        self._file_variant, self._threads, self._fallback = file_variant, threads, None
        # a cascade's first stage: its own session on the same backend and device, TTA and overlap as
        # asked (nnU-Net's predictor mirrors both stages alike); it runs inside this session's stages
        self.previous = None if self.package.previous_stage is None else Session(
            self.package.previous_stage, backend=backend, device=device, threads=threads,
            mirror_axes=mirror_axes, overlap=overlap, memory_limit_gb=memory_limit_gb)

    # the configuration's parts, as earlier versions exposed them
    window = property(lambda self: self.config.window)
    body = property(lambda self: self.config.body)
    neck_region = property(lambda self: self.config.neck)
    min_volume_mm3 = property(lambda self: self.config.min_volume_mm3)
    connectivity = property(lambda self: self.config.connectivity)
    min_short_axis_px = property(lambda self: self.config.min_short_axis_px)
    split_touching_mm = property(lambda self: self.config.split_touching_mm)

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
        info["sha256"] = self.model_sha256  # computed when the session verified the file
        info["package_sha256"] = self.package.package_sha256
        info.update(self.backend.describe())
        if self.previous is not None:
            info["previous_stage"] = {k: self.previous.model_info()[k]
                                      for k in ("name", "version", "sha256", "package_sha256", "classes")}
        return info

    def estimate_memory_gb(self, shape_zyx: tuple, spacing_zyx, itemsize: int = 2) -> float:
        """Upper estimate of a run's peak memory: the decoded scan (`itemsize` bytes a voxel, from the
        header), 20 bytes a native voxel of working copies, plus the model-grid buffers. nnU-Net's
        resampling (`lnrt.splines`) adds its float32 normalized copy and a float64 axis of the zoom (12
        bytes a native voxel) and the logits' copy (4 bytes a class and model voxel). A cascade's stages
        run one after the other: the larger of the two, plus the first stage's labels (1 byte a voxel)."""
        native = float(np.prod(shape_zyx))
        stages = [self] if self.previous is None else [self, self.previous]
        grids = max(_model_grid_bytes(s.config, native, spacing_zyx) for s in stages)
        return ((20.0 + itemsize + (len(stages) - 1)) * native + grids) / 1e9 + 0.3

    def check_memory(self, shape_zyx: tuple, spacing_zyx, source: str, itemsize: int = 2) -> None:
        """Refuse a scan whose estimated peak memory is above the limit (from its header's size, spacing
        and voxel type, before any voxel is decoded)."""
        need = self.estimate_memory_gb(shape_zyx, spacing_zyx, itemsize)
        if need > self.memory_limit_gb:
            raise LnrtError(
                f"{source}: volume {'x'.join(map(str, tuple(shape_zyx)[::-1]))} needs about {need:.1f} GB, above "
                f"the {self.memory_limit_gb:.1f} GB limit; expected a smaller volume or a higher "
                "memory limit (--max-memory-gb)"
            )

    def prepare(self, vol: Volume, orient: Orientation | None = None) -> Prepared:
        """The network's input for a scan: the canonical scan resampled to the model grid, cropped to
        the body's box and normalized (what the sliding window sees), with the body mask. For a cascade
        the first stage runs first: the input holds the CT and its masks."""
        orient = orient or Orientation.of(vol.direction, "<scan>")
        if self.previous is None:
            return prepare_volume(vol, orient, self.config)
        ctx = self._scan(vol, ScanInfo(path="<memory>", kind="array", stem="scan"), None, {}, self.backend, CPU)
        return run_stages(ctx, CPU, CASCADE_STAGES[:2]).prep

    def run(self, scan: str | os.PathLike | Volume | ScanHeader, series_uid: str | None = None,
            progress: Progress | None = None, check_hu: bool = True) -> Result:
        t0 = self.device.clock()
        if progress:
            progress("read", 0, 0)
        if isinstance(scan, Volume):
            self.check_memory(scan.shape, scan.spacing_zyx, "<memory>", scan.array.itemsize)
            vol, info = scan, ScanInfo(path="<memory>", kind="array", stem="scan")
        else:  # the headers first: a scan too large for this machine is refused before it is decoded
            header = scan if isinstance(scan, ScanHeader) else probe_scan(scan, series_uid)
            self.check_memory(header.shape_zyx, header.spacing_zyx, str(header.path), header.itemsize)
            vol, info = read_scan(header, check_hu=check_hu)
        timings = {"read": self.device.clock() - t0}
        ctx = self._scan(vol, info, progress, timings, self.backend, self.device)
        t0 = time.perf_counter()
        try:
            run_stages(ctx, self.device)
        except Exception as exc:  # out of GPU memory in a stage: the scan again, on the CPU
            ctx = self._again_on_the_cpu(ctx, exc, time.perf_counter() - t0)
        warnings = ctx.warnings
        timings["total"] = sum(timings.values())
        nodes = node_references(ctx.nodes, vol, ctx.orient, vol.array, info.files if info.kind == "dicom" else ())
        return Result(labels=ctx.output, geometry=vol, nodes=nodes, timings=timings, info=info,
                      model=self.model_info(), settings=settings(ctx), warnings=warnings)

    def _scan(self, vol: Volume, info: ScanInfo, progress, timings: dict, backend, device, warnings=None) -> Scan:
        warnings = [] if warnings is None else warnings
        fallback = self._cpu_fallback if device.kind != "cpu" or self.backend_device != "cpu" else None
        return Scan(vol, info, self.config, orientation(vol, info.path, warnings), backend, progress, fallback,
                    warnings, timings, self._previous_stage(device))

    def _previous_stage(self, device) -> PreviousStage | None:
        """A cascade's first stage for a scan on `device`: its session's backend, or its CPU backend when the
        scan runs again on the CPU (after the GPU ran out of memory)."""
        prev = self.previous
        if prev is None:
            return None
        on_cpu = device.kind == "cpu" and prev.device.kind != "cpu"
        fallback = prev._cpu_fallback if device.kind != "cpu" or prev.backend_device != "cpu" else None
        if on_cpu:
            return PreviousStage(prev.config, prev._cpu_fallback())
        return PreviousStage(prev.config, prev.backend, fallback)

    def _again_on_the_cpu(self, ctx: Scan, exc: Exception, spent_s: float) -> Scan:
        """After `exc` in a stage on a GPU: when it is the GPU's memory (CuPy's OutOfMemoryError is a
        MemoryError; a failed CUDA allocation says so), the scan runs again on the CPU device and backend,
        with a warning, and the time lost is its own timing; anything else is raised."""
        if self.device.kind == "cpu" or not out_of_memory(exc):
            raise exc
        self.device.release()
        warning = (f"{ctx.source}: out of memory in the stages on {self.device.name} ({one_line(exc, 160)}); "
                   f"this scan ran on the CPU ({self._cpu_fallback().name})")
        log.warning("%s", warning)
        timings = {"read": ctx.timings.get("read", 0.0), "failed_on_gpu": spent_s}
        ctx.timings.clear()
        ctx.timings.update(timings)
        again = self._scan(ctx.vol, ctx.info, ctx.progress, ctx.timings, self._cpu_fallback(), CPU, [warning])
        return run_stages(again, CPU)

    def _cpu_fallback(self):
        """The CPU backend a scan falls back to when the GPU runs out of memory (made once, kept)."""
        if self._fallback is None:
            name, _ = choose(self._gated_backend(self._file_variant, "auto"), "cpu", "f32")
            self.package.verify_model(self._file_variant)  # the file read now is the one verified
            self._fallback = REGISTRY[name].factory(self.package.onnx_path(self._file_variant), threads=self._threads)
        return self._fallback

    def close(self) -> None:
        self.backend.close()
        if self.previous is not None:
            self.previous.close()
        if self._fallback is not None:
            self._fallback.close()

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
    clock = CPU.clock
    t0 = clock()
    lab, info, img = _read_labels(labels, image)
    timings = {"read": clock() - t0}
    warnings: list = []
    orient = orientation(lab, info.path, warnings)
    t0 = clock()
    values = lab.array
    top = int(values.max()) if values.size else 0
    lab_c = orient.to_canonical(values > 0 if top <= 1 else values)
    if top <= 1:
        lab_c, n = label_components(lab_c, check_connectivity(connectivity))
    else:
        lab_c, n = np.ascontiguousarray(lab_c), top
    image_c = None if img is None else orient.to_canonical(img.array)
    stats = component_stats(lab_c, n, image_c, first_map=index_map(orient, lab.shape))
    min_vox = math.ceil(min_volume_mm3 / voxel_volume_mm3(lab)) if min_volume_mm3 and top <= 1 else 0
    ids = np.flatnonzero(stats["count"] >= max(min_vox, 1)) + 1
    timings["components"] = clock() - t0
    t0 = clock()
    box = tuple((0, s) for s in lab_c.shape)
    nodes = measure_nodes(lab_c, ids, stats, Frame((0, 0, 0), lab, orient), mean_hu=img is not None,
                          probability=False)
    if top <= 1:
        nodes, out = number_nodes(nodes, stats, lab_c, box, orient, lab.shape)
    else:
        out = np.ascontiguousarray(values, dtype=np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    timings["measure"] = clock() - t0
    timings["total"] = sum(timings.values())
    settings = {"connectivity": connectivity, "min_volume_mm3": min_volume_mm3,
                "labels": "components of a binary mask" if top <= 1 else "instance ids kept"}
    nodes = node_references(nodes, lab, orient, None if img is None else img.array)
    return Result(labels=out, geometry=lab if img is None else img, nodes=nodes, timings=timings, info=info,
                  model=None, settings=settings, warnings=warnings)


def measure_stem(labels: str | os.PathLike) -> str:
    """The outputs' stem for measuring a label file: its stem, less lnrt's own `.nodes` (measuring
    `scan.nodes.nii.gz` writes `scan.report.json`, not `scan.nodes.report.json`)."""
    stem = stem_of(labels)
    return stem[: -len(".nodes")] if stem.endswith(".nodes") and len(stem) > len(".nodes") else stem


def _read_labels(labels, image) -> tuple:
    """(labels Volume, ScanInfo, image Volume or None), the image checked to share the labels' grid."""
    if isinstance(labels, Volume):
        lab, info = labels, ScanInfo(path="<memory>", kind="array", stem="labels")
    else:
        lab = read_labels(labels)
        info = ScanInfo(path=str(labels), kind="labels", stem=measure_stem(labels))
    img = None
    if image is not None:
        img = image if isinstance(image, Volume) else read_scan(image)[0]
        if not img.same_geometry(lab):
            raise LnrtError(
                f"{'the image' if isinstance(image, Volume) else image}: geometry (size "
                f"{img.shape[::-1]}, spacing {tuple(round(s, 4) for s in img.spacing)}) differs "
                f"from the labels' ({lab.shape[::-1]}, {tuple(round(s, 4) for s in lab.spacing)}); "
                "expected the CT the labels were drawn on"
            )
    return lab, info, img


__all__ = ["Session", "Result", "measure"]
