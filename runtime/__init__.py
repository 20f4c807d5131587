"""lnrt, the lymph-node runtime: find and measure lymph nodes in head-and-neck CT.

The lean core: importing it never imports torch. See `Session` and `measure`.
"""
from ._version import __version__
from .batch import BatchSummary, batch
from .errors import LnrtError
from .imageio import ScanHeader, probe_scan, read_scan
from .package import ModelPackage
from .session import Result, Session, measure
from .volume import Orientation, Volume


def sample_path():
    """Path of the bundled sample scan (a synthetic neck phantom)."""
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files("lnrt") / "data" / "sample_neck_phantom.nii.gz"))


__all__ = ["BatchSummary", "LnrtError", "ModelPackage", "Orientation", "Result", "ScanHeader", "Session", "Volume", "measure",
           "probe_scan", "read_scan", "sample_path", "batch", "__version__"]
