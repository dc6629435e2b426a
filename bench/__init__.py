"""podq's benchmark suite: `python -m bench --size small|full` prints side-by-side ratios (see BENCHMARKS.md).

Every ratio is taken in one run on one machine, so the machine cancels out; absolute figures are printed
for context only. Benchmarks inform design and never gate CI (`--size smoke` keeps the code alive).
"""
