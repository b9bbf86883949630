"""Search spaces as Flax models: NAS-Bench-201 (:mod:`jhnas.spaces.nb201`) and the DARTS cell
space (:mod:`jhnas.spaces.darts`)."""
from jhnas.spaces import darts, nb201

__all__ = ["darts", "nb201"]
