"""LoRA on timm ViTs through the ``peft`` library: Hu et al., "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022: each targeted linear layer computes W0 x + (lora_alpha / r) B A x with W0
frozen, A [r, in] random and B [out, r] zero at the start, so training starts from the pretrained model.

The adapters are injected with ``peft.inject_adapter_in_model`` (peft's low-level API: the model is changed
in place and keeps its interface) into ``model.g``'s modules named by ``target_modules`` (timm ViTs: the
attention's fused ``qkv`` projection, as in Hu et al.'s W_q, W_v). Then only the LoRA matrices and the
head train. The adapters are part of the model's state dict, so ``last.pt`` and ``best.pt`` hold them.

``peft`` is an optional dependency (``pip install -e ".[lora]"``; the test extra includes it, so CI runs the
LoRA tests): without it the configuration is refused (``Regime.problems``) with the command that installs it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from torch import nn

from domgen.config import RegimeConfig
from domgen.regimes.base import REGIMES, Regime, hparam


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


@dataclass(frozen=True)
class LoRAHparams(RegimeConfig):
    name: str = "lora"
    rank: int = hparam(8, lambda r: int(r.choice([4, 8, 16, 32])))  # r, the adapters' rank
    lora_alpha: float = 16.0  # the update is scaled by lora_alpha / rank
    lora_dropout: float = hparam(0.0, lambda r: float(r.choice([0.0, 0.1])))
    target_modules: str = "qkv"  # comma-separated module names inside g (timm ViT attention: qkv)


@REGIMES.register("lora")
class LoRA(Regime):
    """LoRA (via peft) on a timm ViT: low-rank adapters on the attention projections and the head train."""

    Hparams = LoRAHparams
    reference = "Hu et al., ICLR 2022 (LoRA), through Hugging Face peft's inject_adapter_in_model"

    @classmethod
    def problems(cls, hp: LoRAHparams):
        yield from super().problems(hp)
        if not peft_available():
            yield "name", hp.name, "LoRA needs the peft library, which is not installed: pip install peft"
        if not hp.rank >= 1:
            yield "rank", hp.rank, "must be >= 1"
        if not 0 <= hp.lora_dropout < 1:
            yield "lora_dropout", hp.lora_dropout, "must be in [0, 1)"
        if not [t for t in hp.target_modules.split(",") if t.strip()]:
            yield "target_modules", hp.target_modules, "names of linear modules inside the backbone"

    def attach(self, model: nn.Module) -> None:
        from domgen.errors import ConfigError

        if not peft_available():
            raise ConfigError("regime.name='lora' needs the peft library, which is not installed: pip install peft")
        if not isinstance(getattr(model.g, "blocks", None), (nn.Sequential, nn.ModuleList)):
            raise ConfigError(f"regime lora adapts timm ViTs (a backbone with `blocks`), not {type(model.g).__name__}")
        from peft import LoraConfig, inject_adapter_in_model

        hp = self.hparams
        targets = [t.strip() for t in hp.target_modules.split(",") if t.strip()]
        config = LoraConfig(r=hp.rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout, target_modules=targets)
        device = next(model.g.parameters()).device
        inject_adapter_in_model(config, model.g)
        model.g.to(device)  # the new matrices on the backbone's device
        super().attach(model)

    def begin_epoch(self, epoch: int, epochs: int, model: nn.Module) -> None:
        super().begin_epoch(epoch, epochs, model)
        for name, p in model.g.named_parameters():
            p.requires_grad_("lora_" in name)
        model.h.requires_grad_(True)
