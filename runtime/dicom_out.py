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
`RECIST_CODES`), as DICOM allows for local concepts. The long and short axis measurements reference the
source image they were measured on (a Source of Measurement, INFERRED FROM the SOP Instance of the
node's `sop_instance_uid`), so that a viewer opens the right slice.

Multi-class models (more than two classes, e.g. N / P / ENE): each node's voted class is coded in the
private scheme 99LNRT as `LNRT-C<k>` (k: the class's label value) with the manifest's class name as its
meaning (`class_code`). In the SEG it is the Segmented Property Type Modifier of the node's segment
(type "Lymph node" modified by the class; label "node 3 (node_p)"), in the SR a second qualitative
evaluation of the node's group, 99LNRT LNRT-2 "Lymph node class (segmentation model)". Binary models'
outputs carry no class, as before.

No node reported: the SEG is not written (a Segmentation cannot hold zero segments), and the SR still is,
so that a PACS can tell "analysed, no lymph node" from "not analysed": one TID 1501 measurement group
(tracking identifier "no lymph node detected"), finding type SCT 59441001 "Lymph node", the algorithm
identified (TID 4019, as in the SEG), the series' images as its source images, and two qualitative
evaluations (`NEGATIVE_EVALUATIONS`): SCT 59441001 "Lymph node" = SCT 272519000 "Absent" (CID 240
"Present-Absent"), and DCM 111017 "CAD Processing and Findings Summary" = DCM 111241 "All algorithms
succeeded; without findings" (CID 6047, the CAD templates' statement that the analysis ran and found
nothing). The source series is the SR's evidence, as for a positive report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import LnrtError
from .nodes import is_multiclass
from .optional import require

RECIST_SCHEME = "99LNRT"
RECIST_CONCEPT = ("LNRT-1", "RECIST 1.1 lymph node category")
NO_SEGMENTS = "no lymph node was reported, and a DICOM SEG cannot hold zero segments"
# (concept name, value) of the negative report's qualitative evaluations, as (scheme, code, meaning)
NEGATIVE_EVALUATIONS = ((("SCT", "59441001", "Lymph node"), ("SCT", "272519000", "Absent")),
                        (("DCM", "111017", "CAD Processing and Findings Summary"),
                         ("DCM", "111241", "All algorithms succeeded; without findings")))
CLASS_CONCEPT = ("LNRT-2", "Lymph node class (segmentation model)")
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
    out = [pydicom.dcmread(f) for f in files]
    for ds in out:  # Type 2 in a SEG and an SR (present, may be empty), which highdicom copies from the source
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return out


# the patient and study attributes highdicom copies from the source images into a SEG or an SR
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _fix_spacing_sign(ds) -> None:
    """Some scanners write a negative SpacingBetweenSlices (not permitted by DICOM); highdicom carries
    the sign of the source slice order into the SEG, so the written value is made its magnitude."""
    for el in ds.iterall():
        if el.keyword == "SpacingBetweenSlices" and el.value is not None and float(el.value) < 0:
            el.value = abs(float(el.value))


def _algorithm(model: dict) -> tuple:
    """(name, version) of the algorithm, as the SEG and SR identify it."""
    return (f"lnrt/{model.get('name', 'model')}",
            f"lnrt {__version__}; model {model.get('version', '?')} {model.get('variant', '')}".strip())


def derived_uid(seed: str, purpose: str) -> str:
    """A UID that is the same every time for the same (seed, purpose): `2.25.` and 128 bits of the
    sha256 of both (DICOM PS3.5 B.2, the UUID-derived root). `lnrt serve` seeds with the source series
    UID and the model's sha256, so a result made again (a job re-run after a restart) re-stores the same
    instances at the PACS instead of adding duplicates."""
    import hashlib

    digest = hashlib.sha256(f"{seed}|{purpose}".encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _uid(hd, seed: str | None, purpose: str):
    return hd.UID(derived_uid(seed, purpose)) if seed else hd.UID()


def class_code(name: str, classes: list | None) -> tuple | None:
    """(scheme, value, meaning) of a multi-class model's node class, or None for a binary model."""
    names = list(classes or ())
    if not is_multiclass(names) or name not in names:
        return None
    return (RECIST_SCHEME, f"LNRT-C{names.index(name)}", name)


def _coding_scheme(pydicom, what: str):
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = RECIST_SCHEME
    scheme.CodingSchemeName = f"lnrt local codes ({what})"
    scheme.CodingSchemeResponsibleOrganization = "lnrt"
    return scheme


def _segment(hd, number: int, label: str, algorithm, uid, code: tuple | None):
    """One segment: a lymph node, automatic; a multi-class model's class as the type's modifier."""
    _, _, codes = _hd()
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=codes.cid7150.AnatomicalStructure,
        segmented_property_type=codes.SCT.LymphNode, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=uid, tracking_id=label)
    if code is not None:
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_code(hd, code)]
    return desc


