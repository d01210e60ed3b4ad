"""gladiff's test suite. A regular package (not a namespace one), so that `tests.train`, `tests.processes`
resolve here even when an installed distribution ships a top-level `tests` package of its own
(torch-fidelity, a test-only dependency, does)."""
