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