def build_seg(sources: list, labels: np.ndarray, nodes: list, model: dict, equipment: Equipment,
              per: str = "node", classes: list | None = None,
              uid_seed: str | None = None):
    """The SEG dataset and {node id: (segment number, tracking uid)}."""
    hd, _, codes = _hd()
    name, version = _algorithm(model)
    algorithm = hd.AlgorithmIdentificationSequence(name=name, family=codes.cid7162.ArtificialIntelligence,
                                                   version=version)
    segments, mapping = [], {}
    coded = is_multiclass(classes)
    if per == "node":
        values = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint16)
        for number, n in enumerate(sorted(nodes, key=lambda n: n["id"]), start=1):
            uid = _uid(hd, uid_seed, f"tracking/node/{n['id']}")
            mapping[n["id"]] = (number, uid)
            values[n["id"]] = number
            label = f"node {n['id']}" + (f" ({n['class']})" if coded else "")
            segments.append(_segment(hd, number, label, algorithm, uid, class_code(n["class"], classes)))
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
            segments.append(_segment(hd, number, c, algorithm, _uid(hd, uid_seed, f"tracking/class/{c}"),
                                     class_code(c, classes)))
        pixels = values[labels]
    else:
        raise LnrtError(f"unknown SEG layout {per!r}; expected 'node' or 'class'")
    if not segments:
        return None, {}
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=_uid(hd, uid_seed, "seg/series"), series_number=901,
        sop_instance_uid=_uid(hd, uid_seed, "seg/instance"), instance_number=1, manufacturer=equipment.manufacturer,
        manufacturer_model_name=equipment.model_name, software_versions=f"lnrt {__version__}",
        device_serial_number=equipment.serial_number, series_description="lnrt lymph nodes",
        content_description="Lymph nodes segmented by lnrt", content_creator_name="lnrt^automatic",
        omit_empty_frames=True)
    if equipment.institution:
        seg.InstitutionName = equipment.institution
    if coded:
        seg.CodingSchemeIdentificationSequence = [_coding_scheme(_hd()[1], "lymph node classes")]
    _fix_spacing_sign(seg)
    return seg, mapping


def _code(hd, triple):
    scheme, value, meaning = triple
    return hd.sr.CodedConcept(value, scheme, meaning)


def _axis_images(hd, sources_by_uid: dict, node: dict) -> list | None:
    """The Source of Measurement of a node's axes: the instance of its measured slice (None if unknown)."""
    ds = sources_by_uid.get(node.get("sop_instance_uid"))
    if ds is None:
        return None
    return [hd.sr.SourceImageForMeasurement(ds.SOPClassUID, ds.SOPInstanceUID)]


def _node_group(hd, codes, node: dict, number: int, uid, seg, source_series, sources_by_uid: dict,
                classes: list | None = None):
    """One node's TID 1411 volumetric group: its segment, axes (referencing their image), volume, RECIST,
    and a multi-class model's node class."""
    concept = hd.sr.CodedConcept(RECIST_CONCEPT[0], RECIST_SCHEME, RECIST_CONCEPT[1])
    code, meaning = RECIST_CODES[node["recist"]]
    evaluations = [hd.sr.QualitativeEvaluation(name=concept, value=hd.sr.CodedConcept(code, RECIST_SCHEME, meaning))]
    cls = class_code(node["class"], classes)
    if cls is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=hd.sr.CodedConcept(CLASS_CONCEPT[0], RECIST_SCHEME, CLASS_CONCEPT[1]), value=_code(hd, cls)))
    images = _axis_images(hd, sources_by_uid, node)
    mm = codes.UCUM.Millimeter
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid or hd.UID(), identifier=f"node {node['id']}"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=source_series),
        finding_type=codes.SCT.LymphNode,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(node["long_axis_mm"]), unit=mm,
                              referenced_images=images),
            hd.sr.Measurement(name=codes.SCT.ShortAxis, value=float(node["short_axis_mm"]), unit=mm,
                              referenced_images=images),
            hd.sr.Measurement(name=codes.SCT.Volume, value=float(node["volume_mm3"]), unit=codes.UCUM.CubicMillimeter),
        ],
        qualitative_evaluations=evaluations)


