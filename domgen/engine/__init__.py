"""Training and evaluation engine: train step/epoch, evaluation, metrics, checkpoints, logging.

Submodules are imported explicitly (``from domgen.engine.metrics import evaluate_domains``) so that
importing one piece never pulls in torch or matplotlib for another.
"""
