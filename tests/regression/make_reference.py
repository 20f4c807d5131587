"""Record the regression set's outputs from the lnrt that is importable: run it with the interpreter of
the checkout whose outputs are the reference (a `git worktree` of main installed in its own venv).

    python tests/regression/make_reference.py tests/regression/reference.json [CASE ...]
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or cases.all_cases()
    import lnrt
    root = Path(lnrt.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    data = json.loads(out.read_text()) if out.exists() else {"cases": {}}
    data.update({"lnrt_commit": commit, "backend": "onnxruntime", "threads": 2})
    with cases.session() as s:
        for name in names:
            t0 = time.perf_counter()
            data["cases"][name] = cases.run_case(s, name)
            print(f"{name}: {len(data['cases'][name]['nodes'])} nodes, {time.perf_counter() - t0:.1f} s", flush=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
