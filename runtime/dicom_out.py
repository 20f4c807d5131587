"""DICOM outputs for PACS and scanner consoles: a Segmentation (SEG) and a TID 1500 measurement
report (Comprehensive 3D SR), built with highdicom (`pip install 'lnrt[clinical]'`), never by hand.

SEG: one segment per node (default) or per class, each coded as SCT 91723000 "Anatomical Structure" /
SCT 59441001 "Lymph node", automatic, with the algorithm identified (lnrt and model name and version);
frames reference the source CT series' instances (empty frames omitted). The equipment fields
(manufacturer, model name, serial number, software versions) come from `Equipment`, so a vendor can
put its own.

SR (TID 1500 "Imaging Measurement Report"): one Volumetric ROI measurement group per node with a
tracking identifier and tracking UID (the same as its SEG segment's), a reference to that segment,
finding type "Lymph node", and the measurements SCT 103339001 "Long axis" and SCT 103340004 "Short
axis" (mm) and SCT 118565006 "Volume" (mm3), plus the RECIST 1.1 category as a qualitative evaluation.
The category has no standard code we know of, so it uses the private scheme 99LNRT (codes in
`RECIST_CODES`), as DICOM allows for local concepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import LnrtError
from .optional import require

RECIST_SCHEME = "99LNRT"
RECIST_CONCEPT = ("LNRT-1", "RECIST 1.1 lymph node category")
RECIST_CODES = {"normal": ("LNRT-N", "Normal lymph node (short axis < 10 mm)"),
                "pathological": ("LNRT-P", "Pathological lymph node (short axis 10 to < 15 mm)"),
                "enlarged": ("LNRT-E", "Enlarged lymph node (short axis >= 15 mm)")}


@dataclass(frozen=True)
class Equipment:
    manufacturer: str = "lnrt"
    model_name: str = "lnrt"
    serial_number: str = "0"
    institution: str | None = None


def _hd():
    hd = require("highdicom", "clinical")
    pydicom = require("pydicom", "clinical")
    return hd, pydicom, require("pydicom.sr.codedict", "clinical", "pydicom").codes


def _source_datasets(files: list, source: str) -> list:
    if not files:
        raise LnrtError(f"{source}: DICOM SEG and SR need a DICOM series as input; expected a DICOM folder")
    _, pydicom, _ = _hd()
    return [pydicom.dcmread(f) for f in files]


def _fix_spacing_sign(ds) -> None:
    """Some scanners write a negative SpacingBetweenSlices (not permitted by DICOM); highdicom carries
    the sign of the source slice order into the SEG, so the written value is made its magnitude."""
    for el in ds.iterall():
        if el.keyword == "SpacingBetweenSlices" and el.value is not None and float(el.value) < 0:
            el.value = abs(float(el.value))


def build_seg(sources: list, labels: np.ndarray, nodes: list, model: dict, equipment: Equipment,
              per: str = "node", classes: list | None = None):
    """The SEG dataset and {node id: (segment number, tracking uid)}."""
    hd, _, codes = _hd()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"lnrt/{model.get('name', 'model')}", family=codes.cid7162.ArtificialIntelligence,
        version=f"lnrt {__version__}; model {model.get('version', '?')} {model.get('variant', '')}".strip())
    category, node_type = codes.cid7150.AnatomicalStructure, codes.SCT.LymphNode
    segments, mapping = [], {}
    if per == "node":
        values = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint16)
        for number, n in enumerate(sorted(nodes, key=lambda n: n["id"]), start=1):
            uid = hd.UID()
            mapping[n["id"]] = (number, uid)
            values[n["id"]] = number
            segments.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=f"node {n['id']}", segmented_property_category=category,
                segmented_property_type=node_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm, tracking_uid=uid, tracking_id=f"node {n['id']}"))
        pixels = values[labels]
    elif per == "class":
        names = classes or ["background", "lymph_node"]
        present = sorted({n["class"] for n in nodes}, key=names.index)
        number_of = {c: i for i, c in enumerate(present, start=1)}
        values = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint16)
        for n in nodes:
            values[n["id"]] = number_of[n["class"]]
            mapping[n["id"]] = (number_of[n["class"]], None)
        for c, number in number_of.items():
            segments.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=c, segmented_property_category=category,
                segmented_property_type=node_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=c))
        pixels = values[labels]
    else:
        raise LnrtError(f"unknown SEG layout {per!r}; expected 'node' or 'class'")
    if not segments:
        return None, {}
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=equipment.manufacturer,
        manufacturer_model_name=equipment.model_name, software_versions=f"lnrt {__version__}",
        device_serial_number=equipment.serial_number, series_description="lnrt lymph nodes",
        content_description="Lymph nodes segmented by lnrt", content_creator_name="lnrt^automatic",
        omit_empty_frames=True)
    if equipment.institution:
        seg.InstitutionName = equipment.institution
    _fix_spacing_sign(seg)
    return seg, mapping


def build_sr(sources: list, seg, mapping: dict, nodes: list, equipment: Equipment):
    hd, pydicom, codes = _hd()
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="lnrt", manufacturer_name=equipment.manufacturer, model_name=equipment.model_name,
            serial_number=equipment.serial_number))
    concept = hd.sr.CodedConcept(RECIST_CONCEPT[0], RECIST_SCHEME, RECIST_CONCEPT[1])
    source_series = hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)
    groups = []
    for n in sorted(nodes, key=lambda n: n["id"]):
        number, uid = mapping[n["id"]]
        code, meaning = RECIST_CODES[n["recist"]]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid or hd.UID(), identifier=f"node {n['id']}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=source_series),
            finding_type=codes.SCT.LymphNode,
            measurements=[
                hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(n["long_axis_mm"]), unit=codes.UCUM.Millimeter),
                hd.sr.Measurement(name=codes.SCT.ShortAxis, value=float(n["short_axis_mm"]), unit=codes.UCUM.Millimeter),
                hd.sr.Measurement(name=codes.SCT.Volume, value=float(n["volume_mm3"]), unit=codes.UCUM.CubicMillimeter),
            ],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=concept, value=hd.sr.CodedConcept(code, RECIST_SCHEME, meaning))]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources], content=report, series_instance_uid=hd.UID(), series_number=902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=equipment.manufacturer,
        institution_name=equipment.institution, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = "lnrt lymph node measurements"
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = RECIST_SCHEME
    scheme.CodingSchemeName = "lnrt local codes (RECIST 1.1 lymph node categories)"
    scheme.CodingSchemeResponsibleOrganization = "lnrt"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def check_sources(files: list, source: str) -> None:
    """A SEG references its source instances by UID: refuse series anonymised without them."""
    if not files:
        raise LnrtError(f"{source}: DICOM SEG and SR need a DICOM series as input; expected a DICOM folder")
    _, pydicom, _ = _hd()
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    missing = [k for k in REQUIRED_UIDS if not str(first.get(k, "") or "").strip()]
    if missing:
        raise LnrtError(f"{source}: the series has no {', '.join(missing)} (anonymised without UIDs), "
                        "which a DICOM SEG must reference; expected a series with UIDs (or --no-dicom-seg)")


def build_dicom(files: list, source: str, labels: np.ndarray, nodes: list, model: dict, sr: bool,
                per: str = "node", classes: list | None = None, equipment: Equipment = Equipment()) -> dict:
    """{"dicom_seg": dataset, "dicom_sr": dataset} in memory (empty when there are no nodes)."""
    if sr and per != "node":
        raise LnrtError("a DICOM SR needs one SEG segment per node; use --seg-segments node with --dicom-sr")
    check_sources(files, source)
    if not nodes:
        return {}  # nothing to encode: a SEG needs at least one segment
    sources = _source_datasets(files, source)
    seg_ds, mapping = build_seg(sources, labels, nodes, model, equipment, per, classes)
    out = {"dicom_seg": seg_ds}
    if sr:
        out["dicom_sr"] = build_sr(sources, seg_ds, mapping, nodes, equipment)
    return out


def dicom_outputs(datasets: dict) -> dict:
    """The SEG and SR datasets as outputs of a save (`lnrt.outputs.Output`)."""
    from .outputs import Output

    return {key: Output(lambda p, ds=ds: ds.save_as(str(p), enforce_file_format=True))
            for key, ds in datasets.items()}
