"""`lnrt serve` (issue 21): configuration, repeatable UIDs, and the node itself on 127.0.0.1 against a
Storage SCP in the test playing the PACS: a phantom series sent with pynetdicom (and dcmtk's storescu
when installed) comes back as a SEG and an SR; unknown AE titles are rejected; a PACS that is down at
first gets the results once it is up, across a kill -9 and a restart of the server. Every wait is bounded."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pynetdicom = pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

import lnrt  # noqa: E402
from lnrt.errors import LnrtError  # noqa: E402
from lnrt.serve import Destination, ServeConfig, metrics_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_dicom_series import slice_dataset  # noqa: E402

TIMEOUT = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phantom_series(folder: Path, series_uid: str | None = None, z=(10, 26)) -> tuple[str, list]:
    """A crop of the sample phantom as a CT DICOM series (0.9 mm pixels, 3 mm slices)."""
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(lnrt.sample_path())))[z[0]:z[1], 20:148, 36:164]
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    frame = generate_uid()
    files = []
    for i, plane in enumerate(arr):
        ds = slice_dataset(i, series_uid, rows=plane.shape[0], cols=plane.shape[1], pixel_spacing=(0.9, 0.9))
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Phantom^Neck", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261202", "120000", "1", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.Manufacturer = "", 1, "lnrt-test"
        ds.ImageType, ds.KVP, ds.AcquisitionNumber = ["ORIGINAL", "PRIMARY", "AXIAL"], "120", 1
        ds.PixelData = (plane.astype(np.int32) + 1024).clip(0, 4095).astype(np.int16).tobytes()
        path = folder / f"ct{i:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return series_uid, files


class Pacs:
    """A Storage SCP on 127.0.0.1 that keeps what it receives (SEG and SR), as a PACS would."""

    def __init__(self, port: int, folder: Path, ae_title: str = "PACS"):
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

        self.folder, self.received = folder, []
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(str(path), enforce_file_format=True)
            self.received.append((str(ds.Modality), str(ds.SOPInstanceUID)))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def close(self):
        self.server.shutdown()


def send_series(files: list, port: int, calling: str = "SCANNER", called: str = "LNRT") -> list:
    """C-STORE every file; returns the statuses (None when no association)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [None]
    try:
        return [assoc.send_c_store(str(f)).Status for f in files]
    finally:
        assoc.release()


def _until(predicate, timeout: float = TIMEOUT, what: str = "condition", every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _server(tmp_path, package, port, pacs_port, http_port=0, spool=None) -> subprocess.Popen:
    args = [sys.executable, "-m", "lnrt.cli", "serve", "--spool", spool or tmp_path / "spool", "--port", port,
            "--host", "127.0.0.1", "--ae-title", "LNRT", "--allow", "SCANNER", "--destination",
            f"PACS@127.0.0.1:{pacs_port}", "--quiet-seconds", "1", "--model", package, "--threads", "1",
            "--http-port", http_port]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _until(lambda: _listening(port) or proc.poll() is not None, what="the server to listen")
    assert proc.poll() is None, proc.stderr.read()
    return proc


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen) -> tuple:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err


# -- configuration ------------------------------------------------------------------------------------

def test_config_from_toml_and_flags(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[node]\nae_title = "LNRT1"\nport = 4242\nspool = "spool"\nallowed_calling_aes = ["CT01"]\n'
                    '[model]\nvariant = "fp16"\n[[destinations]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n')
    cfg = ServeConfig.load(toml, port=11113)
    assert (cfg.ae_title, cfg.port, cfg.allowed_calling_aes) == ("LNRT1", 11113, ("CT01",))
    assert cfg.spool == tmp_path / "spool"  # relative to the configuration file
    assert cfg.destinations == (Destination("PACS", "10.0.0.5", 104),) and cfg.session_options == {"variant": "fp16"}
    assert Destination.parse("ARCHIVE@pacs.example:11112") == Destination("ARCHIVE", "pacs.example", 11112)
    for text, words in [('[node]\nspool = "s"\nae_title = "A_TITLE_LONGER_THAN_16"\n', "is not valid"),
                        ('[node]\nspool = "s"\nprot = 1\n', "unknown setting 'prot'"),
                        ('[nodes]\n', "unknown section [nodes]"), ("[node\n", "not valid TOML"),
                        ('[node]\nspool = "s"\nport = "104"\n', "port = '104'; expected a whole number"),
                        ('[node]\nspool = "s"\nquiet_seconds = -1\n', "expected a number of at least 0")]:
        toml.write_text(text)
        with pytest.raises(LnrtError, match=words.replace("[", r"\[").replace("]", r"\]")):
            ServeConfig.load(toml)
    with pytest.raises(LnrtError, match="expected AE@HOST:PORT"):
        Destination.parse("PACS:104")
    with pytest.raises(LnrtError, match="no spool folder"):
        ServeConfig.load(None)


