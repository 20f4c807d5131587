"""Record the regression set's outputs, or the allowed changes against them.

    python tests/regression/make_reference.py tests/regression/reference.json [CASE ...]
        run with the interpreter of the checkout whose outputs are the reference (a `git worktree` of
        main installed in its own venv): records each case's summary and the commit
    python tests/regression/make_reference.py --changes tests/regression/reference.json [CASE ...]
        run with the current checkout: records, under "expected_changes", every node field that differs
        from the reference, with its size (mm for lengths and axis ends, slices for axis_slice). Only for a
        change made on purpose (the RECIST tie rule); the label maps must still be identical.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases  # noqa: E402


def _size(field: str, old, new) -> float:
    if field in ("long_axis_mm", "short_axis_mm"):
        return round(new - old, 6)
    if field == "axis_slice":
        return float(new - old)
    a, b = np.asarray(old, float), np.asarray(new, float)  # axis ends: the farther end, either pairing
    return round(float(min(np.linalg.norm(a - b, axis=1).max(), np.linalg.norm(a - b[::-1], axis=1).max())), 3)


def changes(want: list, got: list, case: str) -> list:
    if len(want) != len(got):
        raise SystemExit(f"{case}: {len(want)} nodes in the reference, {len(got)} now")
    out = []
    for a, b in zip(want, got):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append({"id": a["id"], "field": key, "reference": a.get(key), "now": b.get(key),
                            "change_mm" if key != "axis_slice" else "change_slices": _size(key, a[key], b[key])})
    return out


def main() -> None:
    args = sys.argv[1:]
    record_changes = args[:1] == ["--changes"]
    args = args[1:] if record_changes else args
    out = Path(args[0])
    names = args[1:] or cases.all_cases()
    import lnrt
    root = Path(lnrt.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    data = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {"cases": {}}
    if not record_changes:
        data.update({"lnrt_commit": commit, "backend": "onnxruntime", "threads": 2})
    with cases.session() as s:
        for name in names:
            t0 = time.perf_counter()
            got = cases.run_case(s, name)
            if record_changes:
                want = data["cases"][name]
                if got["labels_sha256"] != want["labels_sha256"]:
                    raise SystemExit(f"{name}: the label map changed; that is never an expected change")
                found = changes(want["nodes"], got["nodes"], name)
                data.setdefault("expected_changes", {}).pop(name, None)
                if found:
                    data["expected_changes"][name] = found
            else:
                data["cases"][name] = got
            print(f"{name}: {len(got['nodes'])} nodes, {time.perf_counter() - t0:.1f} s", flush=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
