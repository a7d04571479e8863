"""L2-SP: Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018 (the L2-SP penalty):

    Omega(w) = alpha / 2 ||w_S - w0_S||^2 + beta / 2 ||w_Sbar||^2

with w_S the backbone's parameters (every tensor of ``g``), w0_S their values when training starts (taken
when the regime attaches, before any step: the pretrained weights, or a warm-started run's parent's), and
w_Sbar the new head's weights and bias. The term is added to the algorithm's loss at every step, whatever the algorithm.

Li et al. replace weight decay by this penalty, so the model's groups train with ``weight_decay = 0``
(AdamW's decoupled decay would pull the backbone towards 0, against the penalty's pull towards w0); the
algorithm's own modules keep ``optim.weight_decay``. With AdamW the penalty's gradient is normalised like
the loss's (the paper used SGD with momentum). Li et al. choose alpha and beta by cross-validation; the
defaults here (alpha = 0.1, beta = 0.01) are starting values; the fields' search distributions draw
both log-uniformly in [1e-3, 1].

w0 is not stored in ``last.pt`` (a second copy of the backbone): a resumed run rebuilds the model from the
same weights before the regime attaches, so w0 is the same; the checkpoint keeps a fingerprint of w0 (its
sum of squares) and loading refuses a checkpoint whose w0 differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from domgen.config import RegimeConfig
from domgen.regimes.base import REGIMES, Regime, anchor_fingerprint, check_anchor, hparam


@dataclass(frozen=True)
class L2SPHparams(RegimeConfig):
    name: str = "l2sp"
    alpha: float = hparam(0.1, lambda r: float(10 ** r.uniform(-3, 0)))  # pull of the backbone towards w0
    beta: float = hparam(0.01, lambda r: float(10 ** r.uniform(-3, 0)))  # plain L2 on the new head


@REGIMES.register("l2sp")
class L2SP(Regime):
    """L2-SP: alpha/2 ||w - w0||^2 on the backbone's weights plus beta/2 ||head||^2, added to the loss."""

    Hparams = L2SPHparams
    reference = "Li, Grandvalet & Davoine, ICML 2018 (L2-SP); Davila et al., arXiv 2406.10050"

    @classmethod
    def problems(cls, hp: L2SPHparams):
        yield from super().problems(hp)
        for key in ("alpha", "beta"):
            if not getattr(hp, key) >= 0:
                yield key, getattr(hp, key), "a penalty weight: must be >= 0"

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        self.backbone = [p for p in model.g.parameters()]
        self.anchor = [p.detach().clone() for p in self.backbone]  # w0, on the model's device
        self.head = list(model.h.parameters())

    def param_groups(self, model, groups, lr):
        mine = {id(p) for p in model.parameters()}
        out = []
        for group in groups:  # the model's groups without decay (the penalty replaces it); the algorithm's as given
            own = [p for p in group["params"] if id(p) in mine]
            rest = [p for p in group["params"] if id(p) not in mine]
            opts = {k: v for k, v in group.items() if k != "params"}
            out += [opts | {"params": own, "weight_decay": 0.0}] if own else []
            out += [opts | {"params": rest}] if rest else []
        return out

    def penalty(self, model: nn.Module) -> Tensor:
        sp = sum(((p.float() - p0.float()) ** 2).sum() for p, p0 in zip(self.backbone, self.anchor))
        head = sum((p.float() ** 2).sum() for p in self.head)
        return self.hparams.alpha / 2 * sp + self.hparams.beta / 2 * head

    def state_dict(self) -> dict:
        return {"anchor_sq": anchor_fingerprint(self.anchor)}

    def load_state_dict(self, state: dict) -> None:
        check_anchor(state.get("anchor_sq"), self.anchor, "L2-SP: the checkpoint was trained towards different initial weights")
