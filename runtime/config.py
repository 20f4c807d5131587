"""The run configuration: built once per `Session` from the package's manifest and the caller's overrides,
frozen, and recorded as the report's `settings` (its `to_dict()`), so a report always says what ran.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import LnrtError
from .nodes import check_connectivity
from .package import ModelPackage
from .preprocess import BodyCropConfig
from .region import NeckRegionConfig
from .sliding_window import SlidingWindowConfig
from .splines import Resampling


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class RunConfig:
    """Everything a run of one scan depends on besides the network and the scan itself."""

    spacing_zyx: tuple  # the model's grid spacing (mm); None on an axis kept at the scan's spacing
    classes: tuple  # class names, background first
    normalization: tuple  # the manifest's recipe as sorted (key, value) pairs (frozen)
    activation: str  # "softmax" or "sigmoid"
    window: SlidingWindowConfig
    body: BodyCropConfig
    neck: NeckRegionConfig | None  # None: findings are reported everywhere
    min_volume_mm3: float
    connectivity: int
    min_short_axis_px: float  # 0: no resolution floor
    split_touching_mm: float = 0.0  # h of the touching-nodes split (lnrt.touching); 0: components stay whole
    previous_labels: tuple = ()  # a cascade: the first stage's labels fed as one-hot channels after the CT
    # the manifest's `resampling` (scheme "nnunet"): the CT normalized on the scan's grid, then resampled
    # as nnU-Net does (`data`), and the logits, not the probabilities, brought back (`logits`); None: lnrt's
    # linear HU resampling before normalization, probabilities back
    resample_data: Resampling | None = None
    resample_logits: Resampling | None = None

    @classmethod
    def from_package(cls, pkg: ModelPackage, batch_size: int | None = None, mirror_axes: tuple | None = None,
                     overlap: float | None = None, min_volume_mm3: float | None = None,
                     neck_region: bool = True, min_short_axis_px: float | None = None,
                     split_touching_mm: float | None = None) -> "RunConfig":
        """The manifest's defaults with the caller's overrides (None: the manifest's value)."""
        for name, value in (("min_short_axis_px", min_short_axis_px), ("split_touching_mm", split_touching_mm)):
            check_nonnegative(name, value)
        sw, post = pkg.section("sliding_window"), pkg.section("postprocessing")
        window = SlidingWindowConfig(
            patch=pkg.patch_zyx,
            overlap=sw.get("overlap", 0.5) if overlap is None else overlap,
            sigma_scale=sw.get("sigma_scale", 0.125),
            batch_size=batch_size or sw.get("batch_size", 2),
            mirror_axes=tuple(sw.get("mirror_axes", ()) if mirror_axes is None else mirror_axes),
            context=pkg.context_slices,
            accumulate=sw.get("accumulate", "float32"),
        )
        return cls(
            spacing_zyx=pkg.spacing_zyx, classes=tuple(pkg.classes),
            normalization=tuple(sorted((k, _freeze(v)) for k, v in pkg.section("normalization").items())),
            activation=pkg.section("output").get("activation", "softmax"),
            window=window, body=BodyCropConfig(**pkg.section("body_crop")),
            neck=NeckRegionConfig.from_manifest(post.get("neck_region")) if neck_region else None,
            min_volume_mm3=float(post.get("min_volume_mm3", 0.0) if min_volume_mm3 is None else min_volume_mm3),
            connectivity=check_connectivity(int(post.get("connectivity", 26))),
            min_short_axis_px=float(post.get("min_short_axis_px", 0.0) if min_short_axis_px is None
                                    else min_short_axis_px),
            split_touching_mm=float(post.get("split_touching_mm", 0.0) if split_touching_mm is None
                                    else split_touching_mm),
            previous_labels=pkg.previous_labels,
            resample_data=Resampling.from_section(pkg.section("resampling"), "data"),
            resample_logits=Resampling.from_section(pkg.section("resampling"), "logits"),
        )

    def with_window(self, **changes) -> "RunConfig":
        """A copy with sliding-window fields changed (e.g. a smaller batch after running out of memory)."""
        return replace(self, window=replace(self.window, **changes))

    @property
    def recipe(self) -> dict:
        """The normalization recipe as the manifest writes it."""
        return {k: _plain(v) for k, v in self.normalization}

    def min_voxels(self, voxel_mm3: float) -> int:
        """The smallest component kept on a grid of `voxel_mm3` voxels."""
        return math.ceil(self.min_volume_mm3 / voxel_mm3) if self.min_volume_mm3 else 0

    def to_dict(self) -> dict:
        """The report's settings that come from the configuration (the run adds grid, box and rules)."""
        window = {k: _plain(getattr(self.window, k)) for k in self.window.__dataclass_fields__
                  if (k != "context" or self.window.context)  # a 3D model's settings stay as they were
                  and (k != "accumulate" or self.window.accumulate != "float32")}
        out = {"sliding_window": window,
               "min_volume_mm3": self.min_volume_mm3, "connectivity": self.connectivity}
        if self.split_touching_mm:  # other reports stay as they were
            out["split_touching_mm"] = self.split_touching_mm
        if self.resample_data is not None:  # other reports stay as they were
            out["resampling"] = {"scheme": "nnunet", "data": vars(self.resample_data).copy(),
                                 "logits": vars(self.resample_logits).copy()}
        return out


def check_nonnegative(name: str, value) -> None:
    """A caller's override of a rule's parameter: None (the manifest's) or a finite number >= 0, refused
    in one line otherwise (the CLI and the manifest schema refuse the same values)."""
    try:
        ok = value is None or (math.isfinite(float(value)) and float(value) >= 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise LnrtError(f"{name} {value!r}: expected a finite number >= 0 (0 turns it off)")


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value
