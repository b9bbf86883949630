"""Search spaces as Flax models: NAS-Bench-201 (:mod:`jhnas.spaces.nb201`)."""
from jhnas.spaces import nb201

__all__ = ["nb201"]
