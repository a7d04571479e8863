"""Analyses of trained models (imports torch): representation similarity (``domgen.analysis.similarity``).

Submodules are imported explicitly, so importing the package costs nothing."""
