"""The shape the pipeline issue asked for, held: small functions in the runtime, `Session.run` a short loop
over the stages, one GPU probe, the design document that the code's references point at."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("runtime", "export", "kernels", "models", "benchmarks") for p in (ROOT / d).rglob("*.py")]


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_in_the_runtime_is_over_60_lines():
    long = [(p.name, name, n) for p in (ROOT / "runtime").rglob("*.py") for name, n in _functions(p) if n > 60]
    assert long == []


def test_session_run_is_a_short_loop_over_the_stages():
    tree = ast.parse((ROOT / "runtime" / "session.py").read_text(encoding="utf-8"))
    session = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Session")
    run = next(n for n in session.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    assert run.end_lineno - run.lineno + 1 < 40
    assert "run_stages" in ast.unparse(run)


def test_one_gpu_probe():
    """Only lnrt.device asks CUDA whether a GPU is there; everything else asks lnrt.device.probe_gpu (the
    ONNX Runtime CUDA backend's probe asks its library whether it was built with CUDA, then probe_gpu)."""
    asking = re.compile(r"getDeviceCount|getDeviceProperties|torch\.cuda\.is_available")
    hits = sorted(str(p.relative_to(ROOT)) for p in SOURCES if asking.search(p.read_text(encoding="utf-8")))
    assert hits == ["models/train.py", "runtime/device.py"]  # training picks torch's own device


def test_the_design_document_exists_and_the_code_points_at_it():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for section in ("## Layout", "## One scan, stage by stage", "## Device", "## Twins", "## Backends", "## Contracts"):
        assert section in doc
    files = SOURCES + list((ROOT / "kernels").glob("*.cu")) + [ROOT / "setup.py"]
    assert not [p.name for p in files if "DESIGN.md" in p.read_text(encoding="utf-8")]
    cited = {m for p in files for m in re.findall(r'docs/ARCHITECTURE\.md, "([^"]+)"', p.read_text(encoding="utf-8"))}
    assert cited and all(f"## {c}" in doc for c in cited), cited
