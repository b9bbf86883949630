"""The experiments layer: what the command line and ``bench/`` share, built on the core.

* :mod:`jhnas.experiments.problems`: search problems from benchmarks and trainings (the tabular
  NB201 problem, training signals and their presets, a DARTS pool) and ``jhnas theory``'s networks.
* :mod:`jhnas.experiments.runners`: the method registry and search runs over seeds, summarised
  with their protocol.
* :mod:`jhnas.experiments.score`: NB201 architectures scored resumably into a results file, on one
  or several devices.
* :mod:`jhnas.experiments.results`: results files that record their protocol, shared by several
  processes, written atomically.
* :mod:`jhnas.experiments.correlation`: rank agreement of metrics with benchmark accuracies.

Nothing in :mod:`jhnas`'s core imports this package.
"""
