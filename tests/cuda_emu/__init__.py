"""A NumPy-backed stand-in for the parts of CuPy that `lnrt.kernels.cuda` uses, whose `RawModule` compiles
the unchanged `.cu` sources with g++ against `cuda_emu.h` and runs their grids on the host (seeded random
block and thread orders, threads as fibers that switch at every atomic). A test tool: it lets every kernel
test run in CI, where there is no GPU, and it is never the product's path.

    from cuda_emu import emulated_cupy
    cp = emulated_cupy(seed=3, mode=1)      # 1: switch threads at every atomic; 2: also at plain loads and
                                            # stores; 0: run each thread to its end
    mod = cp.RawModule(code=source, options=("-std=c++14", "-DLNRT_INDEX=long long"))
    mod.get_function("init")((blocks,), (threads,), (mask, parent, np.int32(n)))

Each kernel's arguments are checked against its C signature before the launch: a pointer takes an array
whose dtype is the pointee's (or `np.uintp(0)`, a null pointer), a scalar takes a NumPy scalar of exactly
the parameter's type. Compiled modules are cached by the hash of source, options and this folder's header.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
CACHE = Path(os.environ.get("LNRT_EMU_CACHE", Path(tempfile.gettempdir()) / "lnrt-cuda-emu"))

# C types of kernel parameters -> NumPy dtypes (after LNRT_INDEX is substituted for idx_t)
C_TYPES = {"unsigned char": np.uint8, "char": np.int8, "int": np.int32, "unsigned int": np.uint32,
           "long long": np.int64, "unsigned long long": np.uint64, "float": np.float32, "double": np.float64}
CTYPES = {np.uint8: ctypes.c_uint8, np.int8: ctypes.c_int8, np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32,
          np.int64: ctypes.c_int64, np.uint64: ctypes.c_uint64, np.float32: ctypes.c_float,
          np.float64: ctypes.c_double}
FLAGS = "-fvisibility=hidden -ffp-contract=off -Wl,-Bsymbolic; -c then -shared"  # part of the cache key
KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


def available() -> tuple:
    """(usable, reason): the emulator needs g++."""
    if shutil.which("g++") is None:
        return False, "g++ is not installed"
    return True, "g++"


def _index_type(options) -> str:
    for o in options:
        if o.startswith("-DLNRT_INDEX="):
            return o.split("=", 1)[1].strip()
    return "int"


def parse_signatures(code: str, index_type: str) -> dict:
    """{kernel: [(C type, is_pointer, name)]} from the `extern "C" __global__` declarations."""
    out = {}
    for name, params in KERNEL.findall(code):
        args = []
        for p in params.split(","):
            p = " ".join(p.replace("*", " * ").split())
            pointer = "*" in p
            words = [w for w in p.replace("*", " ").split() if w != "const"]
            ctype = " ".join(words[:-1]).replace("idx_t", index_type)
            if ctype not in C_TYPES:
                raise TypeError(f"{name}: parameter {p!r} has a type the emulator does not know")
            args.append((ctype, pointer, words[-1]))
        out[name] = args
    return out


def _wrappers(signatures: dict) -> str:
    lines = []
    for name, args in signatures.items():
        call = ", ".join(f"*({c}{'*' if ptr else ''}*)a[{i}]" for i, (c, ptr, _) in enumerate(args))
        lines.append(f'extern "C" __attribute__((visibility("default"))) unsigned long long '
                     f'emu_launch_{name}(void** a, unsigned int g, unsigned int b, '
                     f'unsigned long long seed, int mode) {{ emu_switches = 0; '
                     f'emu_run_grid(g, b, seed, mode, [=]() {{ {name}({call}); }}); return emu_switches; }}')
    return "\n".join(lines) + "\n"


def asan_runtime() -> str | None:
    """The path of GCC's AddressSanitizer runtime (libasan.so), or None when g++ has none."""
    if shutil.which("g++") is None:
        return None
    path = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def asan_environment() -> dict:
    """The environment of a process that loads AddressSanitizer-built kernels (asan=True): Python itself is
    not built with it, so its runtime is preloaded; leak checks are off (Python keeps memory to the end)."""
    return {**os.environ, "LD_PRELOAD": asan_runtime() or "", "LNRT_EMU_ASAN": "1",
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86:halt_on_error=1"}


def compile_module(code: str, options=(), plain_hooks: bool = False, asan: bool = False) -> tuple:
    """(ctypes library, signatures) for a CUDA source, compiled once per (source, options, header, mode).
    `plain_hooks`: instrument every load and store (GCC's -fsanitize=thread hooks, served by the header).
    `asan`: build with AddressSanitizer, so a read or write outside an argument array stops the process
    with ASan's report (the process needs `asan_environment()`)."""
    if plain_hooks and asan:
        raise ValueError("the emulator's plain-access hooks and AddressSanitizer do not combine")
    options = tuple(o for o in options if o.startswith("-D")) + (("-DEMU_PLAIN_HOOKS",) if plain_hooks else ())
    options += ("-DEMU_ASAN",) if asan else ()
    signatures = parse_signatures(code, _index_type(options))
    text = code + "\n" + _wrappers(signatures)
    parts = [text, *options, HEADER.read_text(encoding="utf-8"), FLAGS]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    lib = CACHE / f"{key}.so"
    if not lib.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        src = CACHE / f"{key}.cpp"
        src.write_text(text, encoding="utf-8")
        tmp = CACHE / f".{key}.{os.getpid()}.so"
        # kernels keep their CUDA names (`compress`, `merge`...): hidden and bound inside the library, so a
        # process that already loaded zlib's `compress` does not send the kernel's calls there
        obj = CACHE / f".{key}.{os.getpid()}.o"
        instrument = ["-fsanitize=thread"] if plain_hooks else []
        linked = ["-fsanitize=address"] if asan else []
        instrument += ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
        # -ffp-contract=off: no fused multiply-adds, as NVRTC's --fmad=false (the kernels' arithmetic is NumPy's)
        steps = [["g++", "-std=c++17", "-O1", "-g", "-c", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off",
                  *instrument, "-include",
                  str(HEADER), *options, str(src), "-o", str(obj)],
                 # linked without the sanitizer: the header's hooks stand in for its runtime
                 ["g++", "-shared", "-Wl,-Bsymbolic", *linked, str(obj), "-o", str(tmp)]]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"emulated compile failed:\n{proc.stderr[-3000:]}")
        obj.unlink()
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib)), signatures


