"""Model packages: a folder with `model.onnx` (+ precision variants) and the `lnrt.json` manifest.

The manifest is the single place a model's recipe lives (spacing, patch, normalization, classes,
sliding-window and postprocessing defaults, provenance) and lists the size and sha256 of every file.
Per-axis lists are in numpy (z, y, x) order and their keys say so.

A package cannot change unnoticed:
- `lnrt.json.sha256` beside the manifest holds the sha256 of lnrt.json's exact bytes (in `sha256sum`
  format, so `sha256sum -c lnrt.json.sha256` checks it too). Through the per-file hashes it lists, that
  one digest covers every file of the package: it is the package's identity (`package_sha256`, in every
  report). A package without it, or whose manifest does not match it, is refused.
- Why a hash file and not a signature: a hash catches every edit and every corruption (a recipe value
  changed by hand, a truncated copy) and gives the whole package one identity a site can pin. It does not
  prove who wrote the package: someone who rewrites lnrt.json and lnrt.json.sha256 together makes a
  consistent package. Proving authorship needs a signature and key management (who holds the key, how
  it is rotated and revoked), which is out of scope here. Pinning closes the gap where it matters: a
  site that validated a package records its `package_sha256` and loads it with
  `ModelPackage.load(path, expect_sha256=...)`; any other package, however consistent, is refused.
- Every `files` entry is a plain relative path inside the package (no absolute path, `..`, backslash or
  empty part; a symlink must stay inside), a regular file, and its recorded size is compared (one
  `fstat`) before it is hashed, so a huge or sparse file is refused at once instead of hashed for hours.
- Every external-data file an .onnx file refers to must itself be listed, hence hashed
  (`lnrt.onnxproto` reads the references without the `onnx` package).
- `Session` verifies the model file it hands to the backend again at that moment (`verify_model`), so a
  file swapped after `load` is refused, and the report carries the sha256 computed then.
- The manifest is schema-checked (`check_manifest`): types and ranges of everything the runtime reads,
  each error one line naming the file, the key, the value and what was expected.

`lnrt package seal FOLDER` seals a manifest edited on purpose (or written by an older lnrt):
it verifies every listed file against its sha256, records the sizes and writes lnrt.json.sha256.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .atomic import write_bytes, write_text
from .errors import LnrtError
from .sliding_window import ACCUMULATE  # the manifest's sliding_window.accumulate values

FORMAT = "lnrt.package/1"
MANIFEST = "lnrt.json"
MANIFEST_HASH = "lnrt.json.sha256"
RESAMPLING_SCHEMES = ("nnunet",)  # resampling.scheme (lnrt.splines); absent: lnrt's own
TILINGS = ("body_box", "whole_scan")  # body_crop.tiling (lnrt.preprocess.BodyCropConfig)
# input.kind: a volume model, or a slice model run along the canonical axial axis (lnrt.slices)
INPUT_KINDS = ("3d", "2d", "2.5d")
# input.context_slices of a 2.5d model: SNet's is 7 (15 slices in all); 32 each side is a 65-slice slab
MAX_CONTEXT_SLICES = 32
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
NORMALIZATIONS = ("ct_zscore", "window")
# input.previous_stage of a cascade (nnU-Net's 3d_cascade_fullres): see _check_previous_stage
PREVIOUS_STAGE_KEYS = ("package", "package_sha256", "labels")

MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB; the default package's manifest is 4 kB
MAX_JSON_DEPTH = 32  # nesting levels of the manifest (the default's is 7)
MAX_FILES = 1000
# Largest file, and all files together: far above any segmentation network (nnU-Net's are < 1 GB), small
# enough to hash in about a minute. A recorded size above it (a 1 TB sparse file) is refused unread.
MAX_FILE_BYTES = 16 << 30
# Allocation bounds. A patch of at most 2^24 voxels (256^3; 64 MiB per float32 channel, 128 MiB for the
# float64 importance map), and at most 2^30 float32 values (4 GiB) of logits per batch
# (batch_size x patch voxels x classes): a manifest cannot make the runtime allocate petabytes.
MAX_PATCH_VOXELS = 1 << 24
MAX_BATCH_VALUES = 1 << 30
HU_LIMIT = 100_000.0  # |HU| of windows, clips and thresholds (CT is about -1024..30000)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"^[A-Za-z]:")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def default_package_path() -> Path:
    """The model package shipped inside the `lnrt.models` package."""
    return Path(str(resources.files("lnrt.models") / "default"))


# -- files ---------------------------------------------------------------------------------------

def name_problem(name) -> str | None:
    """Why `name` is not a plain relative path inside a package (None: it is)."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if "\\" in name or "\0" in name:
        return "contains a backslash or NUL"
    if name.startswith("/") or _DRIVE.match(name):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out with '..'"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' part"
    if name in (MANIFEST, MANIFEST_HASH):
        return "is the manifest itself"
    return None


