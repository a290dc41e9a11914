"""The benchmarked apps: one module per stack, the variant chosen by ``BENCH_VARIANT``."""
