"""Diagnostics: one question about one run or one mechanism, printed or written to benchmarks/."""
