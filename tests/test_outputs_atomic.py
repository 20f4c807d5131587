"""All-or-nothing outputs (issue 15): every file of a run staged and renamed only when all are complete,
checked against a real full file system, a read-only mount, SIGINT during the write and SIGKILL at random
points; the umask honoured; the pre-flight refusing what cannot be written before any work."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from lnrt import atomic, outputs
from lnrt.cli import main

SAMPLE = lnrt.sample_path()
STEM = "sample_neck_phantom"
FINAL = [f"{STEM}{s}" for s in (".nodes.nii.gz", ".report.json", ".nodes.csv", ".nodes.seg.nrrd",
                                 ".nodes.label.txt")]


def _can_mount() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    r = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && true"],
                       capture_output=True)
    return r.returncode == 0


MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not MOUNT, reason="cannot mount a tmpfs here (needs root and unshare)")


def _lnrt_in_mount(mount: Path, options: str, *args) -> subprocess.CompletedProcess:
    """`lnrt ARGS` in a private mount namespace where `mount` is a fresh tmpfs with OPTIONS."""
    cmd = " ".join(f"'{a}'" for a in [sys.executable, "-m", "lnrt.cli", *map(str, args)])
    script = f"mount -t tmpfs -o {options} tmpfs '{mount}' && {cmd}; rc=$?; ls -A '{mount}' >&3; exit $rc"
    return subprocess.run(["unshare", "--mount", "sh", "-c", f"exec 3>'{mount}.ls'; {script}"],
                          capture_output=True, text=True, timeout=120)


def _listing(mount: Path) -> list:
    return Path(f"{mount}.ls").read_text().split()


@needs_mount
def test_full_disk_leaves_nothing(tmp_path, placeholder_package):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for size in ("24k", "300k"):  # full at the first file, or part-way through the set
        r = _lnrt_in_mount(mnt, f"size={size}", "infer", SAMPLE, "--out", mnt, "-q", "--qc",
                           "--model", placeholder_package)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "No space left on device" in r.stderr and "nothing was written" in r.stderr
        assert _listing(mnt) == []  # no final name, no staged temporary


@needs_mount
def test_read_only_output_folder_refused_before_any_work(tmp_path, placeholder_package):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = _lnrt_in_mount(mnt, "ro", "--debug", "infer", SAMPLE, "--out", mnt / "sub", "-q",
                       "--model", placeholder_package)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "cannot write there" in line and "Read-only file system" in line
    assert "tiles" not in r.stderr and "backend" not in r.stderr  # refused before the model ran


def test_failed_write_keeps_the_previous_outputs(tmp_path, session, monkeypatch):
    res = session.run(SAMPLE)
    res.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def fail_late(image, path):  # the viewer file, the last image of the set, fails
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(image, path)
    real = outputs.write_image_file
    monkeypatch.setattr("lnrt.session.write_image_file", fail_late)
    monkeypatch.setattr("lnrt.outputs.write_image_file", fail_late)
    with pytest.raises(lnrt.LnrtError, match="No space left"):
        res.save(tmp_path, overwrite=True)
    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old set intact, nothing staged


_SLOW_WRITE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import lnrt.outputs, lnrt.session
    real = lnrt.outputs.write_image_file
    def slow(image, path):
        real(image, path)
        Path(sys.argv[1]).write_text("staged")
        time.sleep(30)
    lnrt.outputs.write_image_file = slow
    lnrt.session.write_image_file = slow
    from lnrt.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_the_write_removes_every_staged_file(tmp_path, placeholder_package, signum):
    out, ready = tmp_path / "out", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, str(ready), "infer", str(SAMPLE), "--out",
                             str(out), "-q", "--model", str(placeholder_package)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "no write reached"
    staged = [p.name for p in out.iterdir()]
    assert staged and all(n.startswith(atomic.TEMP_PREFIX) for n in staged)  # a file was staged
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and err.strip() == "lnrt: aborted"
    assert not out.exists() or list(out.iterdir()) == []  # nothing staged left, no final name


def _complete(path: Path) -> bool:
    """Whether a final output file is whole (parses and has its full content)."""
    name = path.name
    if name.endswith(".report.json"):
        return json.loads(path.read_text())["schema"] == "lnrt.report/1"
    if name.endswith(".nodes.csv"):
        return path.read_text().startswith("id,class,")
    if name.endswith(".label.txt"):
        return path.read_text().endswith("\n")
    if name.endswith(".nii.gz") or name.endswith(".seg.nrrd"):
        return sitk.ReadImage(str(path)).GetSize() == sitk.ReadImage(str(SAMPLE)).GetSize()
    raise AssertionError(f"unexpected output {name}")


def test_sigkill_at_random_points_never_leaves_a_partial_final_file(tmp_path, placeholder_package):
    rng = random.Random(15)
    t0 = time.time()
    full = subprocess.run([sys.executable, "-m", "lnrt.cli", "infer", str(SAMPLE), "--out", str(tmp_path / "ref"),
                           "-q", "--model", str(placeholder_package)], capture_output=True)
    assert full.returncode == 0
    span = time.time() - t0
    seen_final = 0
    for i in range(6):  # bounded: 6 kills spread over the run, the later ones inside the write
        out = tmp_path / f"k{i}"
        proc = subprocess.Popen([sys.executable, "-m", "lnrt.cli", "infer", str(SAMPLE), "--out", str(out),
                                 "-q", "--model", str(placeholder_package)], stderr=subprocess.DEVNULL)
        time.sleep(span * rng.uniform(0.6, 1.05))
        proc.kill()
        proc.wait()
        for p in (out.iterdir() if out.exists() else ()):
            if p.name.startswith(atomic.TEMP_PREFIX):
                continue  # a staged file a SIGKILL could not clean up: hidden, never a final name
            assert p.name in FINAL and _complete(p), p
            seen_final += 1
    assert all(_complete(tmp_path / "ref" / n) for n in FINAL)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(tmp_path, session, mask):
    res = session.run(SAMPLE)
    old = os.umask(mask)
    try:
        paths = res.save(tmp_path / "o", qc=True)
    finally:
        os.umask(old)
    for key, p in paths.items():
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == ((0o777 if p.is_dir() else 0o666) & ~mask), (key, oct(mode))
    for png in paths["qc_dir"].iterdir():
        assert stat.S_IMODE(png.stat().st_mode) == 0o666 & ~mask


RENAMES_INTERRUPTED = """
import os, signal, sys
from pathlib import Path
from lnrt import atomic
finals = [Path(sys.argv[1]) / f"f{i}.txt" for i in range(4)]
real, got = os.replace, []

