"""Benchmarks (not part of the installed package): ``python -m bench [--quick]`` runs them all
(bench/run.py); ``python bench/forward_model.py`` is the forward-model benchmark alone."""
