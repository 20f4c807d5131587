"""lnrt: the lymph-node runtime.

The top-level folders of the repository become one namespace when installed (docs/ARCHITECTURE.md, "Layout"):
runtime/ -> lnrt, export/ -> lnrt.export, kernels/ -> lnrt.kernels, models/ -> lnrt.models.
"""
from setuptools import setup

setup(
    name="lnrt",
    version="0.1.0",
    description="Lymph-node runtime: segment and measure lymph nodes in head-and-neck CT",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["lnrt", "lnrt.backends", "lnrt.export", "lnrt.kernels", "lnrt.models"],
    package_dir={
        "lnrt": "runtime",
        "lnrt.backends": "runtime/backends",
        "lnrt.export": "export",
        "lnrt.kernels": "kernels",
        "lnrt.models": "models",
    },
    package_data={
        "lnrt": ["data/*.nii.gz"],
        "lnrt.models": ["default/*.onnx", "default/*.json", "default/*.md", "default/*.sha256"],
        "lnrt.kernels": ["*.cu"],
    },
    include_package_data=True,
    # The CPU runtime: nothing else is imported by `import lnrt` or `lnrt infer`.
    install_requires=[
        "numpy>=1.24",
        "SimpleITK>=2.2",
        "onnxruntime>=1.17",
        "connected-components-3d>=3.12",
        "click>=8.1",
        # ISA-L's gzip: decompresses a .nii.gz about 2x faster than zlib (0.43 vs 0.83 s for the 512 x 512
        # x 250 benchmark scan); lnrt falls back to Python's gzip where it is not installed
        "isal>=1.6",
        # DICOM folders: every slice's header is read and the series' geometry checked before any pixel is decoded
        "pydicom>=2.4",
    ],
    extras_require={
        # onnxruntime 1.32: INT8 export hands its quantizer lnrt's streamed ranges as a calibration cache
        "export": ["onnx>=1.15", "torch>=2.1", "onnxslim>=0.1.30", "safetensors>=0.4", "onnxruntime>=1.32"],
        "train": ["onnx>=1.15", "torch>=2.1"],
        # one CUDA major in one process: onnxruntime-gpu 1.27 and later link CUDA 13 (libcudart.so.13), so
        # CuPy is the CUDA 13 build. TensorRT's libraries are not on PyPI (see the README's Installing).
        "gpu": ["cupy-cuda13x>=13.6", "onnxruntime-gpu>=1.27"],
        "openvino": ["openvino>=2024.0"],
        # lnrt batch --engine ray: Ray actors, on this machine or a cluster
        "ray": ["ray>=2.9"],
        # lnrt serve: the DICOM node (pynetdicom), its SEG and SR (highdicom); TOML through tomllib (3.11+)
        "serve": ["pynetdicom>=2.0", "highdicom>=0.22", "pydicom>=2.4", "Pillow>=9.2", "tomli>=2; python_version<'3.11'"],
        "qc": ["Pillow>=9.2"],
        "clinical": ["highdicom>=0.22", "pydicom>=2.4", "Pillow>=9.2"],
        # torch pinned to the release this project's machines carry locally (a range would fetch the
        # newest CUDA build, several GB); any torch >= 2.1 works for the tests
        "dev": ["pytest>=7", "onnx>=1.15", "openvino>=2024.0", "torch==2.13.0", "onnxslim>=0.1.30", "safetensors>=0.4",
                "highdicom>=0.22", "pydicom>=2.4", "Pillow>=9.2", "ray>=2.9",
                "pynetdicom>=2.0", "tomli>=2; python_version<'3.11'"],
        # the peers lnrt is checked and benchmarked against (nnU-Net's own predictor, MONAI)
        "peers": ["nnunetv2>=2.5", "monai>=1.3"],
    },
    entry_points={"console_scripts": ["lnrt=lnrt.cli:entry"]},
)
