"""``implicit_it.probes``: response-ranking likelihood pairs and linear probes, layer by layer.

Activations are read through :mod:`implicit_it.hooking` (TransformerLens bridge or nnsight),
which wrap the same loaded weights as the HF model.
"""
