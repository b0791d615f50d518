"""Mechanism probes from follow-up work on subliminal learning.

- ``entangled``: numbers whose probability a trait system prompt raises, and
  whether a system prompt that only loves such a number raises the trait
  (Zur et al. 2025, "It's Owl in the Numbers: Token Entanglement in
  Subliminal Learning").
- ``divergence``: completion positions where a trait teacher and a control
  teacher would pick different greedy tokens, and a loss mask that drops
  them (Schrodi et al. 2025, "Towards Understanding Subliminal Learning:
  When and How Hidden Biases Transfer").
"""
