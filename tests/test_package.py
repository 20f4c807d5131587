"""Model packages: the shipped default verifies; tampering, missing files and bad models are refused."""
import json
import shutil

import pytest

import lnrt
from lnrt.errors import LnrtError
from lnrt.package import ModelPackage, default_package_path, sha256_of, write_manifest


@pytest.fixture
def pkg_copy(tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(default_package_path(), dst)
    return dst


def test_default_package_loads_and_verifies():
    pkg = ModelPackage.load()
    assert "fp32" in pkg.variants() and len(pkg.patch_zyx) == 3
    assert pkg.sha256() == sha256_of(pkg.onnx_path())
    assert "not for clinical use" in pkg.manifest["provenance"]["intended_use"]


def test_tampered_model_is_refused(pkg_copy):
    onnx_file = pkg_copy / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(LnrtError, match="sha256 .* does not match"):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="sha256"):
        lnrt.Session(pkg_copy)


def test_missing_file_and_bad_manifest(pkg_copy, tmp_path):
    (pkg_copy / "model.onnx").unlink()
    with pytest.raises(LnrtError, match="missing"):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="no lnrt.json"):
        ModelPackage.load(tmp_path)
    (tmp_path / "lnrt.json").write_text("{not json")
    with pytest.raises(LnrtError, match="not valid JSON"):
        ModelPackage.load(tmp_path)
    (tmp_path / "lnrt.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(LnrtError, match="format"):
        ModelPackage.load(tmp_path)


def test_missing_variant_names_the_export_command(pkg_copy):
    manifest = json.loads((pkg_copy / "lnrt.json").read_text())
    manifest["files"] = {"model.onnx": {}}
    write_manifest(pkg_copy, manifest)
    with pytest.raises(LnrtError, match="no int8 variant.*lnrt export"):
        ModelPackage.load(pkg_copy).onnx_path("int8")


def test_onnx_with_the_wrong_input_rank_is_refused(pkg_copy):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 64, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(pkg_copy / "model.onnx"))
    manifest = json.loads((pkg_copy / "lnrt.json").read_text())
    write_manifest(pkg_copy, manifest)
    with pytest.raises(LnrtError, match="rank 5"):
        lnrt.Session(pkg_copy)


def test_a_variant_never_runs_where_its_gate_failed(pkg_copy):
    from lnrt.session import Session

    manifest = json.loads((pkg_copy / "lnrt.json").read_text())
    line = {"passed": False, "dice": 0.81, "short_axis_max_diff_mm": 4.4,
            "failures": ["node-mask Dice 0.8129 < 0.97"]}
    manifest["variants"]["fp16"]["gate_backends"] = {"onnxruntime": {**line, "passed": True, "failures": []},
                                                     "openvino": line}
    write_manifest(pkg_copy, manifest)
    pkg = ModelPackage.load(pkg_copy)
    assert set(pkg.gate_failed_on("fp16")) == {"openvino"} and pkg.gate_failed_on("fp32") == {}
    pytest.importorskip("openvino")
    with pytest.raises(LnrtError, match="fp16 variant failed its parity gate on openvino.*Dice 0.8129.*"
                                        "--backend onnxruntime"):
        Session(pkg, backend="openvino", variant="fp16")
    with Session(pkg, backend="auto", variant="fp16") as s:  # the automatic choice skips OpenVINO
        assert s.backend.describe()["backend"] == "onnxruntime"
    with Session(pkg, backend="auto", variant="fp32") as s:  # other variants are unaffected
        assert s.backend.describe()["backend"] == "openvino"
    manifest["variants"]["fp16"]["gate_backends"]["onnxruntime"] = line  # failed everywhere here
    write_manifest(pkg_copy, manifest)
    with pytest.raises(LnrtError, match="failed its parity gate on every backend installed here"):
        Session(ModelPackage.load(pkg_copy), backend="auto", variant="fp16")
