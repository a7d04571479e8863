"""Sweeps: planning and launching runs (plan, launch), and reading their results back (collect, tables,
compare).

Submodules are imported explicitly (``from domgen.sweep.tables import table2``) so that importing one
piece never pulls in pandas, scipy, matplotlib or submitit for another.
"""
