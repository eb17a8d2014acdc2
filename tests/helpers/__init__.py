"""Helpers that tests share (benchmarks may import them; they import nothing from benchmarks)."""
