"""`lnrt batch` (issue 20): discovery and names, the SQLite ledger, the local engine on ten small scans
with two bad ones, resume after SIGINT and after `kill -9` of the driver, workers killed mid-scan, and
the Ray engine on a local Ray cluster the test starts on 127.0.0.1. Every wait is bounded."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from lnrt.batch import discover, output_name, read_manifest, unique
from lnrt.errors import LnrtError

SAMPLE = lnrt.sample_path()
TIMEOUT = 180  # seconds: any one batch of these tests (they take a few seconds each here)


def _small(path: Path, x0: int = 0, size=(64, 64, 20)) -> Path:
    """A crop of the sample phantom (0.1 s through the placeholder model); x0 makes each one different."""
    img = sitk.ReadImage(str(SAMPLE))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img[x0:x0 + size[0], 40:40 + size[1], 10:10 + size[2]], str(path))
    return path


def _archive(root: Path) -> Path:
    """Ten scans: eight good crops (two called scan.nii.gz in different folders), a truncated file and an
    MR-like volume; plus a hidden file and a text file that are not scans."""
    for i, rel in enumerate(["a/scan.nii.gz", "b/scan.nii.gz", "a/p1.nii.gz", "a/p2.nrrd", "c/d/p3.mha",
                             "c/p4.nii.gz", "c/p5.nii.gz", "p6.nii.gz"]):
        _small(root / rel, x0=8 * i)
    raw = (root / "a/scan.nii.gz").read_bytes()
    (root / "bad").mkdir()
    (root / "bad/truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    mr = sitk.GetImageFromArray(np.full((12, 32, 32), 300, np.int16))
    sitk.WriteImage(mr, str(root / "bad/mr.nii.gz"))
    (root / "a/.hidden.nii.gz").write_bytes(raw)
    (root / "notes.txt").write_text("not a scan\n")
    return root


def _rows(out: Path) -> list:
    """The ledger's rows, read the way any other reader would (read-only, WAL: never blocks the driver)."""
    if not (out / "batch.sqlite").is_file():
        return []
    db = sqlite3.connect(f"file:{out / 'batch.sqlite'}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM scans ORDER BY name")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def _driver(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lnrt.cli", "batch", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _until(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _pid(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


# -- discovery, names, manifests ------------------------------------------------------------------

def test_discovery_finds_image_files_and_dicom_folders_and_names_mirror_the_tree(tmp_path):
    root = _archive(tmp_path / "arch")
    (root / "dcm").mkdir()
    (root / "dcm/IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a DICOM file without a suffix
    (root / "out").mkdir()
    _small(root / "out/already.nii.gz")  # the batch's own folder is never an input
    found = discover([root], skip=(root / "out").resolve())
    rels = sorted(str(p.relative_to(root)) for p, _, _ in found.scans)
    assert rels == ["a/p1.nii.gz", "a/p2.nrrd", "a/scan.nii.gz", "b/scan.nii.gz", "bad/mr.nii.gz",
                    "bad/truncated.nii.gz", "c/d/p3.mha", "c/p4.nii.gz", "c/p5.nii.gz", "p6.nii.gz"]
    assert [p.name for p in found.folders] == ["dcm"]
    assert found.base == tmp_path
    assert output_name(root / "c/d/p3.mha", found.base) == "arch/c/d/p3"
    assert output_name(root / "dcm", found.base) == "arch/dcm"
    used = {"arch/a/scan"}
    assert unique("arch/a/scan", used) == "arch/a/scan-2"
    assert unique("ARCH/A/SCAN", used) == "ARCH/A/SCAN-3"  # case-blind: one file on macOS


def test_manifest_forms_and_their_errors(tmp_path):
    _small(tmp_path / "x/one.nii.gz")
    (tmp_path / "m.csv").write_text("path,name\nx/one.nii.gz,site1/p1\n# a comment\n\nmissing.nii.gz,\n"
                                    "x/../x/two.nii.gz,\n")
    rows = read_manifest(tmp_path / "m.csv")
    assert rows == [(tmp_path / "x/one.nii.gz", None, "site1/p1"), (tmp_path / "missing.nii.gz", None, None),
                    (tmp_path / "x/two.nii.gz", None, None)]  # unnamed rows: as many as wanted
    (tmp_path / "swapped.csv").write_text("name,path\np1,x/one.nii.gz\n")
    assert read_manifest(tmp_path / "swapped.csv") == [(tmp_path / "x/one.nii.gz", None, "p1")]
    (tmp_path / "h.csv").write_text("x/one.nii.gz,p1,1.2.3\n")
    assert read_manifest(tmp_path / "h.csv") == [(tmp_path / "x/one.nii.gz", "1.2.3", "p1")]
    (tmp_path / "t.txt").write_text("x/one.nii.gz\tp 1\n")
    assert read_manifest(tmp_path / "t.txt") == [(tmp_path / "x/one.nii.gz", None, "p 1")]
    for text, words in [("path,name\na.nii.gz,../up\n", "line 2: output name '../up'"),
                        ("path,name\na.nii.gz,n\nb.nii.gz,n\n", "line 3: name 'n' is already used on line 2"),
                        ("path,nmae\na.nii.gz,n\n", "unknown column 'nmae'"),
                        ("name,series\nn,1.2\n", "no path column"),
                        ("path,name\na.nii.gz,N\nb.nii.gz,n\n", "line 3: name 'n' is already used on line 2"),
                        ("# nothing\n", "lists no scan")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(LnrtError, match=words.replace("(", r"\(").replace(".", r"\.")):
            read_manifest(tmp_path / "bad.csv")


def test_user_errors_are_one_line_before_any_work(tmp_path, run_cli, capsys, placeholder_package):
    root = _archive(tmp_path / "arch")
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    (tmp_path / "empty").mkdir()
    cases = [([tmp_path / "nope"], tmp_path / "o1", "no such file or folder"),
             ([root], root / "results", "is inside the input folder"),
             ([tmp_path / "empty.txt"], tmp_path / "o2", "lists no scan"),
             ([tmp_path / "empty"], tmp_path / "o3", "no scans found"),
             ([tmp_path / "o5" / "in"], tmp_path / "o5", "is inside the batch folder")]
    _small(tmp_path / "o5" / "in" / "x.nii.gz")
    for inputs, out, words in cases:
        assert run_cli("batch", *inputs, "--out", out, "--model", placeholder_package) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
        assert not (out / "batch.sqlite").exists()  # refused before anything was made


def test_one_scan_reached_twice_is_one_scan_and_names_stay_inside(tmp_path, placeholder_package):
    _small(tmp_path / "w/a/x.nii.gz")
    _small(tmp_path / "w/b/y.nii.gz", x0=9)
    (tmp_path / "w/link").symlink_to(tmp_path / "w/a")
    (tmp_path / "w/m").mkdir()
    (tmp_path / "w/m/list.txt").write_text("../a/x.nii.gz\n../link/x.nii.gz\nmissing.nii.gz\n")
    out = tmp_path / "out"
    summary = lnrt.batch([tmp_path / "w/a", tmp_path / "w/m/list.txt", tmp_path / "w/b"], out,
                         model=placeholder_package, threads=1)
    rows = {r["name"]: r for r in _rows(out)}
    assert set(rows) == {"a/x", "b/y", "m/missing"}, rows  # one row for x, whichever way it was reached
    assert summary.counts["done"] == 2 and rows["m/missing"]["status"] == "failed"
    assert rows["m/missing"]["error"].endswith("no such file or folder; expected a CT image file or a DICOM folder")
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))


def test_visible_gpus_keep_the_parents_choice(monkeypatch):
    from lnrt.batch_engines import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus(2) == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(3) == ["0", "1", "2"] and visible_gpus(0) == []


# -- the local engine ----------------------------------------------------------------------------

def test_local_batch_of_ten_scans_with_two_bad_ones(tmp_path, run_cli, capsys, placeholder_package):
    root = _archive(tmp_path / "arch")
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert run_cli("batch", root, "--out", out, "--model", placeholder_package, "--workers", "2") == 3
    captured = capsys.readouterr()
    assert "10 scans: 8 done, 2 failed, 0 skipped" in captured.out
    rows = {r["name"]: r for r in _rows(out)}
    assert len(rows) == 10 and {"arch/a/scan", "arch/b/scan"} <= set(rows)
    failed = {n: r["error"] for n, r in rows.items() if r["status"] == "failed"}
    assert set(failed) == {"arch/bad/truncated", "arch/bad/mr"}
    assert "truncated.nii.gz: file is damaged or truncated" in failed["arch/bad/truncated"]
    assert "expected a CT in Hounsfield units" in failed["arch/bad/mr"]
    assert len({r["worker"] for r in rows.values()}) == 2  # two workers, each its own process
    for name, r in rows.items():
        if r["status"] != "done":
            continue
        labels = out / f"{name}.nodes.nii.gz"
        source = sitk.ReadImage(r["input"])
        result = sitk.ReadImage(str(labels))
        assert result.GetSize() == source.GetSize()  # the label map's NIfTI header holds float32
        for a, b in [(result.GetSpacing(), source.GetSpacing()), (result.GetOrigin(), source.GetOrigin()),
                     (result.GetDirection(), source.GetDirection())]:
            assert np.allclose(a, b, atol=1e-5)
        report = json.loads((out / f"{name}.report.json").read_text())
        assert report["input"]["path"] == r["input"] and len(report["nodes"]) == r["nodes"]
        assert r["sha256"] and len(r["sha256"]) == 64 and r["seconds"] > 0 and r["worker_peak_mb"] > 0
        if report["nodes"]:
            assert r["largest_short_axis_mm"] == round(max(n["short_axis_mm"] for n in report["nodes"]), 2)
        assert r["normal"] + r["pathological"] + r["enlarged"] == r["nodes"]
    table = list(csv.DictReader((out / "batch.csv").open()))
    assert [t["name"] for t in table] == sorted(rows)
    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 8, "failed": 2, "skipped": 0}
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # inputs untouched
    # a rerun runs nothing; --retry-failed runs the two failed ones again (and they fail again)
    finished = {n: r["finished_at"] for n, r in rows.items()}
    assert run_cli("batch", root, "--out", out, "--model", placeholder_package, "--quiet") == 3
    assert {r["name"]: r["finished_at"] for r in _rows(out)} == finished
    assert run_cli("batch", root, "--out", out, "--model", placeholder_package, "--retry-failed", "--json") == 3
    again = {r["name"]: r["finished_at"] for r in _rows(out)}
    assert [n for n in again if again[n] != finished[n]] == sorted(failed)
    assert json.loads(capsys.readouterr().out)["run"]["scans_finished"] == 2