class Kernel:
    def __init__(self, lib, name: str, signature: list, schedule):
        self.name, self.signature, self.schedule = name, signature, schedule
        self.fn = getattr(lib, f"emu_launch_{name}")
        self.fn.restype = ctypes.c_ulonglong
        self.fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong,
                            ctypes.c_int]
        self.switches = 0

    def _arg(self, value, ctype: str, pointer: bool, pname: str):
        want = np.dtype(C_TYPES[ctype])
        if pointer:
            if isinstance(value, np.uintp) and int(value) == 0:
                return ctypes.c_void_p(0)
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{self.name}: argument {pname} ({ctype}*) needs an array, got {type(value).__name__}")
            if value.dtype != want or not value.flags.c_contiguous:
                raise TypeError(f"{self.name}: argument {pname} ({ctype}*) needs a contiguous {want} array, "
                                f"got {value.dtype}")
            return ctypes.c_void_p(value.ctypes.data)
        if not isinstance(value, np.generic) or value.dtype != want:
            raise TypeError(f"{self.name}: argument {pname} ({ctype}) needs a numpy {want} scalar, "
                            f"got {type(value).__name__} {getattr(value, 'dtype', '')}")
        return CTYPES[want.type](value.item())

    def __call__(self, grid, block, args):
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.signature)} parameters")
        if any(int(g) != 1 for g in tuple(grid)[1:]) or any(int(b) != 1 for b in tuple(block)[1:]):
            raise TypeError(f"{self.name}: the emulator runs 1D grids and blocks only")
        values = [self._arg(v, *sig) for v, sig in zip(args, self.signature)]
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        seed, mode = self.schedule()
        self.switches = self.fn(pointers, int(grid[0]), int(block[0]), seed, mode)


class RawModule:
    """cupy.RawModule's constructor and get_function, for the emulator."""

    def __init__(self, code: str, options=(), schedule=lambda: (0, 0), plain_hooks: bool = False,
                 asan: bool = False):
        self.lib, self.signatures = compile_module(code, options, plain_hooks, asan)
        self.schedule = schedule

    def get_function(self, name: str) -> Kernel:
        if name not in self.signatures:
            raise AttributeError(f"no kernel {name!r} in the module (has {', '.join(self.signatures)})")
        return Kernel(self.lib, name, self.signatures[name], self.schedule)


def emulated_cupy(seed: int = 0, mode: int = 1, asan: bool | None = None) -> types.ModuleType:
    """A module with the parts of CuPy's interface that lnrt's launchers use, on NumPy, whose RawModule
    runs kernels under the emulator with this schedule (each launch gets its own seed). `asan`: build the
    kernels with AddressSanitizer (default: when LNRT_EMU_ASAN=1, which `asan_environment()` sets)."""
    asan = os.environ.get("LNRT_EMU_ASAN") == "1" if asan is None else asan
    cp = types.ModuleType("cupy_emulated")
    launches = [0]

    def schedule():
        launches[0] += 1
        return seed * 1_000_003 + launches[0], mode

    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64",
                 "empty", "zeros", "full", "cumsum", "bincount", "ascontiguousarray", "ndarray"):
        setattr(cp, name, getattr(np, name))
    cp.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype)
    cp.asnumpy = lambda a: np.array(a, copy=True)
    cp.RawModule = lambda code, options=(): RawModule(code, options, schedule, plain_hooks=mode == 2 and not asan,
                                                      asan=asan)
    stream = types.SimpleNamespace(synchronize=lambda: None)
    cp.cuda = types.SimpleNamespace(get_current_stream=lambda: stream,
                                    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    cp.emulated = True
    cp.__getattr__ = lambda name: getattr(np, name)  # the rest of CuPy's interface is NumPy's (PEP 562)
    return cp


def emulated_device(seed: int = 0, mode: int = 1):
    """(device, module): a `lnrt.device.Device` of kind "cuda" whose arrays are NumPy's and whose
    `ndimage` is SciPy's, and the emulated CuPy to run its kernels with (`lnrt.kernels.cuda.use(module)`):
    the NumPy stand-in on which the device pipeline's code runs in CI, unchanged."""
    import scipy.ndimage

    from lnrt.device import Device

    cp = emulated_cupy(seed, mode)
    return Device("cuda:emulated", "cuda", cp, scipy.ndimage), cp
