"""Build hook for the optional C extensions (metadata lives in pyproject.toml).

`bufinspect._kernel` (the fused data-pass kernel) and `bufinspect.formats._prescan_native` (the
pickle pre-scan) are compiled when a C compiler is present; `optional=True` lets the install
succeed without one, and bufinspect then runs its numpy path and its Python pre-scan (same
results, slower).
"""

import sys

from setuptools import Extension, setup

# -ffp-contract=off: no FMA, so `rtol * |b| + atol` rounds as numpy's does (see _kernel.c);
# -fopenmp-simd: vectorise the `omp simd` reductions without OpenMP's runtime or -ffast-math.
args = [] if sys.platform == "win32" else ["-O3", "-g0", "-ffp-contract=off", "-fopenmp-simd"]
scan_args = [] if sys.platform == "win32" else ["-O2", "-g0"]

setup(ext_modules=[Extension("bufinspect._kernel", ["bufinspect/_kernel.c"],
                             extra_compile_args=args, optional=True),
                   Extension("bufinspect.formats._prescan_native",
                             ["bufinspect/formats/_prescan_native.c"],
                             extra_compile_args=scan_args, optional=True)])
