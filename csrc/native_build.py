"""cffi build script for ``nslib._native`` (out-of-line API mode).

Lives beside the C, outside the package, so it never ships in the wheel.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "nslib.h").read_text())
ffibuilder.set_source(
    "nslib._native",
    (HERE / "nslib.c").read_text() + '\n#include "spawn.h"\n',
    # Spawning into several namespaces, its own unit.  Relative: setuptools
    # refuses absolute source paths.
    sources=[os.path.relpath(HERE / "spawn.c")],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
