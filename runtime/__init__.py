"""lnrt, the lymph-node runtime: find and measure lymph nodes in head-and-neck CT.

The lean core: importing it never imports torch. See `Session` and `measure`.
"""
__version__ = "0.1.0"

from .errors import LnrtError  # noqa: E402
from .imageio import read_scan  # noqa: E402
from .package import ModelPackage  # noqa: E402
from .session import Result, Session, measure  # noqa: E402
from .volume import Orientation, Volume  # noqa: E402


def sample_path():
    """Path of the bundled sample scan (a synthetic neck phantom)."""
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files("lnrt") / "data" / "sample_neck_phantom.nii.gz"))


__all__ = ["LnrtError", "ModelPackage", "Orientation", "Result", "Session", "Volume", "measure",
           "read_scan", "sample_path", "__version__"]