def replace(a, b):
    if not got:
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the renames run
    got.append(b)
    real(a, b)
atomic.os.replace = replace
try:
    with atomic.Staging() as staged:
        for f in finals:
            staged.path(f).write_text(f.name)
        staged.commit()
except KeyboardInterrupt:
    print("interrupted after", len(got), "renames")
"""


def test_an_interrupt_during_the_renames_waits_for_the_last(tmp_path):
    """In a fresh interpreter: a SIGINT sent to the test process itself lands wherever the libraries
    that earlier tests loaded (torch, nnU-Net, OpenVINO thread pools) left the process, and after
    nnU-Net's predictor had run in it, one such signal crashed the whole pytest run (status 139)."""
    proc = subprocess.run([sys.executable, "-c", RENAMES_INTERRUPTED, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "interrupted after 4 renames", proc
    finals = [tmp_path / f"f{i}.txt" for i in range(4)]
    assert [f.read_text() for f in finals] == [f.name for f in finals]  # all four renamed, then interrupted


def test_preflight_refusals_before_any_work(tmp_path, run_cli, capfd, placeholder_package, monkeypatch):
    (tmp_path / "afile").write_text("x")
    long_input = tmp_path / ("n" * 240 + ".nii.gz")
    shutil.copy(SAMPLE, long_input)
    dicom_like = tmp_path / "series"
    dicom_like.mkdir()
    cases = [
        (("infer", SAMPLE, "--out", tmp_path / "afile" / "sub"), "is a file, not a folder"),
        (("infer", long_input, "--out", tmp_path / "o1"), "longer than the file system's"),
    ]
    for args, expected in cases:
        assert run_cli(*args, "-q", "--model", placeholder_package) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "o1").exists()
    with pytest.raises(lnrt.LnrtError, match="inside the input folder"):
        outputs.check_writable(dicom_like / "out", "s", False, (dicom_like,))
    with pytest.raises(lnrt.LnrtError, match="inside the input folder"):
        outputs.check_writable(dicom_like, "s", False, (dicom_like,))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "PIL" else object())
    assert run_cli("infer", SAMPLE, "--out", tmp_path / "o2", "-q", "--qc", "--model", placeholder_package) == 2
    err = capfd.readouterr().err
    assert "Pillow is not installed" in err and "lnrt[qc]" in err and err.count("\n") == 1
    assert not (tmp_path / "o2").exists()


