"""Model packages: the shipped default verifies; tampering, missing files and bad models are refused."""
import hashlib
import json
import os
import re
import shutil
import time

import pytest

import lnrt
from lnrt.errors import LnrtError
from lnrt.package import (MANIFEST_HASH, ModelPackage, check_manifest, default_package_path, seal, sha256_of,
                          write_manifest)

DEFAULT_MODEL_SHA256 = "c152a490e06ec68666fc53a14f5b22a0a385926b8d24979f0c8c27cadb3d9301"


def write_sealed(root, manifest=None, text=None):
    """lnrt.json written as given (no checks, no hashing of files) and sealed: what an attacker who
    rewrites both files, or a buggy exporter, could produce. Returns the digest."""
    data = (text if text is not None else json.dumps(manifest, indent=2)).encode()
    (root / "lnrt.json").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (root / MANIFEST_HASH).write_text(f"{digest}  lnrt.json\n")
    return digest


def load_manifest(root):
    return json.loads((root / "lnrt.json").read_text())


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
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 1  # same size, other content
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(LnrtError, match="sha256 .* does not match"):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="sha256"):
        lnrt.Session(pkg_copy)
    onnx_file.write_bytes(bytes(data) + b"\0")  # another size: refused before hashing
    with pytest.raises(LnrtError, match=r"model.onnx: \d+ bytes, not the \d+ the manifest records"):
        ModelPackage.load(pkg_copy)


def test_missing_file_and_bad_manifest(pkg_copy, tmp_path):
    (pkg_copy / "model.onnx").unlink()
    with pytest.raises(LnrtError, match="missing"):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="no lnrt.json"):
        ModelPackage.load(tmp_path)
    write_sealed(tmp_path, text="{not json")
    with pytest.raises(LnrtError, match="not valid JSON"):
        ModelPackage.load(tmp_path)
    write_sealed(tmp_path, {"format": "other"})
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


# -- the manifest's own hash ------------------------------------------------------------------------

def test_default_package_is_sealed_and_its_model_unchanged():
    root = default_package_path()
    pkg = ModelPackage.load()
    data = (root / "lnrt.json").read_bytes()
    assert pkg.package_sha256 == hashlib.sha256(data).hexdigest()
    assert (root / MANIFEST_HASH).read_text().split() == [pkg.package_sha256, "lnrt.json"]
    assert pkg.sha256() == DEFAULT_MODEL_SHA256 == sha256_of(root / "model.onnx")  # the model file untouched
    assert all(e["size"] == (root / n).stat().st_size for n, e in pkg.manifest["files"].items())
    assert pkg.summary()["package_sha256"] == pkg.package_sha256
    assert ModelPackage.load(expect_sha256=pkg.package_sha256.upper()).package_sha256 == pkg.package_sha256
    with lnrt.Session(threads=1) as s:
        info = s.model_info()
    assert info["sha256"] == DEFAULT_MODEL_SHA256 and info["package_sha256"] == pkg.package_sha256


@pytest.mark.parametrize("edit", [("postprocessing", "min_volume_mm3", 1000.0),
                                  ("normalization", "window_hu", [-1000.0, 1000.0])])
def test_an_edited_manifest_value_is_refused_although_the_file_hashes_match(pkg_copy, edit):
    section, key, value = edit
    manifest = load_manifest(pkg_copy)
    manifest[section][key] = value  # every listed file (and its hash) unchanged
    (pkg_copy / "lnrt.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(LnrtError, match=r"lnrt.json: sha256 .* differs from .* sealed in lnrt.json.sha256; "
                                        r"the manifest was modified.*lnrt package seal"):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="the manifest was modified"):
        lnrt.Session(pkg_copy)
    from lnrt.cli import main
    assert main(["package", "seal", str(pkg_copy)]) == 0  # an edit made on purpose is sealed: a new identity
    assert main(["package", "check", str(pkg_copy)]) == 0
    assert main(["package", "check", str(pkg_copy), "--expect-sha256", "0" * 64]) == 2
    pkg = ModelPackage.load(pkg_copy)
    assert pkg.manifest[section][key] == value and pkg.package_sha256 != ModelPackage.load().package_sha256
    with pytest.raises(LnrtError, match="is not the pinned"):
        ModelPackage.load(pkg_copy, expect_sha256=ModelPackage.load().package_sha256)


