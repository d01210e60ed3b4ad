"""Benchmarks (BENCHMARKS.md's protocol): the token mixer alone (``op``) and whole DiG / DiT training
steps and sampling passes (``model``). Every number is written with the card and library versions."""
