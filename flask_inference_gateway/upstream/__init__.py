"""Upstream I/O: the only package that imports requests; one pooled session per process."""
