"""Model packages: a folder with `model.onnx` (+ precision variants) and the `lnrt.json` manifest.

The manifest is the single place a model's recipe lives (spacing, patch, normalization, classes,
sliding-window and postprocessing defaults, provenance) and lists the sha256 of every file, which is
verified on load. Per-axis lists are in numpy (z, y, x) order and their keys say so.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import LnrtError

FORMAT = "lnrt.package/1"
MANIFEST = "lnrt.json"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
NORMALIZATIONS = ("ct_zscore", "window")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def default_package_path() -> Path:
    """The model package shipped inside the `lnrt.models` package."""
    return Path(str(resources.files("lnrt.models") / "default"))


def _require(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise LnrtError(f"{source}: manifest {what}")


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    manifest: dict

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, verify: bool = True) -> "ModelPackage":
        root = default_package_path() if path is None else Path(path)
        if root.is_file() and root.name == MANIFEST:
            root = root.parent
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise LnrtError(f"{root}: no {MANIFEST} found; expected an lnrt model package folder")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LnrtError(f"{mpath}: not valid JSON ({exc}); expected an lnrt manifest") from None
        pkg = cls(root, manifest)
        pkg.validate()
        if verify:
            pkg.verify_files()
        return pkg

    def validate(self) -> None:
        m, src = self.manifest, str(self.path / MANIFEST)
        _require(isinstance(m, dict) and m.get("format") == FORMAT, src,
                 f"format is {m.get('format') if isinstance(m, dict) else None!r}; expected {FORMAT!r}")
        for key in ("name", "version", "input", "normalization", "classes", "output", "files"):
            _require(key in m, src, f"lacks {key!r}")
        inp = m["input"]
        sp, patch = inp.get("spacing_zyx_mm"), inp.get("patch_size_zyx")
        _require(isinstance(sp, list) and len(sp) == 3 and all(float(s) > 0 for s in sp), src,
                 "input.spacing_zyx_mm must be three positive numbers")
        _require(isinstance(patch, list) and len(patch) == 3 and all(int(p) >= 8 for p in patch), src,
                 "input.patch_size_zyx must be three integers >= 8")
        _require(m["normalization"].get("scheme") in NORMALIZATIONS, src,
                 f"normalization.scheme must be one of {NORMALIZATIONS}")
        _require(isinstance(m["classes"], list) and len(m["classes"]) >= 2, src,
                 "classes must list at least background and one foreground class")
        _require(m["output"].get("activation") in ("softmax", "sigmoid"), src,
                 "output.activation must be 'softmax' or 'sigmoid'")
        _require("model.onnx" in m["files"], src, "files must list model.onnx")

    def verify_files(self) -> None:
        for name, entry in self.manifest["files"].items():
            f = self.path / name
            if not f.is_file():
                raise LnrtError(f"{f}: listed in the manifest but missing; the package is incomplete")
            got = sha256_of(f)
            if got != entry.get("sha256"):
                raise LnrtError(
                    f"{f}: sha256 {got[:16]}... does not match the manifest's "
                    f"{str(entry.get('sha256'))[:16]}...; the package is corrupted or was modified"
                )

    # -- accessors ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def spacing_zyx(self) -> tuple:
        return tuple(float(s) for s in self.manifest["input"]["spacing_zyx_mm"])

    @property
    def patch_zyx(self) -> tuple:
        return tuple(int(p) for p in self.manifest["input"]["patch_size_zyx"])

    @property
    def classes(self) -> list:
        return list(self.manifest["classes"])

    def section(self, key: str) -> dict:
        return dict(self.manifest.get(key, {}))

    def variants(self) -> list:
        return [v for v, f in VARIANT_FILES.items() if f in self.manifest["files"]]

    def onnx_path(self, variant: str = "fp32") -> Path:
        if variant not in VARIANT_FILES:
            raise LnrtError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANT_FILES)}")
        fname = VARIANT_FILES[variant]
        if fname not in self.manifest["files"]:
            raise LnrtError(
                f"{self.path}: package has no {variant} variant (has {', '.join(self.variants())}); "
                "create it with `lnrt export`"
            )
        return self.path / fname

    def gate_failed_on(self, variant: str) -> dict:
        """{backend: report line} for each backend on which `variant` failed its recorded parity gate."""
        entry = self.manifest.get("variants", {}).get(variant, {})
        return {b: r for b, r in entry.get("gate_backends", {}).items() if not r.get("passed", False)}

    def sha256(self, variant: str = "fp32") -> str:
        return self.manifest["files"][VARIANT_FILES[variant]]["sha256"]

    def summary(self, variant: str = "fp32") -> dict:
        return {"name": self.name, "version": self.version, "variant": variant,
                "sha256": self.sha256(variant), "path": str(self.path),
                "provenance": self.manifest.get("provenance", {})}


def make_manifest(name: str, version: str, spacing_zyx, patch_zyx, normalization: dict, provenance: dict,
                  classes=("background", "lymph_node"), min_volume_mm3: float = 10.0,
                  sliding_window: dict | None = None, postprocessing: dict | None = None) -> dict:
    """A manifest with lnrt's defaults for everything a model does not set (file hashes filled later)."""
    return {
        "format": FORMAT, "name": name, "version": version,
        "input": {"name": "image", "spacing_zyx_mm": [float(s) for s in spacing_zyx],
                  "patch_size_zyx": [int(p) for p in patch_zyx], "channels": 1, "orientation": "LPS"},
        "normalization": normalization,
        "classes": list(classes),
        "output": {"name": "logits", "activation": "softmax"},
        "sliding_window": sliding_window or {"overlap": 0.5, "sigma_scale": 0.125, "mirror_axes": [],
                                             "batch_size": 2},
        "postprocessing": {"min_volume_mm3": float(min_volume_mm3), "connectivity": 26, **(postprocessing or {})},
        "body_crop": {"threshold_hu": -500.0, "margin_mm": 10.0},
        "provenance": provenance,
        "files": {"model.onnx": {}},
    }


def write_manifest(root: Path, manifest: dict) -> None:
    """Fill in the sha256 of every listed file and write `lnrt.json` (used by exporters)."""
    for name in manifest["files"]:
        manifest["files"][name] = {"sha256": sha256_of(root / name)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