def _open_listed(root: Path, name: str, src: str) -> tuple:
    """(fd, stat) of a listed file, checked to be a plain relative name resolving inside `root` to a
    regular file. Opened non-blocking (a FIFO does not hang) and checked on the open descriptor."""
    why = name_problem(name)
    if why:
        raise LnrtError(f"{src}: files key {name!r} {why}; expected a plain relative path inside the package")
    f = root / name
    real, inside = f.resolve(), root.resolve()
    if real != inside and inside not in real.parents:
        raise LnrtError(f"{f}: resolves to {real}, outside the package {inside}; expected a file inside the "
                        "package (not a symlink out of it)")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LnrtError(f"{f}: listed in the manifest but missing; the package is incomplete") from None
    except OSError as exc:
        raise LnrtError(f"{f}: cannot be opened ({exc.strerror}); expected a readable file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LnrtError(f"{f}: not a regular file; expected the model file the manifest lists")
    return fd, st


def _digest_fd(fd: int, size: int, path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of exactly `size` bytes from fd; a file that grew or shrank meanwhile is refused."""
    h, left = hashlib.sha256(), size
    while left > 0:
        block = os.read(fd, min(chunk, left))
        if not block:
            raise LnrtError(f"{path}: shorter than the {size} bytes it had a moment ago; the package is "
                            "being modified")
        h.update(block)
        left -= len(block)
    if os.read(fd, 1):
        raise LnrtError(f"{path}: longer than the {size} bytes it had a moment ago; the package is being modified")
    return h.hexdigest()


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise LnrtError(f"{path}: {size} bytes, larger than the {limit} bytes {what} may have; expected "
                            f"an lnrt {what}")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise LnrtError(f"{path}: larger than the {limit} bytes {what} may have; expected an lnrt {what}")
    return data


def _hash_file_text(digest: str) -> str:
    return f"{digest}  {MANIFEST}\n"  # sha256sum's format


def _json_depth(obj) -> int:
    depth, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, (dict, list)):
            depth = max(depth, d)
            if depth > MAX_JSON_DEPTH:
                return depth
            todo.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return depth


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_manifest(data: bytes, src: str):
    """The manifest's JSON (no NaN/Infinity, nesting bounded), or one LnrtError line."""
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise LnrtError(f"{src}: JSON nested too deeply; expected an lnrt manifest "
                        f"(at most {MAX_JSON_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        msg = " ".join(str(exc).split())[:200]
        raise LnrtError(f"{src}: not valid JSON ({msg}); expected an lnrt manifest") from None
    if _json_depth(obj) > MAX_JSON_DEPTH:
        raise LnrtError(f"{src}: JSON nested deeper than {MAX_JSON_DEPTH} levels; expected an lnrt manifest")
    return obj


# -- the manifest's schema -----------------------------------------------------------------------

_ABSENT = object()


def _show(value) -> str:
    if value is _ABSENT:
        return "missing"
    text = json.dumps(value, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Schema:
    """A small typed validator: each check raises one LnrtError line naming the file, the key path, the
    value and what was expected."""

    def __init__(self, src: str):
        self.src = src

    def fail(self, key: str, value, expected: str):
        raise LnrtError(f"{self.src}: {key} is {_show(value)}; expected {expected}")

    def obj(self, parent: dict, key: str, path: str, required: bool = True, allowed=None) -> dict:
        v = parent.get(key, _ABSENT)
        if v is _ABSENT and not required:
            return {}
        if not isinstance(v, dict):
            self.fail(path, v, "an object")
        if allowed is not None:
            for k in v:
                if k not in allowed:
                    raise LnrtError(f"{self.src}: {path} has unknown key {k!r}; expected only "
                                    f"{', '.join(allowed)}")
        return v

    def num(self, parent: dict, key: str, path: str, lo=None, hi=None, lo_open=False, hi_open=False,
            required: bool = False, integer: bool = False, expected: str | None = None):
        v = parent.get(key, _ABSENT)
        if v is _ABSENT and not required:
            return None
        ok = (_is_int(v) if integer else _is_num(v)) and \
            (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            if expected is None:
                rng = [f"{'>' if lo_open else '>='} {lo}" if lo is not None else "",
                       f"{'<' if hi_open else '<='} {hi}" if hi is not None else ""]
                expected = ("an integer" if integer else "a finite number") + \
                    (" " + " and ".join(r for r in rng if r) if any(rng) else "")
            self.fail(path, v, expected)
        return v

    def seq(self, parent: dict, key: str, path: str, n: int, required: bool, item, expected: str):
        """A list of exactly n items each passing `item` (a predicate)."""
        v = parent.get(key, _ABSENT)
        if v is _ABSENT and not required:
            return None
        if not isinstance(v, list) or len(v) != n:
            self.fail(path, v, expected)
        for i, x in enumerate(v):
            if not item(x):
                self.fail(f"{path}[{i}]", x, expected)
        return v

    def pair(self, parent: dict, key: str, path: str, lo: float, hi: float, required: bool, what: str):
        """Two finite numbers in [lo, hi] with low < high."""
        v = self.seq(parent, key, path, 2, required, lambda x: _is_num(x) and lo <= x <= hi,
                     f"two finite numbers [low, high] in [{lo:g}, {hi:g}] ({what})")
        if v is not None and not v[0] < v[1]:
            self.fail(path, v, f"[low, high] with low < high ({what})")
        return v

    def text(self, parent: dict, key: str, path: str, required: bool = False, choices=None, limit: int = 200):
        v = parent.get(key, _ABSENT)
        if v is _ABSENT and not required:
            return None
        if choices is not None:
            if v not in choices:
                self.fail(path, v, "one of " + ", ".join(repr(c) for c in choices))
        elif not isinstance(v, str) or not v or len(v) > limit:
            self.fail(path, v, f"a non-empty string of at most {limit} characters")
        return v

    def axes(self, parent: dict, key: str, path: str):
        v = parent.get(key, _ABSENT)
        if v is _ABSENT:
            return
        if not isinstance(v, list) or len(v) > 3 or len(set(map(repr, v))) != len(v):
            self.fail(path, v, "a list of distinct axes among 0, 1, 2")
        for i, a in enumerate(v):
            if not _is_int(a) or a not in (0, 1, 2):
                self.fail(f"{path}[{i}]", a, "an axis: 0 (z), 1 (y) or 2 (x)")

    def flag(self, parent: dict, key: str, path: str):
        v = parent.get(key, _ABSENT)
        if v is not _ABSENT and not isinstance(v, bool):
            self.fail(path, v, "true or false")


def _check_input(s: _Schema, m):
    """The header and the input section; returns the patch's voxel count."""
    if not isinstance(m, dict):
        s.fail("the manifest", m, "a JSON object")
    if m.get("format") != FORMAT:
        s.fail("format", m.get("format", _ABSENT), repr(FORMAT))
    for key in ("name", "version"):
        s.text(m, key, key, required=True)
    inp = s.obj(m, "input", "input")
    s.text(inp, "name", "input.name")
    _check_previous_stage(s, inp)
    s.text(inp, "orientation", "input.orientation", choices=("LPS",))
    kind = s.text(inp, "kind", "input.kind", choices=INPUT_KINDS) or "3d"
    if kind == "2.5d":
        s.num(inp, "context_slices", "input.context_slices", 1, MAX_CONTEXT_SLICES, integer=True, required=True,
              expected=f"the slices above and below the target slice, an integer in [1, {MAX_CONTEXT_SLICES}]")
    elif inp.get("context_slices", 0) != 0:
        s.fail("input.context_slices", inp["context_slices"], f"0 or absent for a {kind} model (context "
               "slices are for input.kind 2.5d)")
    slices = kind != "3d"
    s.seq(inp, "spacing_zyx_mm", "input.spacing_zyx_mm", 3, True,
          lambda x: (_is_num(x) and 0.05 <= x <= 20) or (slices and x is None),
          "three finite spacings in [0.05, 20] mm" + (" or null (the scan's own spacing on that axis)"
                                                      if slices else ""))
    if slices:
        patch = s.seq(inp, "patch_size_zyx", "input.patch_size_zyx", 3, True,
                      lambda x: _is_int(x) and 1 <= x <= 1024, "[1, y, x]: one slice, in-plane sizes in [8, 1024]")
        if patch[0] != 1 or min(patch[1:]) < 8:
            s.fail("input.patch_size_zyx", patch, f"[1, y, x] for a {kind} model: one slice, in-plane sizes "
                   "in [8, 1024]")
    else:
        patch = s.seq(inp, "patch_size_zyx", "input.patch_size_zyx", 3, True,
                      lambda x: _is_int(x) and 8 <= x <= 1024, "three integers in [8, 1024]")
    voxels = math.prod(patch) * (1 + 2 * inp.get("context_slices", 0))
    if voxels > MAX_PATCH_VOXELS:
        s.fail("input.patch_size_zyx", patch, f"at most {MAX_PATCH_VOXELS} voxels in a patch (256^3); "
               f"this one has {voxels}")
    return math.prod(patch)


def _check_previous_stage(s: _Schema, inp: dict) -> None:
    """`input.channels` (1: the CT), or for a cascade 1 + one mask per label of `input.previous_stage`:
    {"package": a folder inside this package holding the first stage's own lnrt package,
    "package_sha256": that package's sha256 (so this manifest's seal covers it and everything it lists),
    "labels": the first stage's label values whose one-hot masks follow the CT, ascending}."""
    prev = inp.get("previous_stage", _ABSENT)
    if prev is _ABSENT:
        if "channels" in inp and (not _is_int(inp["channels"]) or inp["channels"] != 1):
            s.fail("input.channels", inp["channels"], "1 (lnrt runs single-channel CT models; a cascade "
                   "also gives input.previous_stage)")
        return
    s.obj(inp, "previous_stage", "input.previous_stage", allowed=PREVIOUS_STAGE_KEYS)
    why = name_problem(prev.get("package"))
    if why:
        s.fail("input.previous_stage.package", prev.get("package", _ABSENT),
               f"a folder inside the package holding the first stage's lnrt package (this one {why})")
    sha = prev.get("package_sha256", _ABSENT)
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        s.fail("input.previous_stage.package_sha256", sha, "64 lowercase hex digits (the first stage's "
               "package sha256)")
    labels = prev.get("labels", _ABSENT)
    if (not isinstance(labels, list) or not 1 <= len(labels) <= 63
            or not all(_is_int(v) and 1 <= v <= 63 for v in labels) or labels != sorted(set(labels))):
        s.fail("input.previous_stage.labels", labels, "ascending distinct label values in [1, 63] (the first "
               "stage's foreground labels fed as one-hot channels)")
    if inp.get("channels", _ABSENT) != 1 + len(labels):
        s.fail("input.channels", inp.get("channels", _ABSENT), f"{1 + len(labels)} for a cascade: the CT and "
               f"one mask per label of input.previous_stage.labels {labels}")


def _check_normalization(s: _Schema, m):
    norm = s.obj(m, "normalization", "normalization")
    scheme = s.text(norm, "scheme", "normalization.scheme", required=True, choices=NORMALIZATIONS)
    if scheme == "window":
        s.obj(m, "normalization", "normalization", allowed=("scheme", "window_hu"))
        s.pair(norm, "window_hu", "normalization.window_hu", -HU_LIMIT, HU_LIMIT, True, "HU")
    else:
        s.obj(m, "normalization", "normalization", allowed=("scheme", "clip_hu", "mean", "std"))
        s.pair(norm, "clip_hu", "normalization.clip_hu", -HU_LIMIT, HU_LIMIT, True, "HU")
        s.num(norm, "mean", "normalization.mean", -HU_LIMIT, HU_LIMIT, required=True)
        s.num(norm, "std", "normalization.std", 0, HU_LIMIT, lo_open=True, required=True)


def _check_classes(s: _Schema, m):
    classes = m.get("classes", _ABSENT)
    if not isinstance(classes, list) or not 2 <= len(classes) <= 64:
        s.fail("classes", classes, "a list of 2 to 64 class names, background first")
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip() or len(c) > 128:
            s.fail(f"classes[{i}]", c, "a non-empty class name of at most 128 characters")
        if c in classes[:i]:
            s.fail(f"classes[{i}]", c, "class names that are all different")
    out = s.obj(m, "output", "output")
    s.text(out, "name", "output.name")
    s.text(out, "activation", "output.activation", required=True, choices=("softmax", "sigmoid"))
    return classes


def _check_sliding_window(s: _Schema, m, voxels: int, classes: list):
    sw = s.obj(m, "sliding_window", "sliding_window", required=False,
               allowed=("overlap", "sigma_scale", "mirror_axes", "batch_size", "allowed_mirror_axes",
                        "accumulate"))
    s.text(sw, "accumulate", "sliding_window.accumulate", choices=ACCUMULATE)
    s.num(sw, "overlap", "sliding_window.overlap", 0, 1, hi_open=True)
    s.num(sw, "sigma_scale", "sliding_window.sigma_scale", 0, 1, lo_open=True)
    batch = s.num(sw, "batch_size", "sliding_window.batch_size", 1, 256, integer=True)
    s.axes(sw, "mirror_axes", "sliding_window.mirror_axes")
    s.axes(sw, "allowed_mirror_axes", "sliding_window.allowed_mirror_axes")
    values = (batch or 2) * voxels * len(classes)
    if values > MAX_BATCH_VALUES:
        s.fail("sliding_window.batch_size", batch or 2,
               f"batch_size x patch voxels x classes <= {MAX_BATCH_VALUES} (4 GiB of float32 logits per "
               f"batch); this is {values}")


def _check_postprocessing(s: _Schema, m):
    post = s.obj(m, "postprocessing", "postprocessing", required=False,
                 allowed=("min_volume_mm3", "connectivity", "neck_region", "min_short_axis_px",
                          "split_touching_mm"))
    s.num(post, "min_volume_mm3", "postprocessing.min_volume_mm3", 0)
    if "connectivity" in post and (not _is_int(post["connectivity"]) or post["connectivity"] not in (6, 18, 26)):
        s.fail("postprocessing.connectivity", post["connectivity"], "6, 18 or 26")
    s.num(post, "min_short_axis_px", "postprocessing.min_short_axis_px", 0)
    s.num(post, "split_touching_mm", "postprocessing.split_touching_mm", 0)
    neck = post.get("neck_region", _ABSENT)
    if neck not in (_ABSENT, None, False):
        if not isinstance(neck, dict):
            s.fail("postprocessing.neck_region", neck, "false, null or an object with width_mm, margin_mm, "
                   "lateral_margin_mm")
        s.obj(post, "neck_region", "postprocessing.neck_region",
              allowed=("width_mm", "margin_mm", "lateral_margin_mm"))
        s.pair(neck, "width_mm", "postprocessing.neck_region.width_mm", 0, 10_000, False, "mm")
        s.num(neck, "margin_mm", "postprocessing.neck_region.margin_mm", 0, 10_000)
        s.num(neck, "lateral_margin_mm", "postprocessing.neck_region.lateral_margin_mm", 0, 10_000)

    body = s.obj(m, "body_crop", "body_crop", required=False,
                 allowed=("threshold_hu", "margin_mm", "min_part", "enabled", "tiling"))
    s.num(body, "threshold_hu", "body_crop.threshold_hu", -HU_LIMIT, HU_LIMIT)
    s.num(body, "margin_mm", "body_crop.margin_mm", 0, 10_000)
    s.num(body, "min_part", "body_crop.min_part", 0, 1)
    s.flag(body, "enabled", "body_crop.enabled")
    if "tiling" in body and body["tiling"] not in TILINGS:
        s.fail("body_crop.tiling", body["tiling"], " or ".join(repr(t) for t in TILINGS))
    s.obj(m, "provenance", "provenance", required=False)


def _check_resampling(s: _Schema, m):
    """`resampling` (absent: lnrt's own, linear HU then normalization, probabilities back): scheme
    "nnunet" resamples as nnU-Net's predictor does (`lnrt.splines`): {"scheme": "nnunet", "data":
    {"order", "order_z", "force_separate_z"}, "logits": {the same}, "anisotropy_threshold"}."""
    res = s.obj(m, "resampling", "resampling", required=False,
                allowed=("scheme", "data", "logits", "anisotropy_threshold"))
    if not res:
        return
    s.text(res, "scheme", "resampling.scheme", required=True, choices=RESAMPLING_SCHEMES)
    s.num(res, "anisotropy_threshold", "resampling.anisotropy_threshold", 1, 1000)
    for key, orders in (("data", (0, 1, 3)), ("logits", (0, 1))):
        part = s.obj(res, key, f"resampling.{key}", allowed=("order", "order_z", "force_separate_z"))
        if part.get("order", _ABSENT) not in orders or not _is_int(part["order"]):
            s.fail(f"resampling.{key}.order", part.get("order", _ABSENT), " or ".join(map(str, orders)))
        if part.get("order_z", 0) not in (0, 1) or not _is_int(part.get("order_z", 0)):
            s.fail(f"resampling.{key}.order_z", part["order_z"], "0 or 1")
        if part.get("force_separate_z") not in (None, True, False):
            s.fail(f"resampling.{key}.force_separate_z", part["force_separate_z"], "true, false or null")


def _check_variants(s: _Schema, m):
    variants = s.obj(m, "variants", "variants", required=False)
    for v, entry in variants.items():
        if v not in VARIANT_FILES:
            s.fail(f"variants.{v}", entry, f"variants named {', '.join(VARIANT_FILES)}")
        entry = s.obj(variants, v, f"variants.{v}")
        s.text(entry, "file", f"variants.{v}.file")
        s.flag(entry, "gate_passed", f"variants.{v}.gate_passed")
        backends = s.obj(entry, "gate_backends", f"variants.{v}.gate_backends", required=False)
        for b in backends:
            line = s.obj(backends, b, f"variants.{v}.gate_backends.{b}")
            s.flag(line, "passed", f"variants.{v}.gate_backends.{b}.passed")
            fails = line.get("failures", [])
            if not isinstance(fails, list) or not all(isinstance(x, str) for x in fails):
                s.fail(f"variants.{v}.gate_backends.{b}.failures", fails, "a list of strings")


def _check_files(s: _Schema, m, src: str, files: bool):
    listed = s.obj(m, "files", "files")
    if not 1 <= len(listed) <= MAX_FILES:
        s.fail("files", f"{len(listed)} entries", f"1 to {MAX_FILES} files")
    if "model.onnx" not in listed:
        s.fail("files", sorted(listed), "a list of files including model.onnx")
    total = 0
    for name, entry in listed.items():
        why = name_problem(name)
        if why:
            s.fail(f"files key {name!r}", name, f"a plain relative path inside the package (this one {why})")
        key = f"files[{json.dumps(name)}]"
        if not isinstance(entry, dict):
            s.fail(key, entry, "an object with sha256 and size")
        if not files:
            continue
        if "size" not in entry:
            raise LnrtError(f"{src}: {key} records no size (a package written before lnrt recorded file "
                            f"sizes); re-export the package, or verify and seal it with "
                            f"`lnrt package seal {Path(src).parent}`")
        s.num(entry, "size", f"{key}.size", 0, MAX_FILE_BYTES, integer=True, required=True,
              expected=f"a size in bytes, at most {MAX_FILE_BYTES} (16 GiB)")
        total += entry["size"]
        if total > MAX_FILE_BYTES:
            s.fail(f"{key}.size", entry["size"], f"files of at most {MAX_FILE_BYTES} bytes (16 GiB) in all")
        sha = entry.get("sha256", _ABSENT)
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            s.fail(f"{key}.sha256", sha, "64 lowercase hex digits")


def check_manifest(m, src: str, files: bool = True) -> None:
    """Types and ranges of everything the runtime reads from a manifest; raises one LnrtError line.
    `files=False` skips the `files` entries' sha256 and size (a manifest about to be filled in)."""
    s = _Schema(src)
    voxels = _check_input(s, m)
    _check_normalization(s, m)
    classes = _check_classes(s, m)
    _check_sliding_window(s, m, voxels, classes)
    _check_postprocessing(s, m)
    _check_resampling(s, m)
    _check_variants(s, m)
    _check_files(s, m, src, files)


def seal_bytes(root: Path, data: bytes) -> str:
    """Write `data` as root/lnrt.json and its sha256 as root/lnrt.json.sha256 (each atomically; between
    the two a reader sees a mismatch and refuses, never a half-written file). Returns the digest."""
    digest = hashlib.sha256(data).hexdigest()
    write_bytes(Path(root) / MANIFEST, data)
    write_text(Path(root) / MANIFEST_HASH, _hash_file_text(digest))
    return digest


def _external_refs(root: Path, name: str) -> list:
    """The package names of the external-data files the listed .onnx file `name` refers to."""
    from .onnxproto import ProtoError, external_locations_of

    f = root / name
    try:
        locations = external_locations_of(f)
    except (ProtoError, OSError) as exc:
        raise LnrtError(f"{f}: not a readable ONNX model ({exc}); expected the model the manifest lists") from None
    folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
    refs = []
    for loc in locations:
        why = name_problem(loc)
        if why:
            raise LnrtError(f"{f}: external data location {loc!r} {why}; expected a file beside the model")
        refs.append(folder + loc)
    return refs


def _load_previous_stage(pkg: "ModelPackage", verify: bool) -> "ModelPackage":
    """A cascade's first stage: the package in `input.previous_stage.package`, loaded with its sha256
    pinned to the one this (sealed) manifest records, so the cascade's identity covers both stages."""
    prev, src = pkg.manifest["input"]["previous_stage"], pkg.path / MANIFEST
    sub = pkg.path / prev["package"]
    real, inside = sub.resolve(), pkg.path.resolve()
    if inside not in real.parents:
        raise LnrtError(f"{src}: input.previous_stage.package {prev['package']!r} resolves to {real}, outside "
                        "the package; expected a folder inside it")
    if not (sub / MANIFEST).is_file():
        raise LnrtError(f"{src}: input.previous_stage.package is {prev['package']!r}, but {sub} holds no "
                        f"{MANIFEST}; expected the first stage's lnrt package there (re-export the cascade)")
    try:
        first = ModelPackage.load(sub, verify=verify, expect_sha256=prev["package_sha256"])
    except LnrtError as exc:
        raise LnrtError(f"{src}: input.previous_stage: {exc}") from None
    if "previous_stage" in first.manifest["input"]:
        raise LnrtError(f"{src}: input.previous_stage.package {prev['package']!r} is itself a cascade; expected "
                        "a single-stage package (nnU-Net's cascades have two stages)")
    if max(prev["labels"]) >= len(first.classes):
        raise LnrtError(f"{src}: input.previous_stage.labels is {prev['labels']}; expected labels of the first "
                        f"stage's classes {first.classes} (1 to {len(first.classes) - 1})")
    return first


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    manifest: dict
    manifest_sha256: str = field(default="", compare=False)  # sha256 of lnrt.json's bytes as loaded
    # a cascade's first stage (input.previous_stage), loaded and verified with this package; else None
    previous_stage: "ModelPackage | None" = field(default=None, compare=False, repr=False)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, verify: bool = True,
             expect_sha256: str | None = None) -> "ModelPackage":
        """Load and check a package folder (default: the embedded one).

        Always: the manifest's size, its seal (lnrt.json.sha256), the pin `expect_sha256` (the
        `package_sha256` a site validated), the schema, every listed file's name, type and size, and
        that every external-data file of a listed .onnx is listed. `verify` (default) also checks the
        sha256 of every listed file."""
        root = default_package_path() if path is None else Path(path)
        if root.is_file() and root.name == MANIFEST:
            root = root.parent
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise LnrtError(f"{root}: no {MANIFEST} found; expected an lnrt model package folder")
        data = _read_bounded(mpath, MAX_MANIFEST_BYTES, "manifest")
        digest = hashlib.sha256(data).hexdigest()
        hpath = root / MANIFEST_HASH
        seal_hint = (f"re-export the package, or, if you trust its contents, seal it with "
                     f"`lnrt package seal {root}`")
        if not hpath.is_file():
            raise LnrtError(f"{hpath}: missing, so the manifest is not sealed (a package from an older lnrt, or "
                            f"edited by hand); {seal_hint}")
        words = _read_bounded(hpath, 4096, "manifest hash file").decode("ascii", errors="replace").split()
        want = words[0].lower() if words else ""
        if not _HEX64.fullmatch(want):
            raise LnrtError(f"{hpath}: holds no sha256 (64 hex digits); {seal_hint}")
        if want != digest:
            raise LnrtError(f"{mpath}: sha256 {digest[:16]}... differs from the {want[:16]}... sealed in "
                            f"{MANIFEST_HASH}; the manifest was modified after the package was written: "
                            f"{seal_hint}")
        if expect_sha256 is not None:
            pin = str(expect_sha256).strip().lower()
            if pin != digest:
                raise LnrtError(f"{root}: package sha256 {digest} is not the pinned {pin}; expected the "
                                "package this site validated (or update the pin after validating this one)")
        pkg = cls(root, parse_manifest(data, str(mpath)), digest)
        pkg.validate()
        pkg.verify_files(hashes=verify)
        if "previous_stage" in pkg.manifest["input"]:
            object.__setattr__(pkg, "previous_stage", _load_previous_stage(pkg, verify))
        return pkg

    def validate(self) -> None:
        """The schema check (`check_manifest`) of this package's manifest."""
        check_manifest(self.manifest, str(self.path / MANIFEST))

    def verify_files(self, hashes: bool = True) -> dict:
        """Check every listed file: name, regular file inside the package and size first (all of them,
        so a huge file is refused before anything is hashed), then (`hashes`) its sha256; then that every
        external-data file of a listed .onnx is listed. Returns {name: sha256 computed now} ({} without
        `hashes`)."""
        listed = self.manifest["files"]
        for name in listed:
            os.close(self._open_checked(name)[0])
        got = {name: self.verify_file(name) for name in listed} if hashes else {}
        for name in listed:
            if name.endswith(".onnx"):
                self._check_external(name)
        return got

    def _open_checked(self, name: str) -> tuple:
        src = str(self.path / MANIFEST)
        fd, st = _open_listed(self.path, name, src)
        want = self.manifest["files"][name]["size"]
        if st.st_size != want:
            os.close(fd)
            raise LnrtError(f"{self.path / name}: {st.st_size} bytes, not the {want} the manifest records; the "
                            "package is corrupted or was modified")
        return fd, st

    def verify_file(self, name: str) -> str:
        """Size, then sha256 of one listed file, now; returns the sha256."""
        f = self.path / name
        fd, st = self._open_checked(name)
        try:
            got = _digest_fd(fd, st.st_size, f)
        finally:
            os.close(fd)
        want = self.manifest["files"][name].get("sha256")
        if got != want:
            raise LnrtError(f"{f}: sha256 {got[:16]}... does not match the manifest's {str(want)[:16]}...; "
                            "the package is corrupted or was modified")
        return got

    def _check_external(self, name: str) -> list:
        refs = _external_refs(self.path, name)
        for ref in refs:
            if ref not in self.manifest["files"]:
                raise LnrtError(f"{self.path / name}: refers to external data {ref!r}, which the manifest does "
                                "not list (so it is not hashed); expected every external-data file in "
                                "`files` (re-export the package)")
        return refs

    def verify_model(self, variant: str = "fp32") -> str:
        """Verify, now, the variant's .onnx file and the external-data files it refers to (size, then
        sha256, against the manifest); returns the .onnx file's sha256. `Session` calls this just before
        handing the file to its backend."""
        name = self.onnx_path(variant).name  # a clear error for a variant the package lacks
        got = self.verify_file(name)
        for ref in self._check_external(name):
            self.verify_file(ref)
        return got

    def check_model_io(self, variant: str = "fp32") -> None:
        """The ONNX model's declared input and output against the manifest, before a backend loads it: one
        input (batch, channels, *patch_size_zyx) (channels 1, or a cascade's 1 + its masks) and a first
        output (batch, len(classes), *patch) wherever the model gives a number (a symbolic batch is fine). A third class name on a two-channel model, or a patch the
        network was not exported for, would otherwise run, or fail inside the backend."""
        from .onnxproto import ProtoError, io_shapes_of

        f = self.onnx_path(variant)
        try:
            io = io_shapes_of(f)
        except (ProtoError, OSError, ValueError) as exc:
            raise LnrtError(f"{f}: not a readable ONNX model ({exc}); expected the model the manifest lists") from None
        want_in = [None, self.input_channels, *self.input_patch_zyx]
        want_out = [None, len(self.classes), *self.patch_zyx]
        src = self.path / MANIFEST
        for what, entries, want, keys in (("input", io["inputs"], want_in,
                                           "input.channels, input.patch_size_zyx and input.context_slices"),
                                          ("output", io["outputs"][:1], want_out, "classes and input.patch_size_zyx")):
            if what == "input" and len(entries) != 1:
                raise LnrtError(f"{f}: the model has {len(entries)} inputs; expected one (batch, channels, z, y, x)")
            for name, dims in entries:
                if dims is None:
                    continue
                if len(dims) != 5:
                    raise LnrtError(f"{f}: the model's {what} {name!r} has rank {len(dims)} ({dims}); expected "
                                    "rank 5 (batch, channels, z, y, x)")
                if any(isinstance(d, int) and w is not None and d != w
                                         for d, w in zip(dims, want)):
                    raise LnrtError(f"{f}: the model's {what} {name!r} is {dims}, where {src} ({keys}) asks for "
                                    f"{['batch', *want[1:]]}; expected a manifest that matches its model")

    @property
    def package_sha256(self) -> str:
        """The package's identity: the sha256 of its lnrt.json (which lists every file's sha256)."""
        return self.manifest_sha256

    def rewrite(self, manifest: dict) -> str:
        """Write `manifest` as this package's sealed manifest (`write_manifest`) and adopt it in place."""
        digest = write_manifest(self.path, manifest)
        self.manifest.clear()
        self.manifest.update(manifest)
        object.__setattr__(self, "manifest_sha256", digest)
        return digest

    # -- accessors ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def spacing_zyx(self) -> tuple:
        """The model grid's spacing; None on an axis a slice model takes at the scan's own spacing."""
        return tuple(None if s is None else float(s) for s in self.manifest["input"]["spacing_zyx_mm"])

    @property
    def input_kind(self) -> str:
        return self.manifest["input"].get("kind", "3d")

    @property
    def input_channels(self) -> int:
        """The network's input channels: the CT, then a cascade's one-hot masks of the first stage."""
        return int(self.manifest["input"].get("channels", 1))

    @property
    def previous_labels(self) -> tuple:
        """A cascade's first-stage labels fed as one-hot channels after the CT (() for one stage)."""
        return tuple(int(v) for v in self.manifest["input"].get("previous_stage", {}).get("labels", ()))

    @property
    def context_slices(self) -> int:
        return int(self.manifest["input"].get("context_slices", 0))

    @property
    def input_patch_zyx(self) -> tuple:
        """The network input's patch: the output patch plus the context slices above and below."""
        pz, py, px = self.patch_zyx
        return (pz + 2 * self.context_slices, py, px)

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
                "sha256": self.sha256(variant), "package_sha256": self.package_sha256, "path": str(self.path),
                "provenance": self.manifest.get("provenance", {})}


def make_manifest(name: str, version: str, spacing_zyx, patch_zyx, normalization: dict, provenance: dict,
                  classes=("background", "lymph_node"), min_volume_mm3: float = 10.0,
                  sliding_window: dict | None = None, postprocessing: dict | None = None,
                  input_kind: str = "3d", context_slices: int = 0, previous_stage: dict | None = None) -> dict:
    """A manifest with lnrt's defaults for everything a model does not set (file hashes filled later).
    A spacing of None (slice models only) keeps the scan's own spacing on that axis. `previous_stage`
    ({"package", "package_sha256", "labels"}) makes a cascade's manifest: 1 + len(labels) channels."""
    inp = {"name": "image", "spacing_zyx_mm": [None if s is None else float(s) for s in spacing_zyx],
           "patch_size_zyx": [int(p) for p in patch_zyx], "channels": 1, "orientation": "LPS"}
    if previous_stage is not None:  # single-stage manifests stay as they were
        inp["channels"] = 1 + len(previous_stage["labels"])
        inp["previous_stage"] = {"package": previous_stage["package"],
                                 "package_sha256": previous_stage["package_sha256"],
                                 "labels": [int(v) for v in previous_stage["labels"]]}
    if input_kind != "3d":  # 3d manifests stay as they were
        inp = {**inp, "kind": input_kind, **({"context_slices": int(context_slices)} if context_slices else {})}
    return {
        "format": FORMAT, "name": name, "version": version,
        "input": inp,
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


def write_manifest(root: Path, manifest: dict) -> str:
    """Fill in the sha256 and size of every listed file, check the manifest, and write `lnrt.json` and
    `lnrt.json.sha256` (used by exporters). Returns the package's sha256 (the manifest's)."""
    root = Path(root)
    src = str(root / MANIFEST)
    check_manifest(manifest, src, files=False)
    for name in manifest["files"]:
        fd, st = _open_listed(root, name, src)
        try:
            if st.st_size > MAX_FILE_BYTES:
                raise LnrtError(f"{root / name}: {st.st_size} bytes, above the {MAX_FILE_BYTES} a package file "
                                "may have; expected a model file")
            manifest["files"][name] = {"sha256": _digest_fd(fd, st.st_size, root / name), "size": st.st_size}
        finally:
            os.close(fd)
    check_manifest(manifest, src)
    pkg = ModelPackage(root, manifest)
    for name in manifest["files"]:
        if name.endswith(".onnx"):
            pkg._check_external(name)
    return seal_bytes(root, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


def seal(root: str | Path) -> str:
    """Seal a package whose lnrt.json was edited on purpose or written by an older lnrt: every listed
    file is verified against its recorded sha256 (a mismatch is refused, never re-hashed), missing sizes
    are recorded, the manifest is checked and lnrt.json.sha256 written. Returns the package's sha256."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise LnrtError(f"{root}: no {MANIFEST} found; expected an lnrt model package folder")
    manifest = parse_manifest(_read_bounded(mpath, MAX_MANIFEST_BYTES, "manifest"), str(mpath))
    check_manifest(manifest, str(mpath), files=False)
    for name, entry in manifest["files"].items():
        fd, st = _open_listed(root, name, str(mpath))
        try:
            if "size" in entry and entry["size"] != st.st_size:
                raise LnrtError(f"{root / name}: {st.st_size} bytes, not the {entry['size']} the manifest "
                                "records; not sealed")
            if st.st_size > MAX_FILE_BYTES:
                raise LnrtError(f"{root / name}: {st.st_size} bytes, above the {MAX_FILE_BYTES} a package file "
                                "may have; not sealed")
            got = _digest_fd(fd, st.st_size, root / name)
        finally:
            os.close(fd)
        if got != entry.get("sha256"):
            raise LnrtError(f"{root / name}: sha256 {got[:16]}... does not match the manifest's "
                            f"{str(entry.get('sha256'))[:16]}...; not sealed (re-export the package)")
        entry["size"] = st.st_size
    check_manifest(manifest, str(mpath))
    pkg = ModelPackage(root, manifest)
    for name in manifest["files"]:
        if name.endswith(".onnx"):
            pkg._check_external(name)
    return seal_bytes(root, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