def test_a_missing_or_wrong_manifest_hash_is_refused(pkg_copy):
    hpath = pkg_copy / MANIFEST_HASH
    hpath.unlink()
    with pytest.raises(LnrtError, match="lnrt.json.sha256: missing, so the manifest is not sealed.*re-export"):
        ModelPackage.load(pkg_copy)
    hpath.write_text("0" * 64 + "  lnrt.json\n")
    with pytest.raises(LnrtError, match="differs from the 0000000000000000... sealed"):
        ModelPackage.load(pkg_copy)
    hpath.write_text("not a hash\n")
    with pytest.raises(LnrtError, match="holds no sha256"):
        ModelPackage.load(pkg_copy)


def test_the_pin_refuses_any_other_package(pkg_copy):
    genuine = ModelPackage.load().package_sha256
    assert ModelPackage.load(pkg_copy, expect_sha256=genuine).package_sha256 == genuine
    manifest = load_manifest(pkg_copy)
    manifest["postprocessing"]["min_volume_mm3"] = 0.0
    write_manifest(pkg_copy, manifest)  # consistent and sealed, but not the validated package
    ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match=f"package sha256 [0-9a-f]{{64}} is not the pinned {genuine}"):
        ModelPackage.load(pkg_copy, expect_sha256=genuine)


def test_old_manifests_without_sizes_are_refused_and_seal_upgrades_them(pkg_copy):
    manifest = load_manifest(pkg_copy)
    for entry in manifest["files"].values():
        del entry["size"]
    write_sealed(pkg_copy, manifest)
    with pytest.raises(LnrtError, match=r'files\["model.onnx"\] records no size.*re-export the package'):
        ModelPackage.load(pkg_copy)
    seal(pkg_copy)  # verifies each file against its sha256, then records the sizes
    assert ModelPackage.load(pkg_copy).manifest["files"]["model.onnx"]["size"] > 0
    manifest = load_manifest(pkg_copy)
    manifest["files"]["model.onnx"]["sha256"] = "0" * 64
    write_sealed(pkg_copy, manifest)
    with pytest.raises(LnrtError, match="does not match the manifest's 0000.*not sealed"):
        seal(pkg_copy)  # seal never blesses a file that changed


# -- files stay inside the package ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../model.onnx", "a\\b.onnx",
                                  "a//b.onnx", "./model.onnx", "", "C:/model.onnx", "lnrt.json"])
def test_file_names_must_be_plain_relative_paths(pkg_copy, name):
    manifest = load_manifest(pkg_copy)
    manifest["files"][name] = {"sha256": "0" * 64, "size": 10}
    write_sealed(pkg_copy, manifest)
    with pytest.raises(LnrtError, match=r"lnrt.json: files key .* expected a plain relative path inside the package"):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="plain relative path"):
        write_manifest(pkg_copy, manifest)