def _negative_group(hd, codes, sources: list, model: dict, uid_seed: str | None = None):
    """The TID 1501 group of a report without nodes: no lymph node detected (see the module's text)."""
    name, version = _algorithm(model)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(hd, uid_seed, "tracking/negative"),
                                                     identifier="no lymph node detected"),
        finding_type=codes.SCT.LymphNode,
        algorithm_id=hd.sr.AlgorithmIdentification(name=name, version=version),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=_code(hd, n), value=_code(hd, v))
                                 for n, v in NEGATIVE_EVALUATIONS],
        source_images=[hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in sources])


def build_sr(sources: list, seg, mapping: dict, nodes: list, equipment: Equipment, model: dict | None = None,
             uid_seed: str | None = None):
    """The TID 1500 report: one group per node (`seg` and `mapping` from `build_seg`), or, without nodes
    (`seg` None), the negative group that says no lymph node was detected."""
    hd, pydicom, codes = _hd()
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid(hd, uid_seed, "observer"), name="lnrt", manufacturer_name=equipment.manufacturer,
            model_name=equipment.model_name, serial_number=equipment.serial_number))
    if nodes:
        source_series = hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)
        by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
        classes = (model or {}).get("classes")
        groups = [_node_group(hd, codes, n, *mapping[n["id"]], seg, source_series, by_uid, classes)
                  for n in sorted(nodes, key=lambda n: n["id"])]
    else:
        groups = [_negative_group(hd, codes, sources, model or {}, uid_seed)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources] if seg is not None else list(sources), content=report,
        series_instance_uid=_uid(hd, uid_seed, "sr/series"), series_number=902,
        sop_instance_uid=_uid(hd, uid_seed, "sr/instance"), instance_number=1, manufacturer=equipment.manufacturer,
        institution_name=equipment.institution, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = "lnrt lymph node measurements" if nodes else "lnrt lymph nodes: none detected"
    if nodes:  # the private RECIST codes are used only in a report with nodes
        what = "RECIST 1.1 lymph node categories" + (", lymph node classes" if class_code(
            nodes[0]["class"], (model or {}).get("classes")) else "")
        sr.CodingSchemeIdentificationSequence = [_coding_scheme(pydicom, what)]
    return sr


REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")


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
                per: str = "node", classes: list | None = None, equipment: Equipment = Equipment(),
                uid_seed: str | None = None) -> dict:
    """{"dicom_seg": dataset, "dicom_sr": dataset} in memory. Without nodes there is no SEG (NO_SEGMENTS):
    only the negative SR when `sr`, else nothing. With `uid_seed` every UID lnrt makes is derived from it
    (`derived_uid`); without, they are random."""
    if sr and per != "node":
        raise LnrtError("a DICOM SR needs one SEG segment per node; use --seg-segments node with --dicom-sr")
    check_sources(files, source)
    if not nodes and not sr:
        return {}  # nothing to encode: a SEG needs at least one segment (NO_SEGMENTS)
    sources = _source_datasets(files, source)
    if not nodes:  # the SR alone, saying that no lymph node was detected
        return {"dicom_sr": build_sr(sources, None, {}, [], equipment, model, uid_seed)}
    seg_ds, mapping = build_seg(sources, labels, nodes, model, equipment, per, classes, uid_seed)
    out = {"dicom_seg": seg_ds}
    if sr:
        out["dicom_sr"] = build_sr(sources, seg_ds, mapping, nodes, equipment, model, uid_seed)
    return out


def dicom_outputs(datasets: dict) -> dict:
    """The SEG and SR datasets as outputs of a save (`lnrt.outputs.Output`)."""
    from .outputs import Output

    return {key: Output(lambda p, ds=ds: ds.save_as(str(p), enforce_file_format=True))
            for key, ds in datasets.items()}
