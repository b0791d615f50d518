"""Ablation suites: a grid of small experiments run in one shared run directory.

A suite YAML contains a ``base`` experiment and ``factors`` with levels. The
planner expands the grid into cells, each cell becomes one ExperimentConfig,
and every cell runs through ``study.pipeline.Runner`` on the same RunStore,
so stages with equal content hashes (teacher adapters, generations, filters,
students) run once for the whole suite.
"""
