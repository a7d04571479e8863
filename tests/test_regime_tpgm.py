"""TPGM (domgen.regimes.tpgm): the projection against hand computations on a two-parameter layer, one
radius update against a NumPy gradient and Adam's first step, the radii through a weights-only checkpoint,
every backbone tensor within its radius after real steps, and the validation stream the trainer hands it.
(tests/test_regimes.py runs tpgm with ERM and CCSA through two steps and a resume, like every regime.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from domgen.engine.inputs import ValidationStream
from domgen.regimes import REGIMES, make_regime
from domgen.regimes.tpgm import distance
from tests.test_algorithm_contract import through_checkpoint
from tests.test_regimes import run_epoch, setup

EPS = 1e-8


class Tiny(nn.Module):
    """g: one linear layer without bias (its weight is the only backbone tensor); h: a linear head."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.g = nn.Linear(d_in, d_out, bias=False)
        self.h = nn.Linear(d_out, 2)

    def forward_both(self, x):
        z = self.g(x)
        return self.h(z), z

    def forward(self, x):
        return self.forward_both(x)[0]


def attached(w0, w, norm: str = "mars", **hp):
    """A Tiny whose backbone weight starts at ``w0`` (what TPGM anchors to) and then is set to ``w``."""
    w0, w = torch.tensor(w0), torch.tensor(w)
    model = Tiny(w0.shape[1], w0.shape[0])
    with torch.no_grad():
        model.g.weight.copy_(w0)
    reg = make_regime(REGIMES.get("tpgm").Hparams(norm=norm, **hp))
    reg.attach(model)
    with torch.no_grad():
        model.g.weight.copy_(w)
    return model, reg


def set_radius(reg, gamma: float) -> None:
    with torch.no_grad():
        reg.gamma.fill_(gamma)
    reg.initialised = True


# ---- the projection --------------------------------------------------------------------------------
def test_mars_projection_scales_each_row_against_the_one_radius():
    # w - w0 = [[3], [4]]: row L1 norms 3 and 4; gamma 3.5 leaves row 0 (3 < 3.5) and scales row 1 by 3.5/4
    model, reg = attached([[1.0], [2.0]], [[4.0], [6.0]])
    set_radius(reg, 3.5)
    reg.project()
    assert model.g.weight.detach().numpy() == pytest.approx(np.array([[4.0], [2.0 + 4 * 3.5 / (4 + EPS)]]), abs=1e-6)


def test_l2_projection_scales_the_whole_tensor():
    # w - w0 = [3, 4]: ||.||_2 = 5; gamma 2.5 halves the offset: w = [1, 2] + [1.5, 2] = [2.5, 4]
    model, reg = attached([[1.0, 2.0]], [[4.0, 6.0]], norm="l2")
    set_radius(reg, 2.5)
    reg.project()
    assert model.g.weight.detach().numpy() == pytest.approx(np.array([[2.5, 4.0]]), abs=1e-6)


def test_first_projection_starts_the_radius_at_half_the_smallest_row_distance_and_clips_it():
    model, reg = attached([[1.0], [2.0]], [[4.0], [6.0]])
    reg.project()  # gamma = min(3, 4) / 2 = 1.5: rows scaled by 1.5/3 and 1.5/4
    assert reg.gamma.item() == pytest.approx(1.5)
    assert model.g.weight.detach().numpy() == pytest.approx(np.array([[2.5], [3.5]]), abs=1e-6)
    model, reg = attached([[1.0], [2.0]], [[4.0], [6.0]])
    set_radius(reg, 10.0)  # beyond the farthest row (4): clipped to it, and nothing moves
    reg.project()
    assert reg.gamma.item() == pytest.approx(4.0)
    assert model.g.weight.detach().numpy() == pytest.approx(np.array([[4.0], [6.0]]), abs=1e-6)


# ---- one radius update -----------------------------------------------------------------------------
def test_one_radius_update_is_adams_first_step_on_the_numpy_gradient():
    w0 = np.array([[0.5, -1.0], [1.5, 0.25]])
    d = np.array([[0.1, -0.2], [0.5, 0.4]])  # row L1 norms 0.3 and 0.9
    model, reg = attached(w0.tolist(), (w0 + d).tolist(), proj_lr=0.05)
    with torch.no_grad():
        model.h.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.5]]))
        model.h.bias.copy_(torch.tensor([0.1, -0.3]))
    gamma = 0.45  # row 0: ratio min(1, 1.5) = 1 (clipped: no gradient); row 1: ratio 0.5
    set_radius(reg, gamma)
    x = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]])
    y = np.array([0, 1, 1])

    # NumPy: logits = x W_p^T H^T + b with W_p = w0 + r * d (r per row); dL/dgamma = sum_r [r < 1] (dL/dW_p[r] . d[r]) / n_r
    n = np.abs(d).sum(axis=1)
    r = np.minimum(1.0, gamma / (n + EPS))
    wp = w0 + r[:, None] * d
    H, b = model.h.weight.detach().numpy().astype(np.float64), model.h.bias.detach().numpy().astype(np.float64)
    logits = x @ wp.T @ H.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(3), y]).mean()
    dlogits = (p - np.eye(2)[y]) / 3
    dwp = (dlogits @ H).T @ x
    grad = sum((dwp[i] @ d[i]) / (n[i] + EPS) for i in range(2) if r[i] < 1)

    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model.eval()
    out = reg.radius_loss(xt, yt)
    (g,) = torch.autograd.grad(out, [reg.gamma])
    assert out.item() == pytest.approx(loss, rel=1e-5)
    assert g.item() == pytest.approx(grad, rel=1e-4)

    reg.use_validation(lambda k: (xt, yt))
    model.train()
    reg.update_radii()
    # Adam's first step: m_hat = g, v_hat = g^2, so gamma - lr g / (|g| + 1e-8)
    assert reg.gamma.item() == pytest.approx(gamma - 0.05 * grad / (abs(grad) + 1e-8), rel=1e-6)
    assert reg.updates == 1 and model.training  # the stream moved on; the model's mode is restored
    assert all(p.grad is None for p in model.parameters())  # the model's gradients are untouched