def test_metrics_are_prometheus_text():
    m = {"instances": 12, "jobs": {"receiving": 0, "queued": 1, "running": 0, "done": 2, "failed": 0},
         "sends": {"pending": 1, "sent": 3, "failed": 0}, "send_failures": 4, "inference_seconds": 2.5,
         "oldest_queued_at": 100.0}
    text = metrics_text(m, now=130.0)
    assert "lnrt_received_instances_total 12\n" in text and 'lnrt_jobs{state="queued"} 1\n' in text
    assert "lnrt_send_failures_total 4\n" in text and "lnrt_queue_age_seconds 30.000\n" in text
    assert all(ln.startswith("#") or len(ln.split(" ")) == 2 for ln in text.strip().splitlines())


def test_result_uids_repeat_for_one_seed(tmp_path, session):
    _, files = phantom_series(tmp_path / "ct")
    result = session.run(tmp_path / "ct")
    assert result.nodes
    a = result.save(tmp_path / "a", dicom_sr=True, uid_seed="1.2.3/abc")
    b = result.save(tmp_path / "b", dicom_sr=True, uid_seed="1.2.3/abc")
    c = result.save(tmp_path / "c", dicom_sr=True, uid_seed="1.2.3/def")
    uids = [(dcmread(p["dicom_seg"]).SOPInstanceUID, dcmread(p["dicom_sr"]).SOPInstanceUID) for p in (a, b, c)]
    assert uids[0] == uids[1] and uids[0][0] != uids[2][0] and uids[0][1] != uids[2][1]
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in uids[0])


# -- the node --------------------------------------------------------------------------------------

