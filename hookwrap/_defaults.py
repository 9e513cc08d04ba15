"""The defaults of a parity check, defined once (no imports, so that the command line's
help can name them without loading numpy). :mod:`hookwrap.compare` is their public home."""

DEFAULT_ATOL = 1e-4  # the element-wise rule |onnx - ref| <= atol + rtol * |ref|
DEFAULT_RTOL = 1e-3
DEFAULT_ALPHA = 0.002  # the family-wise false-alarm bound of a whole statistical check
DEFAULT_SAMPLES = 256  # draws per side and input set (benchmarks/bench_power.py measures what they see)
MAX_SAMPLES = 6000  # k + anchor draws of one input set stay below the 10007 seeds between sets
