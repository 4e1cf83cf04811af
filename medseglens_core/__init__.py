"""Med-SegLens core: the science library (I/O, data, models, SAEs, analysis, interventions).

Importable without FastAPI or Redis. Takes arrays, tensors and paths; returns typed results.
"""

__version__ = "0.1.0"
