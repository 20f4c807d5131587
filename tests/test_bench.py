"""`lnrt bench`: the result's structure and bookkeeping (never a wall time), compare table and chart,
and the OpenVINO backend's parity with ONNX Runtime."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lnrt import bench as b
from lnrt.errors import LnrtError


def test_parse_size():
    assert b.parse_size("512x512x250") == (512, 512, 250)
    assert b.parse_size("128") == (128, 128, 128)
    for bad in ("12", "axb", "1x2", "512x512x8"):
        with pytest.raises(LnrtError, match="--synthetic"):
            b.parse_size(bad)


def test_bench_result_records_every_stage_and_the_context(placeholder_package, tmp_path):
    r = b.bench(synthetic="96x96x48", model=placeholder_package, backend="onnxruntime", repeat=3, warmup=1)
    assert r["schema"] == "lnrt.bench/1" and r["repeat"] == 3 and len(r["runs"]) == 3
    for stage in b.STAGES + ("end_to_end",):
        s = r["stages_s"][stage]
        assert s["min"] <= s["median"] <= s["p90"] <= s["p99"]
    for run in r["runs"]:  # stages add up to no more than the wall clock around them
        assert sum(run[k] for k in b.STAGES) <= run["end_to_end"] * 1.05 + 1e-3
    assert r["scan"]["size_xyz"] == [96, 96, 48] and r["scan"]["voxels"] == 96 * 96 * 48
    assert r["engine"]["backend"] == "onnxruntime" and r["model"]["variant"] == "fp32"
    assert len(r["model"]["sha256"]) == 64 and r["model"]["patch_zyx"]
    assert r["machine"]["cores"] >= 1 and r["machine"]["versions"]["onnxruntime"]
    assert r["tiles"] > 0 and r["peak_host_memory_mb"] > 0
    path = b.save_result(r, tmp_path)
    assert path.name == f"{r['machine']['host']}-{r['date']}-bench-onnxruntime-fp32.json"
    assert json.loads(path.read_text())["stages_s"] == r["stages_s"]
    other = b.save_result(r, tmp_path / "sub", "variant-speed")  # the benchmark scripts' naming
    assert other.name == f"{r['machine']['host']}-{r['date']}-variant-speed.json"
    assert not [p for p in other.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(LnrtError, match="SCAN or --synthetic"):
        b.bench(model=placeholder_package)


def _fake(backend, variant, net, gpu=None):
    stages = {k: {"median": 0.1, "p90": 0.1, "p99": 0.1, "min": 0.1} for k in b.STAGES + ("end_to_end",)}
    stages["network"] = {"median": net, "p90": net, "p99": net, "min": net}
    return {"schema": "lnrt.bench/1", "date": "2026-11-22",
            "machine": {"host": "h", "cpu": "CPU X", "threads": 2, "gpu": gpu},
            "engine": {"backend": backend, "backend_version": "1"}, "model": {"variant": variant},
            "scan": {"size_xyz": [512, 512, 250]}, "stages_s": stages, "tiles_per_s": 3.0}


def test_compare_table_and_chart(tmp_path, run_cli, capsys):
    files = []
    for i, (be, v, net, gpu) in enumerate([("openvino", "fp32", 3.0, None), ("onnxruntime", "fp32", 6.5, None),
                                           ("tensorrt", "fp16", 0.2, {"name": "NVIDIA H100"})]):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(_fake(be, v, net, gpu)))
        files.append(p)
    chart = tmp_path / "chart.png"
    assert run_cli("bench", "compare", *files, "--chart", chart) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "backend" not in line]
    assert len(rows) == 3 and "NVIDIA H100" in rows[2] and "| 6.500 |" in rows[1]
    from PIL import Image
    img = Image.open(chart)
    assert img.size[0] == 1000 and img.getpixel((365, 40 + 10)) != (255, 255, 255)  # a bar was drawn
    (tmp_path / "bad.json").write_text("{}")
    assert run_cli("bench", "compare", tmp_path / "bad.json") == 2


def test_openvino_matches_onnxruntime_and_refuses_bf16_without_support():
    ov = pytest.importorskip("openvino")
    import lnrt
    from lnrt.backends import create_backend

    pkg = lnrt.ModelPackage.load()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2, 1) + pkg.patch_zyx).astype(np.float32)
    a = create_backend(pkg.onnx_path(), "onnxruntime", "cpu").run(x)
    o = create_backend(pkg.onnx_path(), "openvino", "cpu")
    assert o.describe()["precision_hint"] == "f32"
    y = o.run(x)
    assert y.shape == a.shape and np.abs(y - a).max() < 1e-2 and (y.argmax(1) == a.argmax(1)).mean() > 0.9999
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        with pytest.raises(LnrtError, match="bf16 support"):
            create_backend(pkg.onnx_path(), "openvino", "cpu", precision="bf16")
    with pytest.raises(LnrtError, match="OpenVINO backend only"):
        create_backend(pkg.onnx_path(), "onnxruntime", "cpu", precision="bf16")


def test_auto_backend_falls_back_to_onnxruntime_without_openvino(monkeypatch):
    import lnrt
    from lnrt import backends

    from dataclasses import replace

    spec = replace(backends.REGISTRY["openvino"], probe=lambda: (False, "openvino is not installed"))
    monkeypatch.setitem(backends.REGISTRY, "openvino", spec)
    pkg = lnrt.ModelPackage.load()
    assert backends.create_backend(pkg.onnx_path(), "auto", "cpu").name == "onnxruntime"
    assert backends.available() == ["onnxruntime"]
    with pytest.raises(LnrtError, match="--backend openvino: openvino is not installed"):
        backends.create_backend(pkg.onnx_path(), "openvino", "cpu")
