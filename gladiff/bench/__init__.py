"""Benchmarks (docs/benchmark_protocol.md): the token mixer alone (``op``) and whole DiG / DiT training
steps and sampling passes (``model``). Every number is written with the card and library versions."""
