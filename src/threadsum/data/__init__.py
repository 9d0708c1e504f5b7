"""Data pipeline: readers -> clean -> render -> split -> tokenize (cached) -> report."""
