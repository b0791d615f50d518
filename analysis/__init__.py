"""Statistics, plots and paper tables computed from a run's stored result tables.

Nothing here loads a model or calls an API, and nothing imports torch, so
``study analyze`` and ``study paper`` start fast and run anywhere.
"""
