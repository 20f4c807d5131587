"""`lnrt batch` against a shell loop of `lnrt infer`, and the Ray engine against the local one, in one run
(issue 20): `python -m benchmarks.batch_throughput [OUT.json]`.

The 40 scans: the 12 real samples of ../shared/data (6 OpenKBP necks, 2 abdominal NIfTIs, the MR that
must be refused, 3 DICOM series) and 28 neck phantoms rendered like the bundled sample (seeds 31000+,
180 x 150 mm at 0.9 x 0.9 x 3 mm). Every configuration runs the same scans with the embedded default
model and the automatic backend, one after the other, into fresh folders, with nothing else running.
Worker time (the sum of the ledger's per-scan seconds) is reported beside the wall time: the difference
is what the driver, the start-up and the hand-offs cost.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PHANTOMS = 28


def make_scans(folder: Path) -> list:
    from lnrt.models.make_sample import SPACING_ZYX
    from lnrt.models.neck import make_spec, render

    scans = []
    for i in range(PHANTOMS):
        hu, _, origin = render(make_spec(31000 + i), SPACING_ZYX, fov_xy=(180.0, 150.0))
        img = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
        img.SetSpacing(SPACING_ZYX[::-1])
        img.SetOrigin(origin)
        path = folder / "phantoms" / f"phantom_{i:02d}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(path), useCompression=True)
        scans.append(path)
    real = sorted((SHARED / "openkbp").glob("pt_*_ct_hu.nii.gz")) + sorted((SHARED / "nifti").glob("*.nii.gz"))
    real += sorted(p for p in (SHARED / "dicom").iterdir() if p.is_dir())
    return scans + real


def run(cmd: list, **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def shell_loop(lnrt: str, manifest: Path, out: Path) -> float:
    """What a user without a batch mode writes: one `lnrt infer` per scan, one output folder each."""
    script = (f'i=0; while IFS= read -r f; do i=$((i+1)); "{lnrt}" infer "$f" --out "{out}/$i" --quiet || true; '
              f'done < "{manifest}"')
    return run(["bash", "-c", script])


def batch(lnrt: str, manifest: Path, out: Path, *extra) -> dict:
    wall = run([lnrt, "batch", str(manifest), "--out", str(out), "--quiet", *extra],
               env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    summary = json.loads((out / "batch.json").read_text())
    return {"wall_s": round(wall, 2), "counts": summary["counts"], "worker_peak_mb": summary["worker_peak_mb"],
            "scan_seconds_sum": round(sum(r["seconds"] or 0 for r in summary["scans"]), 2)}


def main(dest: Path, phantoms_only: bool = False) -> None:
    lnrt = str(Path(sys.executable).with_name("lnrt"))
    tmp = Path(tempfile.mkdtemp(prefix="lnrt-batch-bench-"))
    configs = [("local", ()), ("ray", ("--engine", "ray")), ("local_2_workers", ("--workers", "2"))]
    try:
        scans = make_scans(tmp / "in")
        if phantoms_only:  # the small scans alone: where the per-scan start-up is a large share
            scans, configs = scans[:PHANTOMS], configs[:1]
        manifest = tmp / "scans.txt"
        manifest.write_text("".join(f"{p}\n" for p in scans))
        results = {"loop": {"wall_s": round(shell_loop(lnrt, manifest, tmp / "loop"), 2)}}
        print(results, flush=True)
        for name, extra in configs:
            results[name] = batch(lnrt, manifest, tmp / name, *extra)
            print(name, results[name]["wall_s"], results[name]["counts"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(scans)
    for r in results.values():
        r["scans_per_minute"] = round(60.0 * n / r["wall_s"], 2)
    report = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), no GPU",
        "python": platform.python_version(), "scans": n, "real": n - min(n, PHANTOMS),
        "phantoms": min(n, PHANTOMS),
        "results": results,
        "ratios": {"batch_local_over_loop_throughput": round(results["loop"]["wall_s"] / results["local"]["wall_s"], 3)},
    }
    if "ray" in results:
        report["ratios"].update(
            ray_overhead_over_local=round(results["ray"]["wall_s"] / results["local"]["wall_s"] - 1, 3),
            two_workers_over_one=round(results["local"]["wall_s"] / results["local_2_workers"]["wall_s"], 3))
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--phantoms-only"]
    main(Path(args[0]) if args else ROOT / "benchmarks" / "results" / "batch-throughput.json",
         phantoms_only="--phantoms-only" in sys.argv)
