"""`lnrt serve` under load (issue 21): four dcmtk `storescu` clients send 20 series at once to one node
that sends its results to a PACS (a pynetdicom Storage SCP in this process), everything on 127.0.0.1.
`python -m benchmarks.serve_load [OUT.json]` (needs dcmtk's storescu and `lnrt[serve]`).

Reported: whether every series was processed exactly once (one job each, one attempt, one SR at the
PACS), instances per second received, and per series the time from its last instance to its SR at the
PACS less the quiet time, against `lnrt infer --dicom-sr` on the same series (process start included).
The series are 16-slice crops (128 x 128, 0.9 mm, 3 mm slices) of 20 neck phantoms; the model is the
embedded default.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERIES, CLIENTS, QUIET_S = 20, 4, 2.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_series(folder: Path, seed: int) -> list:
    """A phantom crop as a CT DICOM series."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from lnrt.models.make_sample import SPACING_ZYX
    from lnrt.models.neck import make_spec, render

    hu, _, _ = render(make_spec(seed), SPACING_ZYX, fov_xy=(180.0, 150.0))
    z0 = max(0, hu.shape[0] // 2 - 8)
    arr = np.round(hu[z0:z0 + 16, 20:148, 36:164]).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    files = []
    for i, plane in enumerate(arr):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", f"P{seed}", "Phantom^Neck"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20261202", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer, ds.PositionReferenceIndicator = 1, i + 1, "lnrt", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 3.0 * i], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 3.0
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 128, 128, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (plane.astype(np.int32) + 1024).clip(0, 4095).astype(np.int16).tobytes()
        path = folder / f"ct{i:03d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files


class Pacs:
    """Keeps the arrival time of each SR, by the source series it reports on."""

    def __init__(self, port: int):
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

        self.sr_at, self.sop_uids, self.lock = {}, [], threading.Lock()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event):
        ds = event.dataset
        with self.lock:
            self.sop_uids.append(str(ds.SOPInstanceUID))
            if ds.Modality == "SR":
                ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                for s in ref:
                    if str(s.ReferencedSOPSequence[0].ReferencedSOPClassUID).endswith(".1.2"):  # CT Image
                        self.sr_at.setdefault(str(s.SeriesInstanceUID), []).append(time.time())
        return 0x0000


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run(tmp: Path) -> dict:
    lnrt = str(Path(sys.executable).with_name("lnrt"))
    folders = [tmp / "series" / f"s{i:02d}" for i in range(SERIES)]
    files = [write_series(f, 32000 + i) for i, f in enumerate(folders)]
    port, pacs_port = _port(), _port()
    pacs = Pacs(pacs_port)
    spool = tmp / "spool"
    server = subprocess.Popen([lnrt, "serve", "--spool", str(spool), "--host", "127.0.0.1", "--port", str(port),
                               "--destination", f"PACS@127.0.0.1:{pacs_port}", "--quiet-seconds", str(QUIET_S), "-q"],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 120), "the server did not start"
        t0 = time.time()
        clients = [subprocess.Popen(["storescu", "-aet", f"CT{c}", "-aec", "LNRT", "127.0.0.1", str(port),
                                     *[str(p) for i in range(c, SERIES, CLIENTS) for p in files[i]]])
                   for c in range(CLIENTS)]
        codes = [c.wait(300) for c in clients]
        sent_s = time.time() - t0
        done = _wait(lambda: len(pacs.sr_at) >= SERIES, 600)
    finally:
        server.terminate()
        server.wait(120)
        pacs.server.shutdown()
    db = sqlite3.connect(str(spool / "serve.sqlite"))
    jobs = db.execute("SELECT series_uid, state, attempts, last_at FROM series").fetchall()
    first, last = db.execute("SELECT MIN(received_at), MAX(received_at) FROM instances").fetchone()
    n_instances = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    latency = [pacs.sr_at[uid][0] - last_at - QUIET_S for uid, _, _, last_at in jobs if uid in pacs.sr_at]
    infer = []
    for f in folders[:5]:
        t = time.perf_counter()
        subprocess.run([lnrt, "infer", str(f), "--out", str(tmp / "infer" / f.name), "--dicom-sr", "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        infer.append(time.perf_counter() - t)
    return {
        "storescu_exit_codes": codes, "all_results_arrived": done, "series": SERIES, "clients": CLIENTS,
        "instances_received": n_instances, "instances_per_second": round(n_instances / max(last - first, 1e-9), 1),
        "clients_wall_s": round(sent_s, 2),
        "exactly_once": (len(jobs) == SERIES and all(s == "done" and a == 1 for _, s, a, _ in jobs)
                         and all(len(v) == 1 for v in pacs.sr_at.values())
                         and len(set(pacs.sop_uids)) == len(pacs.sop_uids)),
        "last_instance_to_sr_minus_quiet_s": {"median": round(statistics.median(latency), 2),
                                              "max": round(max(latency), 2), "min": round(min(latency), 2)},
        "lnrt_infer_dicom_sr_wall_s": {"median": round(statistics.median(infer), 2), "runs": len(infer)},
        "quiet_seconds": QUIET_S,
    }


def main(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="lnrt-serve-load-") as tmp:
        result = run(Path(tmp))
    result["machine"] = f"{platform.node()} ({os.cpu_count()} cores), no GPU"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "serve-load.json")