def test_dicom_series_are_one_scan_each_and_other_modalities_are_skipped(tmp_path, placeholder_package):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_dicom_series import write_series

    from pydicom import dcmread

    root = tmp_path / "arch"
    uid_a, _ = write_series(root / "study/two", n=12, series_uid="1.2.826.0.1.3680043.8.498.101", rng_seed=1)
    write_series(root / "study/two", n=12, series_uid="1.2.826.0.1.3680043.8.498.102", rng_seed=2,
                 names=lambda i: f"b{i:03d}.dcm")
    _, mr_files = write_series(root / "study/two", n=6, series_uid="1.2.826.0.1.3680043.8.498.103",
                               names=lambda i: f"m{i:03d}.dcm")
    for f in mr_files:
        ds = dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    write_series(root / "study/one", n=12, rng_seed=3)
    summary = lnrt.batch([root], tmp_path / "out", model=placeholder_package, threads=1)
    rows = {r["name"]: r for r in _rows(tmp_path / "out")}
    assert set(rows) == {"arch/study/one", "arch/study/two.1-3680043-8-498-101", "arch/study/two.1-3680043-8-498-102",
                         "arch/study/two.1-3680043-8-498-103"}
    assert rows["arch/study/two.1-3680043-8-498-103"]["status"] == "skipped"
    assert "is MR, not CT" in rows["arch/study/two.1-3680043-8-498-103"]["error"]
    assert all(r["status"] == "done" for n, r in rows.items() if not n.endswith("103")), rows
    assert summary.counts["done"] == 3 and summary.counts["skipped"] == 1 and summary.ok
    report = json.loads((tmp_path / "out/arch/study/two.1-3680043-8-498-101.report.json").read_text())
    assert report["input"]["series_uid"] == uid_a


