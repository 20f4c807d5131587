"""The small things a new user trips over (issue 17): progress that shows every stage with the time
spent and left, measure's output names, a readable repr, errors that fit the API as well as the CLI,
helpful messages for folders that hold no series directly."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from lnrt.cli import Progress, main

SAMPLE = lnrt.sample_path()


def test_progress_on_a_terminal_shows_stages_elapsed_time_and_time_left(capsys):
    p = Progress(True, tty=True)
    p("read", 0, 0)
    p("network", 0, 10)
    p("network", 4, 10)
    p("write", 0, 0)
    p.finish()
    err = capsys.readouterr().err
    frames = [f.strip() for f in err.split("\r") if f.strip()]
    assert frames[0].startswith("reading (") and "s left" in frames[2] and "4/10 tiles" in frames[2]
    assert frames[-2].startswith("writing outputs") and frames[-1].startswith("done in ")
    assert err.endswith("\n") and err.count("\n") == 1  # one line, redrawn


def test_an_error_after_progress_on_a_terminal_gets_a_clean_line(capsys):
    p = Progress(True, tty=True)
    p("read", 0, 0)
    Progress.clear()
    err = capsys.readouterr().err
    assert err.endswith("\r" + " " * 79 + "\r") and Progress.active is None


def test_a_run_refused_while_reading_prints_only_its_error(tmp_path, capfd):
    bad = tmp_path / "mr.nii.gz"
    img = sitk.GetImageFromArray(np.full((8, 16, 16), 100, np.int16))
    sitk.WriteImage(img, str(bad))
    assert main(["infer", str(bad), "--out", str(tmp_path / "o")]) == 2  # not --quiet: progress on
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lnrt: error:")


def test_progress_in_a_log_lists_each_stage_once(tmp_path, run_cli, capsys, placeholder_package):
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "--model", placeholder_package) == 0
    err = capsys.readouterr().err.splitlines()
    starts = [line.split(" (")[0].split(": ")[0] for line in err]
    for label in ("reading", "resampling to the model grid", "network", "resampling back", "components",
                  "measuring", "writing outputs", "done in"):
        assert any(s.startswith(label) for s in starts), (label, err)
    assert len(err) == len(set(starts)) + 1  # each stage once; the network's start and end


def test_measuring_lnrts_own_labels_does_not_double_the_suffix(tmp_path, run_cli, placeholder_package):
    assert run_cli("infer", SAMPLE, "--out", tmp_path / "a", "-q", "--model", placeholder_package) == 0
    labels = tmp_path / "a" / "sample_neck_phantom.nodes.nii.gz"
    assert run_cli("measure", labels, "--out", tmp_path / "b", "-q", "--no-viewer") == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "sample_neck_phantom.nodes.csv", "sample_neck_phantom.nodes.nii.gz", "sample_neck_phantom.report.json"]
    # measured in place, the label map would replace its own input: refused before any work
    assert run_cli("measure", labels, "--out", tmp_path / "a", "-q", "--overwrite") == 2


def test_repr_is_one_short_line(session):
    res = session.run(SAMPLE)
    text = repr(res)
    assert "\n" not in text and len(text) < 200 and f"{len(res.nodes)} node" in text and "200x167x42" in text


def test_existing_output_error_fits_python_and_the_cli(tmp_path, session):
    res = session.run(SAMPLE)
    res.save(tmp_path)
    with pytest.raises(lnrt.LnrtError, match=r"overwrite=True in Python"):
        res.save(tmp_path)


def _tiny_series(folder):
    pytest.importorskip("pydicom")
    from test_dicom_series import write_series
    return write_series(folder, n=6)


def test_a_folder_of_series_in_subfolders_lists_them(tmp_path, capfd):
    root = tmp_path / "study"
    uid_a, _ = _tiny_series(root / "neck")
    uid_b, _ = _tiny_series(root / "thorax")
    assert main(["infer", str(root), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "2 DICOM series in its subfolders" in err
    assert f"neck ({uid_a}" in err and f"thorax ({uid_b}" in err and "give one subfolder" in err
    assert not (tmp_path / "o").exists()


def test_a_folder_of_image_files_says_to_give_a_file(tmp_path, capfd):
    folder = tmp_path / "niftis"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(SAMPLE, folder / name)
    assert main(["infer", str(folder), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "holds 2 image files" in err and "a.nii.gz" in err and "give one file" in err


def test_sample_is_documented_as_it_is():
    img = sitk.ReadImage(str(SAMPLE))
    readme = (lnrt.sample_path().parents[2] / "README.md")
    if not readme.exists():
        pytest.skip("not a source checkout")
    text = readme.read_text(encoding="utf-8")
    size = "×".join(map(str, img.GetSize()))
    assert size in text.replace(" × ", "×") and "lnrt.sample_path()" in text
    assert np.allclose(img.GetSpacing(), (0.9, 0.9, 3.0))


def test_bf16_without_openvino_names_what_to_install_not_an_option_never_typed(monkeypatch, capfd, tmp_path):
    from lnrt import backends
    monkeypatch.setattr(backends, "_importable", lambda m: m != "openvino")
    assert main(["infer", str(SAMPLE), "--out", str(tmp_path / "o"), "-q", "--variant", "bf16"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lnrt[openvino]'" in err and "--backend" not in err


# -- lnrt report: outputs added to a finished run, without running the model again ---------------------
def _infer(run_cli, out, pkg, *extra):
    assert run_cli("infer", SAMPLE, "--out", out, "-q", "--model", pkg, *extra) == 0
    return out / "sample_neck_phantom.report.json"


def test_report_adds_qc_equal_to_a_run_with_qc(tmp_path, run_cli, placeholder_package, monkeypatch):
    import lnrt.session
    direct = _infer(run_cli, tmp_path / "direct", placeholder_package, "--qc")
    later = _infer(run_cli, tmp_path / "later", placeholder_package)
    before = {p.name: p.read_bytes() for p in later.parent.iterdir()}
    monkeypatch.setattr(lnrt.session.Session, "run", lambda *a, **k: pytest.fail("the model ran again"))
    assert run_cli("report", later, "--qc") == 0
    after = {p.name: p for p in later.parent.iterdir()}
    assert {n: after[n].read_bytes() for n in before} == before  # the main files untouched
    pics = sorted(p.name for p in (later.parent / "sample_neck_phantom.qc").iterdir())
    assert pics == sorted(p.name for p in (direct.parent / "sample_neck_phantom.qc").iterdir())
    for name in pics:  # the same pictures as a run that asked for them
        assert ((later.parent / "sample_neck_phantom.qc" / name).read_bytes()
                == (direct.parent / "sample_neck_phantom.qc" / name).read_bytes()), name
    assert run_cli("report", later, "--qc") == 2  # exists: --overwrite replaces it
    assert run_cli("report", later, "--qc", "--overwrite") == 0


def test_report_refuses_what_does_not_match(tmp_path, run_cli, placeholder_package, capfd):
    rep = _infer(run_cli, tmp_path / "a", placeholder_package)
    capfd.readouterr()
    assert run_cli("report", rep) == 2
    assert "nothing to add" in capfd.readouterr().err
    labels = rep.parent / "sample_neck_phantom.nodes.nii.gz"
    img = sitk.ReadImage(str(labels))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == arr.max()] = 0  # a node erased by hand
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(img)
    sitk.WriteImage(edited, str(labels))
    assert run_cli("report", rep, "--qc") == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "expected the label map of this report" in err
    assert not (rep.parent / "sample_neck_phantom.qc.html").exists()
    moved = _infer(run_cli, tmp_path / "b", placeholder_package)
    report = __import__("json").loads(moved.read_text())
    other = tmp_path / "other.nii.gz"
    resampled = sitk.ReadImage(str(SAMPLE))
    resampled.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(resampled, str(other))
    report["input"]["path"] = str(other)
    moved.write_text(__import__("json").dumps(report))
    assert run_cli("report", moved, "--qc") == 2
    assert "expected the scan and label map of this run" in capfd.readouterr().err


def test_report_of_a_measure_run_is_refused(tmp_path, run_cli, placeholder_package, capfd):
    rep = _infer(run_cli, tmp_path / "a", placeholder_package)
    assert run_cli("measure", rep.parent / "sample_neck_phantom.nodes.nii.gz", "--out", tmp_path / "m", "-q") == 0
    capfd.readouterr()
    assert run_cli("report", tmp_path / "m" / "sample_neck_phantom.report.json", "--qc") == 2
    assert "expected the report of lnrt infer" in capfd.readouterr().err


def test_report_adds_a_dicom_sr_later(shared_data, tmp_path, run_cli, placeholder_package):
    pytest.importorskip("highdicom")
    series = shared_data / "dicom" / "neckbase_philips_10slices"
    assert run_cli("infer", series, "--out", tmp_path, "-q", "--model", placeholder_package, "--no-dicom-seg") == 0
    rep = tmp_path / "neckbase_philips_10slices.report.json"
    assert not (tmp_path / "neckbase_philips_10slices.sr.dcm").exists()
    assert run_cli("report", rep, "--dicom-sr") == 0
    import pydicom
    sr = pydicom.dcmread(tmp_path / "neckbase_philips_10slices.sr.dcm")
    assert sr.Modality == "SR" and (tmp_path / "neckbase_philips_10slices.seg.dcm").exists()
