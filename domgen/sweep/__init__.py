"""Sweeps: planning runs and their dependencies (plan), launching them (launch), what each run is doing
(status) and the tables the CLI prints about a sweep (report). Results are read back by
:mod:`domgen.results`.

Submodules are imported explicitly (``from domgen.sweep.plan import plan_sweep``) so that importing one
piece never pulls in pandas or submitit for another.
"""