def test_a_series_sent_comes_back_as_seg_and_sr(tmp_path, placeholder_package):
    port, pacs_port, http_port = _free_port(), _free_port(), _free_port()
    pacs = Pacs(pacs_port, tmp_path / "pacs")
    proc = _server(tmp_path, placeholder_package, port, pacs_port, http_port)
    try:
        series_uid, files = phantom_series(tmp_path / "ct")
        assert send_series(files, port) == [0x0000] * len(files)
        assert send_series(files[:1], port, calling="STRANGER") == [None]  # not an allowed AE title
        _until(lambda: len(pacs.received) >= 2, what="the SEG and SR at the PACS")
        assert sorted(m for m, _ in pacs.received) == ["SEG", "SR"]
        sr = dcmread(next(p for p in pacs.folder.iterdir() if dcmread(p).Modality == "SR"))
        evidence = {str(s.SeriesInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence[0]
                    .ReferencedSeriesSequence}
        assert series_uid in evidence
        if shutil.which("dciodvfy"):
            for p in pacs.folder.iterdir():
                check = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
                errors = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")]
                assert errors == [], (p, errors)
        base = f"http://127.0.0.1:{http_port}"
        assert urllib.request.urlopen(base + "/health", timeout=5).read() == b"ok\n"
        assert urllib.request.urlopen(base + "/ready", timeout=5).status == 200
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert f"lnrt_received_instances_total {len(files)}\n" in metrics and 'lnrt_sends{state="sent"} 2' in metrics
        assert send_series(files, port) == [0x0000] * len(files)  # the same instances again: no new job
        time.sleep(2)
        assert 'lnrt_jobs{state="done"} 1' in urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    finally:
        code, err = _stop(proc)
        pacs.close()
    assert code == 0, err[-2000:]
    assert f"serve: {series_uid}: done" in err and "serve: stopping" in err


def test_results_wait_for_a_pacs_that_is_down_across_a_kill_9_and_a_restart(tmp_path, placeholder_package):
    port, pacs_port = _free_port(), _free_port()
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    spool = tmp_path / "spool"
    try:
        series_uid, files = phantom_series(tmp_path / "ct")
        assert send_series(files, port) == [0x0000] * len(files)
        _until(lambda: (spool / "outbox").is_dir() and list((spool / "outbox").rglob("*.sr.dcm")),
               what="the results in the outbox")
        time.sleep(1.5)  # at least one delivery attempt fails: nothing listens on the PACS port
    finally:
        proc.kill()  # kill -9: the results are not delivered yet
        proc.wait(10)
    pacs = Pacs(pacs_port, tmp_path / "pacs")
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    try:
        _until(lambda: len(pacs.received) >= 2, timeout=60, what="the results after the restart")
        sop_uids = {u for _, u in pacs.received}
        assert len(sop_uids) == 2
    finally:
        code, err = _stop(proc)
        pacs.close()
    assert code == 0, err[-2000:]


def _dcmtk_storescu() -> str | None:
    """dcmtk's storescu (pynetdicom installs a Python program of the same name into the environment)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which("storescu", path=folder)
        if path:
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in version.lower():
                return path
    return None


STORESCU = _dcmtk_storescu()


@pytest.mark.skipif(STORESCU is None, reason="dcmtk's storescu is not installed (Debian package dcmtk)")
def test_dcmtk_storescu_sends_a_series(tmp_path, placeholder_package):
    port, pacs_port = _free_port(), _free_port()
    pacs = Pacs(pacs_port, tmp_path / "pacs")
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    try:
        _, files = phantom_series(tmp_path / "ct")
        sent = subprocess.run([STORESCU, "-aet", "SCANNER", "-aec", "LNRT", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        _until(lambda: len(pacs.received) >= 2, what="the SEG and SR at the PACS")
    finally:
        _stop(proc)
        pacs.close()


def _store_rows(spool: Path, sql: str) -> list:
    import sqlite3

    if not (spool / "serve.sqlite").is_file():
        return []
    db = sqlite3.connect(f"file:{spool / 'serve.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_kill_9_during_receive_and_during_inference_loses_nothing(tmp_path, placeholder_package):
    port, pacs_port = _free_port(), _free_port()
    spool = tmp_path / "spool"
    pacs = Pacs(pacs_port, tmp_path / "pacs")
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    series_uid, files = phantom_series(tmp_path / "ct", z=(0, 42))  # the whole phantom: a job of about 2 s
    try:
        assert send_series(files[:8], port) == [0x0000] * 8  # acknowledged ...
    finally:
        proc.kill()  # ... then kill -9 in the middle of the series
        proc.wait(10)
    assert len(list((spool / "incoming").rglob("*.dcm"))) == 8
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    try:
        assert send_series(files[8:], port) == [0x0000] * (len(files) - 8)
        _until(lambda: _store_rows(spool, "SELECT 1 FROM series WHERE state = 'running'"), what="the job running",
               every=0.02)
    finally:
        proc.kill()  # kill -9 during inference
        proc.wait(10)
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    try:
        _until(lambda: len(pacs.received) >= 2, what="the results after the second restart")
        (state, attempts, instances), = _store_rows(spool, "SELECT state, attempts, instances FROM series")
        assert (state, instances) == ("done", len(files)) and attempts >= 2, (state, attempts, instances)
        assert sorted(m for m, _ in pacs.received) == ["SEG", "SR"]
    finally:
        _stop(proc)
        pacs.close()


def test_over_the_spool_quota_new_associations_are_refused_as_transient(tmp_path, placeholder_package):
    port = _free_port()
    spool = tmp_path / "spool"
    args = [sys.executable, "-m", "lnrt.cli", "serve", "--spool", spool, "--port", port, "--host", "127.0.0.1",
            "--quiet-seconds", "60", "--spool-quota-gb", "0.001", "--model", placeholder_package, "--threads", "1"]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: _listening(port) or proc.poll() is not None, what="the server to listen")
        assert proc.poll() is None, proc.stderr.read()
        _, files = phantom_series(tmp_path / "ct", z=(0, 42))  # 42 instances of 32 kB: the quota is 1 MB
        statuses = send_series(files, port)
        assert statuses[:20] == [0x0000] * 20 and 0xA700 in statuses  # refused once full, never dropped
        stored = len(list((spool / "incoming").rglob("*.dcm")))
        assert stored == statuses.count(0x0000)

        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage)
        assoc = _until(lambda: (lambda a: a if a.is_rejected else a.release())(ae.associate("127.0.0.1", port,
                                                                                           ae_title="LNRT")),
                       timeout=10, what="a rejected association")
        assert assoc.is_rejected
    finally:
        code, err = _stop(proc)
    assert "over its quota" in err and code == 0


def test_a_non_ct_series_is_recorded_as_failed_with_its_reason(tmp_path, placeholder_package):
    from pydicom.uid import MRImageStorage

    port, pacs_port = _free_port(), _free_port()
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    try:
        series_uid, files = phantom_series(tmp_path / "mr")
        for f in files:
            ds = dcmread(f)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.Modality = "MR"
            ds.save_as(str(f), enforce_file_format=True)

        from pynetdicom import AE

        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="LNRT")
        assert assoc.is_established
        statuses = [assoc.send_c_store(str(f)).Status for f in files]
        assoc.release()
        assert statuses == [0x0000] * len(files)  # received: the sender has nothing to retry
        (state, reason), = _store_rows(tmp_path / "spool", "SELECT state, reason FROM series")
        assert state == "failed" and f"series {series_uid} is MR" in reason and "not CT" in reason
        assert not (tmp_path / "spool" / "incoming").exists()  # nothing spooled for it
    finally:
        code, err = _stop(proc)
    assert code == 0 and err.count("is MR") == 1


@pytest.mark.skipif(STORESCU is None, reason="dcmtk's storescu is not installed (Debian package dcmtk)")
def test_storescu_sends_a_real_series_and_the_results_pass_dciodvfy(tmp_path, shared_data, placeholder_package):
    port, pacs_port = _free_port(), _free_port()
    pacs = Pacs(pacs_port, tmp_path / "pacs")
    proc = _server(tmp_path, placeholder_package, port, pacs_port)
    try:
        files = sorted((shared_data / "dicom" / "neckbase_philips_10slices").iterdir())
        sent = subprocess.run([STORESCU, "-aet", "SCANNER", "-aec", "LNRT", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        _until(lambda: len(pacs.received) >= 2, what="the SEG and SR at the PACS")
        assert sorted(m for m, _ in pacs.received) == ["SEG", "SR"]
        if shutil.which("dciodvfy"):
            for p in pacs.folder.iterdir():
                check = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
                assert [ln for ln in (check.stdout + check.stderr).splitlines() if ln.startswith("Error")] == [], p
    finally:
        _stop(proc)
        pacs.close()


def test_config_refuses_what_would_fail_later(tmp_path):
    toml = tmp_path / "serve.toml"
    for text, words in [('[node]\nspool = "s"\nallowed_calling_aes = "CT01"\n', "expected a list of AE titles"),
                        ('[node]\nspool = "s"\n[model]\nvarient = "fp16"\n', "[model] has no setting 'varient'"),
                        ('[node]\nspool = "s"\nspool_quota_gb = 0\n', "expected a number of at least 0.001"),
                        ('[node]\nspool = "s"\n[[destinations]]\nae_title = "P"\nhost = "h"\nport = 70000\n',
                         "with a port from 1 to 65535")]:
        toml.write_text(text)
        with pytest.raises(LnrtError, match=words.replace("[", r"\[").replace("]", r"\]")):
            ServeConfig.load(toml)
    toml.write_text('[node]\nspool = "s"\n[model]\nmodel = "pkg"\n')
    assert ServeConfig.load(toml).session_options["model"] == str(tmp_path / "pkg")


def test_store_states_sends_and_counters(tmp_path):
    from lnrt.serve import deliver, uid_seed
    from lnrt.serve_store import Store

    store = Store(tmp_path / "serve.sqlite")
    assert store.received("1", "S", "T", "CT01", "/x/1.dcm", 10) and not store.received("1", "S", "T", "CT01", "", 10)
    assert store.queue_quiet(0.0) == 1 and store.next_job() == "S"
    store.received("2", "S", "T", "CT01", "/x/2.dcm", 10)  # while it runs: run it again, send nothing from this run
    store.finished("S", True, None, 3, 1.5, [("PACS@127.0.0.1:1", str(tmp_path / "gone.dcm"))])
    assert store.series("S")["state"] == "receiving" and store.due_sends() == []
    assert store.queue_quiet(0.0) == 1 and store.next_job() == "S"
    assert store.recover(3) == 1 and store.series("S")["interrupted"] == 1  # a restart while it ran
    assert store.next_job() == "S"
    store.finished("S", True, None, 3, 2.0, [("PACS@127.0.0.1:1", str(tmp_path / "gone.dcm"))])
    assert store.series("S")["state"] == "done" and store.series("S")["interrupted"] == 0
    send, = store.due_sends()
    cfg = ServeConfig(spool=tmp_path)
    deliver(cfg, store, send)  # the file is gone: failed for good, not retried forever
    assert store.due_sends() == [] and store.metrics()["sends"]["failed"] == 1
    m = store.metrics()
    assert m["inference_seconds"] == 3.5 and m["send_failures"] == 1 and m["jobs"]["done"] == 1
    assert uid_seed("S", ["1", "2"], "m") == uid_seed("S", ["2", "1"], "m") != uid_seed("S", ["1"], "m")


def test_spool_usage_follows_the_disk(tmp_path):
    from lnrt.serve import SpoolUsage

    (tmp_path / "incoming" / "S").mkdir(parents=True)
    (tmp_path / "incoming" / "S" / "a.dcm").write_bytes(b"x" * 600)
    usage = SpoolUsage(tmp_path, quota_bytes=1000)
    assert usage.bytes == 600 and not usage.full
    usage.add(500)
    assert usage.full
    (tmp_path / "incoming" / "S" / "a.dcm").unlink()  # an operator cleans up: the next walk lifts the gate
    usage.refresh(force=True)
    assert usage.bytes == 0 and not usage.full