def test_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capfd, monkeypatch,
                                                                   placeholder_package):
    def boom(*a, **k):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(lnrt.Session, "run", boom)
    args = ["infer", str(SAMPLE), "--out", str(tmp_path / "o"), "-q", "--model", str(placeholder_package)]
    assert main(args) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lnrt: internal error: ZeroDivisionError: a bug")
    trace = Path(err.split("traceback in ")[1].split(";")[0])
    assert "Traceback" in trace.read_text() and "boom" in trace.read_text()
    trace.unlink()
    assert main(["--debug", *args]) == 1
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: a bug" in err
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_one_line(capfd):
    for args in (["infer", "--bogus", "x"], ["infer"], ["nosuchcommand"], ["infer", "x", "--threads", "0"]):
        assert main(args) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and err.startswith("lnrt: error: "), (args, err)


def test_no_temporary_names_longer_than_the_final_ones(tmp_path):
    final = tmp_path / ("s" * 200 + ".nodes.seg.nrrd")
    tmp = atomic.temporary_name(final)
    assert len(tmp.name) < 40 and tmp.name.endswith(".seg.nrrd") and tmp.parent == tmp_path
    tmp.unlink()
    arr = np.zeros((4, 4, 4), np.uint8)
    with atomic.atomic_path(final) as t:
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(t))
    assert sitk.ReadImage(str(final)).GetSize() == (4, 4, 4)


def test_two_runs_into_one_folder_never_both_claim_the_names(tmp_path, placeholder_package):
    """Two different scans with one stem, written into one folder at once without --overwrite: one run
    writes, the other is refused (in its pre-flight, or when it finds the names taken at commit under the
    folder's lock), and the folder holds one complete, consistent set."""
    a, b = tmp_path / "a" / "scan.nii.gz", tmp_path / "b" / "scan.nii.gz"
    for p in (a, b):
        p.parent.mkdir()
    shutil.copy(SAMPLE, a)
    img = sitk.ReadImage(str(SAMPLE))
    flipped = sitk.Flip(img, [True, False, False])
    flipped.CopyInformation(img)
    sitk.WriteImage(flipped, str(b))
    for i in range(3):  # bounded: three races
        out = tmp_path / f"o{i}"
        procs = [subprocess.Popen([sys.executable, "-m", "lnrt.cli", "infer", str(p), "--out", str(out), "-q",
                                   "--model", str(placeholder_package)], stderr=subprocess.PIPE, text=True)
                 for p in (a, b)]
        codes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert sorted(c for c, _ in codes) == [0, 2], codes
        refused = next(err for c, err in codes if c == 2)
        assert refused.count("\n") == 1 and ("already exists" in refused or "appeared while this run" in refused)
        report = json.loads((out / "scan.report.json").read_text())
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scan.nodes.nii.gz")))
        assert sorted({n["id"] for n in report["nodes"]}) == sorted(set(np.unique(labels).tolist()) - {0})
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
