"""Test support shipped with the package: what tests and benchmarks share, never the product."""
