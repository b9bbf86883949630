"""Test utilities: models jhnas did not write (:mod:`jhnas.testing.zoo`) and float64 oracles,
shared by the test suite and ``bench/``."""
