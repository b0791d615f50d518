"""Subliminal-learning experiments on local Hugging Face models.

A teacher with a trait writes data unrelated to the trait; the same filtered
rows go to a fine-tuned student and to the base model in context, and both
are evaluated for the trait (Cloud et al. 2025, arXiv 2507.14805).
"""

__version__ = "0.1.0"
