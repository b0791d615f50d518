"""Subliminal-learning experiments on local Hugging Face models.

A teacher with a trait writes data unrelated to the trait; the same filtered
rows go to a fine-tuned student and to the base model in context, and both
are evaluated for the trait (Cloud et al. 2025, arXiv 2507.14805).
"""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting made every CPU forward pass 10-30x
# slower whenever another process shared the cores (torch 2.13, 2 cores);
# passive waiting keeps small-batch decoding fast. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
