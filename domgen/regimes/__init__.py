"""Fine-tuning regimes by name: ``REGIMES.get("lp_ft")``; ``--set regime.name=lp_ft --set regime.lp_epochs=5``.

How a pretrained model is adapted, for every algorithm (``domgen.regimes.base`` says what a regime may
decide). Davila, Colan & Hasegawa (arXiv 2406.10050) compare eight strategies on medical images; their
abstract names full fine-tuning, classifier-only training (LP), gradual unfreezing, regularisation-based
fine-tuning (L2-SP), adaptive learning rates (Auto-RGN) and LP-FT, and the issue (#14) lists Auto-SNR
and TPGM as the rest (the paper's full text was not at hand to check the list). The regimes here, with
the paper each comes from (each class's ``reference``):

========================  ===============================================================================
``ft`` (default)          full fine-tuning, one rate (today's behaviour, bit for bit)
``lp``                    linear probing: backbone and its BatchNorm statistics frozen (Kumar et al. 2022)
``lp_ft``                 LP then FT from the probe's head (Kumar et al., ICLR 2022)
``gradual_unfreeze``      head first, then one block at a time, discriminative rates (Howard & Ruder 2018)
``llrd``                  layer-wise learning-rate decay (Howard & Ruder 2018; Bao et al. 2022)
``l2sp``                  penalty towards the pretrained weights (Li, Grandvalet & Davoine, ICML 2018)
``auto_rgn``              per-layer rates from relative gradient norms (Lee et al., ICLR 2023)
``auto_snr``              per-layer rates from gradient signal-to-noise (Lee et al., ICLR 2023)
``tpgm``                  backbone projected onto learned balls around w0 (Tian et al., CVPR 2023)
``bitfit``                biases and head only (Ben Zaken et al., ACL 2022)
``lora``                  low-rank adapters on timm ViTs through peft (Hu et al., ICLR 2022)
========================  ===============================================================================

A warm-started study row's parent (e.g. yoon2019's A for F-T) trains with its own row's regime (``ft``
unless that row sets another), never the child's: the parent is the shared warm start and the regime is
the child's axis, so the children of one parent compare regimes from the same starting weights.
"""

from __future__ import annotations

from domgen.regimes.base import REGIMES, Regime, make_regime, split_groups
from domgen.regimes.blocks import Block, model_blocks

# Imported after REGIMES exists: each module registers its regimes on import, in the order `list` shows them.
from domgen.regimes import freezing, rates, penalties, tpgm, lora  # noqa: E402,F401,I001


def describe_regimes() -> str:
    """One line per registered regime: name, the first line of its docstring, its paper."""
    lines = []
    for name in REGIMES.names():
        cls = REGIMES.get(name)
        lines.append(f"{name:<17} {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines.append(f"{'':<17} {cls.reference}")
    return "\n".join(lines)


__all__ = ["Block", "REGIMES", "Regime", "describe_regimes", "make_regime", "model_blocks", "split_groups"]
