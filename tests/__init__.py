"""intentd's tests, and the harness (tests/daemon_proc.py) and test doubles the benchmarks import from here.

A regular package, so `from tests.daemon_proc import ...` finds this folder from the repository root (pytest,
`python -m bench.daemon_load`) even where some installed distribution ships a top-level `tests` package.
"""