# ---- on the toy of the regime tests: bounds, state --------------------------------------------------
@pytest.mark.parametrize("norm", ["mars", "l2"])
def test_after_steps_every_backbone_tensor_is_within_its_radius_and_the_farthest_row_on_it(norm):
    model, optimizer, alg, reg = setup("tpgm", norm=norm)
    run_epoch(model, optimizer, alg, reg, 0, n=3)
    assert reg.updates == 3  # proj_freq 1, max_iters 1: one validation batch per step
    on_sphere = 0
    for name, p, p0, gamma in zip(reg.names, reg.params, reg.anchor, reg.gamma.detach().tolist()):
        farthest = distance(p.detach() - p0, norm).max().item()
        assert farthest <= gamma * (1 + 1e-5) + 1e-6, name  # 1e-6: w0 + a tiny offset rounds in float32
        if gamma > 1e-3:  # a radius well above rounding: the farthest row was projected onto it (or clipped at it)
            assert farthest == pytest.approx(gamma, rel=1e-4), name
            on_sphere += 1
    assert on_sphere >= 2
    assert reg.names == [f"g.{n}" for n, _ in model.g.named_parameters()]  # the head is free, as the authors'


def test_radii_and_their_adam_moments_survive_a_weights_only_checkpoint():
    model, optimizer, alg, reg = setup("tpgm", proj_freq=2)
    run_epoch(model, optimizer, alg, reg, 0, n=3)  # steps 0 and 2 update the radii
    state = through_checkpoint(reg.state_dict())
    assert state["updates"] == 2 and state["initialised"] is True and state["gamma"].shape == (len(reg.params),)
    _, _, _, other = setup("tpgm", proj_freq=2)
    other.load_state_dict(state)
    assert torch.equal(other.gamma.detach(), reg.gamma.detach()) and other.updates == 2 and other.initialised
    mine, theirs = reg.radius_opt.state_dict()["state"][0], other.radius_opt.state_dict()["state"][0]
    assert all(torch.equal(mine[k], theirs[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    with torch.no_grad():
        other.anchor[0].add_(1.0)
    with pytest.raises(ValueError, match="different initial weights"):
        other.load_state_dict(state)


def test_tpgm_without_validation_batches_says_where_they_come_from():
    model, reg = attached([[1.0], [2.0]], [[4.0], [6.0]])
    with pytest.raises(RuntimeError, match="use_validation"):
        reg.update_radii()


def test_problems_name_the_bad_hyperparameters():
    hp = REGIMES.get("tpgm").Hparams
    bad = {k for k, _, _ in REGIMES.get("tpgm").problems(hp(norm="l1", proj_freq=0, proj_lr=0.0, max_iters=0))}
    assert bad == {"norm", "proj_freq", "proj_lr", "max_iters"}
    assert not list(REGIMES.get("tpgm").problems(hp()))


# ---- the validation stream ----------------------------------------------------------------------------
class FakeInputs:
    """eval_batches as Inputs gives them: consecutive chunks of the positions, here the positions themselves."""

    def eval_batches(self, positions, batch_size):
        for i in range(0, len(positions), batch_size):
            chunk = torch.as_tensor(positions[i:i + batch_size])
            yield chunk, chunk


def test_validation_stream_batch_k_depends_on_k_alone_and_each_pass_covers_every_position():
    positions = np.arange(100, 110)  # 10 positions in batches of 4: passes of 3 batches (4, 4, 2)
    seq = ValidationStream(FakeInputs(), positions, 4, seed=7)
    batches = [seq(k)[0].tolist() for k in range(7)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2, 4]
    assert sorted(sum(batches[:3], [])) == list(positions) and sorted(sum(batches[3:6], [])) == list(positions)
    assert batches[:3] != batches[3:6]  # each pass in its own order
    jumped = ValidationStream(FakeInputs(), positions, 4, seed=7)
    assert [jumped(k)[0].tolist() for k in (4, 5, 1)] == [batches[4], batches[5], batches[1]]  # a resume mid-pass


def test_every_tpgm_key_is_hashed_only_when_set():
    from dataclasses import fields

    from domgen.config import _HASHED_WHEN_SET

    hp = REGIMES.get("tpgm").Hparams()
    assert {f"regime.{f.name}": getattr(hp, f.name) for f in fields(hp) if f.name != "name"}.items() <= _HASHED_WHEN_SET.items()
