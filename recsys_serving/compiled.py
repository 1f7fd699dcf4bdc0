"""The numba decorator every request-path kernel uses (:mod:`.search`, :mod:`.confidence`).

Reassociation lets LLVM vectorise sums (dot products, the Cholesky updates): results differ from
BLAS's and LAPACK's in the last bits only, as those sum in their own orders. NaN and infinity keep
their IEEE meaning. The GIL stays held: a kernel runs for microseconds, and releasing it would
hand the request-log thread the interpreter in the middle of a request. Compiled code is cached
beside the source (or in ``NUMBA_CACHE_DIR``); :func:`.engine.compile_kernels` fills the cache.
"""

from numba import njit

compiled = njit(cache=True, fastmath={"reassoc", "contract", "nsz"})
# Small helpers of a kernel's inner loop, inlined in numba's own IR: LLVM left them as calls, and
# a call per candidate item made a short scan a third slower (benchmarks/cold_start_steps.py).
inlined = njit(cache=True, inline="always", fastmath={"reassoc", "contract", "nsz"})
