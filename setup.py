"""Build hook for the optional C kernel (metadata lives in pyproject.toml).

`bufinspect._kernel` is compiled when a C compiler is present; `optional=True` lets the install
succeed without one, and bufinspect then runs its numpy path (same results, slower).
"""

import sys

from setuptools import Extension, setup

# -ffp-contract=off: no FMA, so `rtol * |b| + atol` rounds as numpy's does (see _kernel.c);
# -fopenmp-simd: vectorise the `omp simd` reductions without OpenMP's runtime or -ffast-math.
args = [] if sys.platform == "win32" else ["-O3", "-g0", "-ffp-contract=off", "-fopenmp-simd"]

setup(ext_modules=[Extension("bufinspect._kernel", ["bufinspect/_kernel.c"],
                             extra_compile_args=args, optional=True)])