def test_dicom_folders_without_image_series_are_one_row_and_a_retry_lists_them_again(tmp_path, placeholder_package):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_dicom_series import write_series

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = tmp_path / "arch"
    (root / "broken").mkdir(parents=True)
    (root / "broken/a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 7)  # cut in its meta header
    (root / "sr").mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR: not an image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", generate_uid(), generate_uid()
    ds.save_as(str(root / "sr/report.dcm"), enforce_file_format=True)
    out = tmp_path / "out"
    summary = lnrt.batch([root], out, model=placeholder_package, threads=1)
    rows = {r["name"]: r for r in _rows(out)}
    assert set(rows) == {"arch/broken", "arch/sr"}
    assert rows["arch/broken"]["status"] == "failed"
    assert "could not be read as DICOM, e.g. a.dcm" in rows["arch/broken"]["error"]
    assert rows["arch/sr"]["status"] == "skipped" and "holds no DICOM image series" in rows["arch/sr"]["error"]
    assert summary.counts == {"pending": 0, "running": 0, "done": 0, "failed": 1, "skipped": 1}
    (root / "broken/a.dcm").unlink()
    write_series(root / "broken", n=12)  # repaired: --retry-failed lists the folder again
    summary = lnrt.batch([root], out, model=placeholder_package, threads=1, retry_failed=True)
    rows = {r["name"]: r for r in _rows(out)}
    assert rows["arch/broken"]["status"] == "done" and rows["arch/broken"]["series"]
    assert summary.ok


def _full_size_archive(root: Path, n: int) -> Path:
    """n copies of the whole sample phantom (about a second each through the placeholder model): long
    enough for a test to catch one running."""
    root.mkdir(parents=True, exist_ok=True)
    img = sitk.ReadImage(str(SAMPLE))
    for i in range(n):
        sitk.WriteImage(img[i:], str(root / f"s{i:02d}.nii.gz"))
    return root


def test_sigint_stops_taking_scans_and_a_rerun_finishes(tmp_path, placeholder_package):
    root = _full_size_archive(tmp_path / "arch", 6)
    out = tmp_path / "out"
    proc = _driver(root, "--out", out, "--model", placeholder_package, "--workers", "1")
    _until(lambda: any(r["status"] == "done" for r in _rows(out)), what="a first scan done")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, stderr
    assert "stopped:" in stdout and "left (rerun to finish)" in stdout
    rows = _rows(out)
    assert not [r for r in rows if r["status"] == "running"]
    done = {r["name"]: r["finished_at"] for r in rows if r["status"] == "done"}
    assert 1 <= len(done) < 6
    assert all((out / f"{n}.nodes.nii.gz").is_file() for n in done)
    assert json.loads((out / "batch.json").read_text())["counts"]["pending"] == 6 - len(done)
    rerun = _driver(root, "--out", out, "--model", placeholder_package, "--quiet")
    assert rerun.wait(TIMEOUT) == 0, rerun.stderr.read()
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["done"] * 6
    assert {r["name"]: r["finished_at"] for r in rows if r["name"] in done} == done  # not run twice


def test_kill_9_of_the_driver_and_a_rerun_lose_nothing_and_duplicate_nothing(tmp_path, placeholder_package):
    root = _full_size_archive(tmp_path / "arch", 6)
    out = tmp_path / "out"
    proc = _driver(root, "--out", out, "--model", placeholder_package, "--workers", "1")
    running = _until(lambda: [r for r in _rows(out) if r["status"] == "running" and
                              any(x["status"] == "done" for x in _rows(out))], what="a scan running after one done")
    proc.kill()
    proc.wait(10)
    worker = _pid(running[0]["worker"])
    _until(lambda: not _alive(worker), timeout=10, what="the worker to die with its driver")
    assert run_rerun(root, out, placeholder_package) == 0
    rows = _rows(out)
    assert sorted(r["name"] for r in rows) == [f"arch/s{i:02d}" for i in range(6)]
    assert all(r["status"] == "done" and r["attempts"] == 0 for r in rows)
    files = sorted(p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith(("batch", ".lnrt-batch")))
    assert files == sorted(f"s{i:02d}{s}" for i in range(6) for s in (".nodes.nii.gz", ".report.json", ".nodes.csv",
                                                                       ".nodes.seg.nrrd", ".nodes.label.txt"))


def run_rerun(root: Path, out: Path, package) -> int:
    proc = _driver(root, "--out", out, "--model", package, "--quiet")
    return proc.wait(TIMEOUT)


def _kill_workers_running(out: Path, stop: threading.Event, names=None, limit: int = 1) -> list:
    """Kill (SIGKILL) the worker of each running scan (of `names`, if given), at most `limit` times."""
    killed = []
    while not stop.is_set() and len(killed) < limit:
        for r in _rows(out):
            if r["status"] == "running" and r["worker"] and (names is None or r["name"] in names):
                pid = _pid(r["worker"])
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
        time.sleep(0.02)
    return killed


def test_a_worker_killed_mid_scan_has_its_scan_retried(tmp_path, placeholder_package):
    root = _full_size_archive(tmp_path / "arch", 5)
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    t = threading.Thread(target=lambda: killed.extend(_kill_workers_running(out, stop)))
    t.start()
    try:
        summary = lnrt.batch([root], out, model=placeholder_package, workers=2, threads=1)
    finally:
        stop.set()
        t.join(10)
    assert len(killed) == 1 and not _alive(killed[0])
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["done"] * 5 and summary.ok
    assert sum(r["attempts"] for r in rows) == 1
    assert str(killed[0]) not in {r["worker"].rsplit(":", 1)[1] for r in rows if r["attempts"]}


def test_a_scan_that_kills_every_worker_fails_after_max_attempts(tmp_path, run_cli, placeholder_package):
    root = _full_size_archive(tmp_path / "arch", 3)
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    t = threading.Thread(target=lambda: killed.extend(_kill_workers_running(out, stop, {"arch/s01"}, limit=2)))
    t.start()
    try:
        rc = run_cli("batch", root, "--out", out, "--model", placeholder_package, "--max-attempts", "2", "-q")
    finally:
        stop.set()
        t.join(10)
    assert rc == 3 and len(killed) == 2
    rows = {r["name"]: r for r in _rows(out)}
    assert rows["arch/s01"]["status"] == "failed" and rows["arch/s01"]["attempts"] == 2
    assert "killed by SIGKILL while running it" in rows["arch/s01"]["error"]
    assert "2 times; not tried again" in rows["arch/s01"]["error"]
    assert rows["arch/s00"]["status"] == rows["arch/s02"]["status"] == "done"


def test_one_driver_per_folder_same_settings_and_changed_inputs_run_again(tmp_path, placeholder_package):
    root = tmp_path / "arch"
    for i in range(3):
        _small(root / f"p{i}.nii.gz", x0=10 * i)
    out = tmp_path / "out"
    assert lnrt.batch([root], out, model=placeholder_package, threads=1).ok
    fd = os.open(out / ".lnrt-batch.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running driver holds it
    try:
        with pytest.raises(LnrtError, match="another lnrt batch is writing this folder"):
            lnrt.batch([root], out, model=placeholder_package)
    finally:
        os.close(fd)
    with pytest.raises(LnrtError, match=r"other settings \(neck_region: True then, False now\)"):
        lnrt.batch([root], out, model=placeholder_package, neck_region=False)
    before = {r["name"]: r["finished_at"] for r in _rows(out)}
    _small(root / "p1.nii.gz", x0=33)  # replaced since
    summary = lnrt.batch([root], out, model=placeholder_package, threads=1)
    assert summary.finished == 1
    after = {r["name"]: r["finished_at"] for r in _rows(out)}
    assert [n for n in after if after[n] != before[n]] == ["arch/p1"]


# -- the Ray engine ------------------------------------------------------------------------------

@pytest.fixture
def ray_cluster(tmp_path):
    """A one-node Ray cluster with 2 CPUs, started with `ray start` as a user would, joined at 127.0.0.1.
    Ray listens on every interface whatever the address (it replaces 127.0.0.1 with the machine's own
    address), so the test cluster requires Ray's token authentication (RAY_AUTH_MODE=token)."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import secrets

    # the cluster's own token, handed to the driver through the environment (a fresh machine has no
    # ~/.ray/auth_token, and the test must not write one there)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_ray_engine_on_a_local_cluster_with_a_worker_killed_mid_run(tmp_path, ray_cluster, placeholder_package):
    address, env = ray_cluster
    root = _full_size_archive(tmp_path / "arch", 6)
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    t = threading.Thread(target=lambda: killed.extend(_kill_workers_running(out, stop)))
    proc = _driver(root, "--out", out, "--model", placeholder_package, "--engine", "ray", "--address", address,
                   "--workers", "2", env=env)
    t.start()
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        stop.set()
        t.join(10)
    assert proc.returncode == 0, stderr[-3000:]
    assert "6 scans: 6 done, 0 failed" in stdout
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["done"] * 6
    assert len(killed) == 1 and sum(r["attempts"] for r in rows) == 1
    assert len({r["worker"] for r in rows}) >= 2  # two actors shared the work
    assert all((out / f"{r['name']}.nodes.nii.gz").is_file() for r in rows)


def test_infer_on_a_folder_of_image_files_points_at_batch(tmp_path, run_cli, capsys):
    for i in range(2):
        _small(tmp_path / f"scans/p{i}.nii.gz", x0=5 * i)
    assert run_cli("infer", tmp_path / "scans", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"lnrt batch {tmp_path / 'scans'} --out DIR" in err


def test_progress_lines_say_counts_throughput_and_time_left(capsys):
    from lnrt.batch import BatchProgress
    from lnrt.cli import BatchPrinter

    p = BatchProgress(finished=3, remaining=9, counts={"done": 2, "failed": 1, "skipped": 0, "pending": 9,
                                                       "running": 0}, elapsed_s=30.0, name="arch/p3",
                      status="failed", error="bad")
    assert p.eta_s == 90.0
    BatchPrinter(True, tty=False)(p)
    assert capsys.readouterr().err == ("batch: [3/12] arch/p3: failed; 2 done, 1 failed, 0 skipped; "
                                       "6.0 scans/min, about 90 s left\n")
    printer = BatchPrinter(True, tty=True)
    printer(p)
    printer.finish()
    err = capsys.readouterr().err
    assert err.startswith("\r[3/12] 2 done, 1 failed, 0 skipped; 6.0 scans/min, about 90 s left") and err.endswith("\r")
    BatchPrinter(False)(p)
    assert capsys.readouterr().err == ""