def test_a_symlink_out_of_the_package_is_refused(pkg_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(pkg_copy / "model.onnx", outside)
    (pkg_copy / "model.onnx").unlink()
    (pkg_copy / "model.onnx").symlink_to(outside)  # same bytes, so size and sha256 would match
    with pytest.raises(LnrtError, match=r"outside the package .*\(not a symlink out of it\)"):
        ModelPackage.load(pkg_copy)
    (pkg_copy / "model.onnx").unlink()
    (pkg_copy / "real.onnx").write_bytes(outside.read_bytes())
    (pkg_copy / "model.onnx").symlink_to("real.onnx")  # a link inside the package is fine
    assert ModelPackage.load(pkg_copy).sha256() == DEFAULT_MODEL_SHA256


def test_a_huge_sparse_file_is_refused_before_hashing(pkg_copy):
    with open(pkg_copy / "model.onnx", "r+b") as fh:
        fh.truncate(1 << 40)  # 1 TiB, sparse: no disk space
    t0 = time.perf_counter()
    with pytest.raises(LnrtError, match=r"model.onnx: 1099511627776 bytes, not the 1407489 the manifest records"):
        ModelPackage.load(pkg_copy)
    manifest = load_manifest(pkg_copy)
    manifest["files"]["model.onnx"]["size"] = 1 << 40  # its true size recorded: above the bound
    write_sealed(pkg_copy, manifest)
    with pytest.raises(LnrtError,
                       match=r'files\["model.onnx"\].size is 1099511627776; expected a size in bytes, at most'):
        ModelPackage.load(pkg_copy)
    with pytest.raises(LnrtError, match="above the .* a package file may have"):
        write_manifest(pkg_copy, manifest)
    assert time.perf_counter() - t0 < 2.0


def test_a_fifo_or_folder_is_not_a_model_file(pkg_copy):
    (pkg_copy / "model.onnx").unlink()
    os.mkfifo(pkg_copy / "model.onnx")  # opening it for reading must not block
    with pytest.raises(LnrtError, match="not a regular file"):
        ModelPackage.load(pkg_copy)
    (pkg_copy / "model.onnx").unlink()
    (pkg_copy / "model.onnx").mkdir()
    with pytest.raises(LnrtError, match="not a regular file|cannot be opened"):
        ModelPackage.load(pkg_copy)


# -- verify what is loaded, when it is loaded --------------------------------------------------------------

def test_a_file_swapped_after_load_is_refused_by_session(pkg_copy):
    pkg = ModelPackage.load(pkg_copy)
    onnx_file = pkg_copy / "model.onnx"
    genuine = onnx_file.read_bytes()
    shutil.copyfile(pkg_copy / "model.fp16.onnx", onnx_file)  # another model, another size
    with pytest.raises(LnrtError, match="model.onnx: 710386 bytes, not the 1407489"):
        lnrt.Session(pkg)
    swapped = bytearray(genuine)
    swapped[-100] ^= 0xFF  # same size
    onnx_file.write_bytes(bytes(swapped))
    with pytest.raises(LnrtError, match="model.onnx: sha256 .* does not match"):
        lnrt.Session(pkg)
    onnx_file.write_bytes(genuine)
    with lnrt.Session(pkg, threads=1) as s:
        assert s.model_info()["sha256"] == DEFAULT_MODEL_SHA256
        assert s.model_info()["package_sha256"] == pkg.package_sha256


# -- ONNX external data -------------------------------------------------------------------------------------

def _conv_model(onnx):
    """image (1, 1, 8, 8, 8) -> logits (1, 2, 8, 8, 8): a Conv whose weights are an initializer, plus a
    Constant node (an attribute tensor) and an If whose branch holds a tensor too."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 1, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.arange(2, dtype=np.float32) * 0.1, "bias")  # raw_data: externalized
    branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
        np.ones(1, np.float32), "kt"))], "branch", [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Constant", [], ["b"], value=bias),
             helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1] * 6),
             helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "c")),
             helper.make_node("If", ["cond"], ["one"], then_branch=branch, else_branch=branch),
             helper.make_node("Mul", ["conv", "one"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 8, 8, 8])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def external_pkg(pkg_copy):
    onnx = pytest.importorskip("onnx")
    for f in ("model.fp16.onnx", "model.int8.onnx"):
        (pkg_copy / f).unlink()
    onnx.save_model(_conv_model(onnx), str(pkg_copy / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    manifest = load_manifest(pkg_copy)
    manifest.pop("variants")
    manifest["input"]["patch_size_zyx"] = [8, 8, 8]
    manifest["files"] = {"model.onnx": {}, "model.onnx.data": {}}
    return pkg_copy, manifest


def test_the_protobuf_reader_lists_what_onnx_lists(external_pkg, tmp_path):
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from lnrt.onnxproto import ProtoError, external_locations, external_locations_of

    root, _ = external_pkg
    assert external_locations_of(root / "model.onnx") == ["model.onnx.data"]  # the initializer's
    # attribute tensors too (Constant values, the If branches' Constant): ONNX Runtime does not load
    # these from external data, but another reader might, so they are listed as well
    onnx.save_model(_conv_model(onnx), str(tmp_path / "attrs.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="attrs.onnx.data", size_threshold=0,
                    convert_attribute=True)
    model = onnx.load(str(tmp_path / "attrs.onnx"), load_external_data=False)
    theirs = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    assert len(theirs) >= 4  # the initializer and attribute tensors, the If branch's included
    assert external_locations_of(tmp_path / "attrs.onnx") == ["attrs.onnx.data"]
    onnx.save_model(_conv_model(onnx), str(tmp_path / "inline.onnx"))
    assert external_locations_of(tmp_path / "inline.onnx") == []
    assert external_locations_of(default_package_path() / "model.onnx") == []
    for t in theirs[1:]:  # each tensor names its own file: every one is found, nested ones too
        for e in t.external_data:
            if e.key == "location":
                e.value = f"{t.name}.bin"
    found = external_locations(model.SerializeToString())
    assert sorted(found) == sorted({"attrs.onnx.data"} | {f"{t.name}.bin" for t in theirs[1:]})
    with pytest.raises(ProtoError):
        external_locations(b"\x3a\xff\xff\xff\xff\x0f")  # graph field with a length past the end
    def varint(n):
        out = b""
        while n > 0x7F:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])

    def field(number, payload):  # a length-delimited field
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    def nested(levels):  # graph > node > attribute.g > graph > ...: If inside If inside If
        g = b""
        for _ in range(levels):
            g = field(1, field(5, field(6, g)))
        return field(7, g)

    assert external_locations(nested(10)) == []
    for levels in (30, 5000):  # bounded: one ProtoError, never a RecursionError
        with pytest.raises(ProtoError, match="nested deeper than 64"):
            external_locations(nested(levels))


def test_listed_external_data_is_accepted_and_runs(external_pkg):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    root, manifest = external_pkg
    write_manifest(root, manifest)
    pkg = ModelPackage.load(root)
    assert pkg.manifest["files"]["model.onnx.data"]["size"] == (root / "model.onnx.data").stat().st_size
    out = ort.InferenceSession(str(pkg.onnx_path()), providers=["CPUExecutionProvider"]).run(
        None, {"image": np.ones((1, 1, 8, 8, 8), np.float32)})[0]
    assert out.shape == (1, 2, 8, 8, 8) and np.isfinite(out).all() and out.std() > 0
    with lnrt.Session(pkg, threads=1) as s:
        assert s.model_info()["package_sha256"] == pkg.package_sha256
    data = bytearray((root / "model.onnx.data").read_bytes())
    data[0] ^= 1  # the weights swapped after load, same size
    (root / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(LnrtError, match="model.onnx.data: sha256 .* does not match"):
        lnrt.Session(pkg)


def test_unlisted_external_data_is_refused(external_pkg):
    root, manifest = external_pkg
    manifest["files"] = {"model.onnx": {}}
    with pytest.raises(LnrtError, match="refers to external data 'model.onnx.data', which the manifest does not list"):
        write_manifest(root, manifest)  # exporters cannot write such a package
    manifest["files"] = {"model.onnx": {"sha256": sha256_of(root / "model.onnx"),
                                        "size": (root / "model.onnx").stat().st_size}}
    write_sealed(root, manifest)  # nor is one written by hand loaded
    with pytest.raises(LnrtError, match="refers to external data 'model.onnx.data', which the manifest does not list"):
        ModelPackage.load(root)


# -- the manifest's schema ------------------------------------------------------------------------------

def _set(manifest, path, value):
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    obj = manifest
    for k in keys[:-1]:
        obj = obj[k]
    if value is KeyError:
        del obj[keys[-1]]
    else:
        obj[keys[-1]] = value


SCHEMA_CASES = [
    ("input.patch_size_zyx", [1024, 1024, 1024],  # 2^30 voxels: the 3.55 PiB allocation
     r"input.patch_size_zyx is \[1024, 1024, 1024\]; expected at most 16777216 voxels"),
    ("input.patch_size_zyx[2]", 4, r"input.patch_size_zyx\[2\] is 4; expected three integers in \[8, 1024\]"),
    ("input.patch_size_zyx[1]", True, r"input.patch_size_zyx\[1\] is true"),
    ("input.patch_size_zyx[0]", 48.5, r"input.patch_size_zyx\[0\] is 48.5"),
    ("input.patch_size_zyx", [48, 96], r"input.patch_size_zyx is \[48, 96\]"),
    ("input.spacing_zyx_mm[0]", 0,
     r"input.spacing_zyx_mm\[0\] is 0; expected three finite spacings in \[0.05, 20\] mm"),
    ("input.spacing_zyx_mm[1]", "1", r"input.spacing_zyx_mm\[1\] is \"1\""),
    ("input.spacing_zyx_mm[2]", 1e999, r"input.spacing_zyx_mm\[2\] is Infinity"),
    ("input.channels", 3, r"input.channels is 3; expected 1"),
    ("input", [], r"input is \[\]; expected an object"),
    ("normalization.window_hu", [0, 0], r"normalization.window_hu is \[0, 0\]; expected \[low, high\] with low < high"),
    ("normalization.window_hu", [400, -200], r"normalization.window_hu is \[400, -200\]"),
    ("normalization.window_hu", "wide", r"normalization.window_hu is \"wide\""),
    ("normalization.window_hu[0]", None, r"normalization.window_hu\[0\] is null"),
    ("normalization.scheme", "zscore", r"normalization.scheme is \"zscore\"; expected one of 'ct_zscore', 'window'"),
    ("normalization", {"scheme": "ct_zscore", "clip_hu": [-100, 200], "mean": 0, "std": 0},
     r"normalization.std is 0; expected a finite number > 0"),
    ("normalization", {"scheme": "ct_zscore", "clip_hu": [200, -100], "mean": 0, "std": 1},
     r"normalization.clip_hu is \[200, -100\]; expected \[low, high\] with low < high"),
    ("normalization", {"scheme": "ct_zscore", "clip_hu": [-100, 200], "std": 1}, r"normalization.mean is missing"),
    ("normalization.window", [0, 1], r"normalization has unknown key 'window'"),
    ("classes", ["background"], r"classes is \[\"background\"\]; expected a list of 2 to 64 class names"),
    ("classes[1]", "background", r"classes\[1\] is \"background\"; expected class names that are all different"),
    ("classes[1]", "", r"classes\[1\] is \"\"; expected a non-empty class name"),
    ("output.activation", "relu", r"output.activation is \"relu\"; expected one of 'softmax', 'sigmoid'"),
    ("sliding_window.overlap", 1.0, r"sliding_window.overlap is 1.0; expected a finite number >= 0 and < 1"),
    ("sliding_window.sigma_scale", 0, r"sliding_window.sigma_scale is 0; expected a finite number > 0 and <= 1"),
    ("sliding_window.batch_size", 0, r"sliding_window.batch_size is 0; expected an integer >= 1 and <= 256"),
    ("sliding_window.batch_size", True, r"sliding_window.batch_size is true; expected an integer"),
    ("sliding_window.batch_size", 2.5, r"sliding_window.batch_size is 2.5"),
    ("sliding_window.mirror_axes", [3], r"sliding_window.mirror_axes\[0\] is 3; expected an axis"),
    ("sliding_window.mirror_axes", [0, 0], r"sliding_window.mirror_axes is \[0, 0\]; expected a list of distinct axes"),
    ("sliding_window.mirror_axes", "xyz", r"sliding_window.mirror_axes is \"xyz\""),
    ("postprocessing.min_volume_mm3", -1, r"postprocessing.min_volume_mm3 is -1; expected a finite number >= 0"),
    ("postprocessing.min_volume_mm3", True, r"postprocessing.min_volume_mm3 is true"),
    ("postprocessing.connectivity", 8, r"postprocessing.connectivity is 8; expected 6, 18 or 26"),
    ("postprocessing.min_short_axis_px", -0.5, r"postprocessing.min_short_axis_px is -0.5"),
    ("postprocessing.neck_region", True, r"postprocessing.neck_region is true; expected false, null or an object"),
    ("postprocessing.neck_region.width_mm", [200, 60], r"postprocessing.neck_region.width_mm is \[200, 60\]"),
    ("postprocessing.neck_region.width_mm", [-5, 60], r"postprocessing.neck_region.width_mm\[0\] is -5"),
    ("postprocessing.neck_region.margin_mm", -1, r"postprocessing.neck_region.margin_mm is -1"),
    ("postprocessing.neck_region.margin", 20, r"postprocessing.neck_region has unknown key 'margin'"),
    ("postprocessing.min_volume", 20, r"postprocessing has unknown key 'min_volume'"),
    ("body_crop.threshold_hu", "air", r"body_crop.threshold_hu is \"air\""),
    ("body_crop.margin_mm", -5, r"body_crop.margin_mm is -5; expected a finite number >= 0"),
    ("body_crop.enabled", 1, r"body_crop.enabled is 1; expected true or false"),
    ("body_crop.tiling", "everything", r"body_crop.tiling is \"everything\"; expected 'body_box' or 'whole_scan'"),
    ("body_crop.treshold_hu", -500, r"body_crop has unknown key 'treshold_hu'"),
    ("variants.fp16.gate_backends", [], r"variants.fp16.gate_backends is \[\]; expected an object"),
    ("variants.fp16.gate_backends.openvino.passed", "yes", r"variants.fp16.gate_backends.openvino.passed is \"yes\""),
    ("variants.bf8", {}, r"variants.bf8 is \{\}; expected variants named fp32, fp16, int8"),
    ("files", [], r"files is \[\]; expected an object"),
    ("files.model.onnx", KeyError, r"files is .*; expected a list of files including model.onnx"),
    ("files[\"model.onnx\"]", KeyError, r"files is .*including model.onnx"),
    ("format", KeyError, r"format is missing; expected 'lnrt.package/1'"),
    ("name", 7, r"name is 7; expected a non-empty string"),
]


@pytest.mark.parametrize("path,value,message", SCHEMA_CASES, ids=[c[0] + "=" + repr(c[1])[:20] for c in SCHEMA_CASES])
def test_each_schema_violation_is_one_line_naming_the_key(pkg_copy, path, value, message):
    manifest = load_manifest(pkg_copy)
    if path.startswith("files[\""):
        del manifest["files"]["model.onnx"]
    elif path == "files.model.onnx":
        manifest["files"].pop("model.onnx")
    else:
        _set(manifest, path, value)
    # sealed: only the schema check stands in the way (1e999 is valid JSON and parses to inf)
    write_sealed(pkg_copy, text=json.dumps(manifest, indent=2).replace("Infinity", "1e999"))
    with pytest.raises(LnrtError) as err:
        ModelPackage.load(pkg_copy)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{pkg_copy / 'lnrt.json'}: "), text
    assert re.search(message, text), text
    with pytest.raises(LnrtError, match=re.escape(str(pkg_copy / "lnrt.json"))):
        write_manifest(pkg_copy, manifest)  # exporters cannot write it either


def test_the_schema_accepts_every_shipped_and_built_manifest(placeholder_package):
    for root in (default_package_path(), placeholder_package):
        check_manifest(load_manifest(root), str(root / "lnrt.json"))
    manifest = load_manifest(default_package_path())
    manifest["postprocessing"]["neck_region"] = False  # off
    manifest["body_crop"] = {"enabled": False}  # what nnU-Net imports wrote before the whole_scan tiling
    check_manifest(manifest, "x/lnrt.json")
    manifest["body_crop"] = {"threshold_hu": -500.0, "margin_mm": 10.0, "tiling": "whole_scan"}  # and now
    manifest["normalization"] = {"scheme": "ct_zscore", "clip_hu": [-150.0, 500.0], "mean": 60.0, "std": 1e-8}
    manifest["sliding_window"]["allowed_mirror_axes"] = [0, 1, 2]
    check_manifest(manifest, "x/lnrt.json")
    from lnrt.region import NeckRegionConfig  # what the schema accepts, the runtime accepts
    NeckRegionConfig.from_manifest({"width_mm": [0, 1e-3], "margin_mm": 0, "lateral_margin_mm": 0})


def test_hostile_manifest_files_end_in_one_line(pkg_copy):
    write_sealed(pkg_copy, text="[" * 100_000 + "]" * 100_000)  # RecursionError in the JSON parser
    with pytest.raises(LnrtError, match="lnrt.json: JSON nested too deeply"):
        ModelPackage.load(pkg_copy)
    manifest = load_manifest(default_package_path())
    nested = 0
    for _ in range(40):
        nested = [nested]
    manifest["provenance"]["nested"] = nested  # parses, but deeper than any manifest needs
    write_sealed(pkg_copy, manifest)
    with pytest.raises(LnrtError, match="lnrt.json: JSON nested deeper than 32 levels"):
        ModelPackage.load(pkg_copy)
    manifest["provenance"]["nested"] = "x" * (2 << 20)
    write_sealed(pkg_copy, manifest)
    with pytest.raises(LnrtError, match=r"lnrt.json: \d+ bytes, larger than the 1048576 bytes manifest may have"):
        ModelPackage.load(pkg_copy)
    write_sealed(pkg_copy, text='{"format": NaN}')
    with pytest.raises(LnrtError, match="not valid JSON .*NaN is not a JSON number"):
        ModelPackage.load(pkg_copy)
    write_sealed(pkg_copy, text="[1, 2]")
    with pytest.raises(LnrtError, match="the manifest is \\[1, 2\\]; expected a JSON object"):
        ModelPackage.load(pkg_copy)


def test_the_batch_allocation_is_bounded():
    manifest = load_manifest(default_package_path())
    manifest["input"]["patch_size_zyx"] = [256, 256, 256]  # the largest patch allowed
    manifest["sliding_window"]["batch_size"] = 1
    check_manifest(manifest, "x/lnrt.json")
    manifest["sliding_window"]["batch_size"] = 256  # 256 x 2^24 voxels x 2 classes of float32: 32 GiB
    with pytest.raises(LnrtError, match=r"x/lnrt.json: sliding_window.batch_size is 256; expected batch_size x "
                                        r"patch voxels x classes <= 1073741824 .* this is 8589934592"):
        check_manifest(manifest, "x/lnrt.json")
