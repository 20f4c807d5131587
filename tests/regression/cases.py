"""The output-regression set: scans whose outputs must not change when the pipeline's code changes.

Each case is run through `lnrt.Session` with the embedded default model on ONNX Runtime with 2 threads
(a fixed backend, so the network's numerics are the same in every run on a machine of this kind), and
summarised as the sha256 of the label map and the node table without timings. `make_reference.py`
records these summaries from a given lnrt checkout; `tests/test_regression.py` compares the current
code with them. Only the public API is used, so the same file runs against an older lnrt.

Cases: the bundled sample; held-out neck phantoms (seeds 20000+, never used in training) stored in
random axis-aligned orientations (LPS, RAS, coronal and sagittal stacks) at random spacings; one
phantom with head and shoulders; one node-free phantom abdomen; and, when `../shared/data` is
present, the real CT samples (OpenKBP necks, abdomens, DICOM series).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
PHANTOM_SEEDS = (20000, 20001, 20002, 20003, 20004, 20005)


def phantom_cases() -> dict:
    cases = {f"neck_{s}": ("neck", s) for s in PHANTOM_SEEDS}
    cases["context_20100"] = ("context", 20100)
    cases["abdomen_20200"] = ("abdomen", 20200)
    return cases


def real_cases() -> dict:
    if not SHARED.is_dir():
        return {}
    out = {f"openkbp_pt_{i}": SHARED / "openkbp" / f"pt_{i}_ct_hu.nii.gz" for i in range(1, 7)}
    out["abdomen_pelvis_3mm"] = SHARED / "nifti" / "abdomen_pelvis_3mm.nii.gz"
    out["abdomen_3mm_30slices"] = SHARED / "nifti" / "abdomen_3mm_30slices.nii.gz"
    for name in ("abdomen_siemens_20slices", "neckbase_philips_10slices", "thorax_with_rtstruct"):
        out[f"dicom_{name}"] = SHARED / "dicom" / name
    return {k: v for k, v in out.items() if v.exists()}


def case_input(name: str):
    """The scan of a case: a path, or an `lnrt.Volume` for phantoms."""
    if name == "sample":
        import lnrt
        return lnrt.sample_path()
    ph = phantom_cases()
    if name in ph:
        from lnrt.models.neck import random_scan
        kind, seed = ph[name]
        return random_scan(seed, kind=kind)[0]
    return real_cases()[name]


def all_cases() -> list:
    return ["sample", *phantom_cases(), *real_cases()]


def session():
    import lnrt
    return lnrt.Session(backend="onnxruntime", threads=2)


def summarise(result) -> dict:
    """The case's outputs: label map hash, node table, warnings (with the data folder's path written
    `<shared>`, so that any checkout compares) and settings."""
    labels = np.ascontiguousarray(result.labels)
    warnings = [w.replace(str(SHARED), "<shared>") for w in result.warnings]
    return {"labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(), "labels_dtype": str(labels.dtype),
            "shape_zyx": list(labels.shape), "nodes": result.nodes, "warnings": warnings,
            "settings": {k: v for k, v in result.settings.items() if k != "rules"}}


def run_case(sess, name: str) -> dict:
    return summarise(sess.run(case_input(name)))
