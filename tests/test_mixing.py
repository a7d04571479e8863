"""Batch MixUp / CutMix (augment.mix): mixed images and the mixed class-weighted loss on a constructed batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domgen.algorithms import ALGORITHMS, make_algorithm
from domgen.algorithms.base import Batch
from domgen.config import AugmentConfig, LossConfig, RunConfig, apply_overrides
from domgen.config_check import validate
from domgen.engine.mixing import BatchMixer, MixedCriterion
from domgen.errors import ConfigError
from domgen.losses import build_loss

Y = torch.tensor([0, 1, 2, 1])
W = torch.tensor([1.0, 0.25, 0.5])  # class weights


def batch() -> Batch:
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)  # every pixel distinct
    return Batch(x, Y.clone(), torch.zeros(4, dtype=torch.long))


def mixer(kind: str) -> BatchMixer:
    algorithm = make_algorithm(ALGORITHMS.get("erm").Hparams(), LossConfig())
    return BatchMixer(AugmentConfig(mix=kind, mix_alpha=0.4), algorithm, num_classes=3)


def weighted_ce(logits: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """nn.CrossEntropyLoss(weight=w) by hand: sum_b w_yb CE_b / sum_b w_yb."""
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y)), y]
    return float((w[y] * ce).sum() / w[y].sum())


def test_mixup_mixes_each_image_with_the_one_before_and_the_losses_with_the_same_lam():
    m, b = mixer("mixup"), batch()
    mixed, info = m.mix(b, seed=3)
    lam = info.lam
    assert 0 < lam < 1
    assert torch.allclose(mixed.x, lam * b.x + (1 - lam) * b.x.roll(1, 0))
    assert torch.equal(info.partner, torch.tensor([1, 0, 1, 2]))  # y rolled by one
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, -1.0, 0.5]])
    m.criterion.active = info
    got = float(m.criterion(logits, mixed.y, W))
    want = lam * weighted_ce(logits.numpy(), Y.numpy(), W.numpy()) + (1 - lam) * weighted_ce(
        logits.numpy(), np.array([1, 0, 1, 2]), W.numpy())
    assert got == pytest.approx(want, rel=1e-6)
    m.criterion.active = None  # outside a mixed batch: the plain criterion
    assert float(m.criterion(logits, Y, W)) == pytest.approx(weighted_ce(logits.numpy(), Y.numpy(), W.numpy()), rel=1e-6)


def test_cutmix_pastes_the_partners_box_and_weighs_by_its_area():
    m, b = mixer("cutmix"), batch()
    for seed in range(5):
        mixed, info = m.mix(b, seed)
        pasted = (mixed.x != b.x).all(1)  # [B, 8, 8] pixels that now come from the partner
        assert torch.equal(mixed.x[:, :, pasted[0]], b.x.roll(1, 0)[:, :, pasted[0]])
        assert (pasted == pasted[0]).all()  # one box for the whole batch
        assert info.lam == pytest.approx(1 - pasted[0].float().mean().item())  # the box's share, not the Beta draw


def test_mixing_is_seeded_and_leaves_the_global_rng_alone():
    m, b = mixer("mixup"), batch()
    state = torch.get_rng_state()
    lams = [m.mix(b, 11)[1].lam, m.mix(b, 11)[1].lam, m.mix(b, 12)[1].lam]
    assert torch.equal(torch.get_rng_state(), state)
    assert lams[0] == lams[1] != lams[2]


def test_an_algorithm_that_classifies_part_of_the_batch_is_refused():
    criterion = MixedCriterion(build_loss(LossConfig()), "groupdro")
    m = mixer("mixup")
    _, info = m.mix(batch(), 0)
    criterion.active = info
    with pytest.raises(ConfigError, match="part of the batch"):
        criterion(torch.zeros(2, 3), info.y[:2], W)  # a per-domain subset
    assert criterion.reduction == "weighted_mean"  # the base's attributes show through


def test_a_step_that_never_calls_the_criterion_is_refused():
    m = mixer("mixup")
    stream = m.batches([batch(), batch()], seed=0)
    next(stream)  # the step does not call m.criterion
    with pytest.raises(ConfigError, match="never called"):
        next(stream)
    assert m.criterion.active is None


def test_pairs_and_the_mixup_algorithm_are_refused_at_validation():
    for algo in ("ccsa", "mixup"):
        with pytest.raises(ConfigError, match="augment.mix"):
            validate(apply_overrides(RunConfig(), [f"algorithm.name={algo}", "augment.mix=mixup"]))
    validate(apply_overrides(RunConfig(), ["augment.mix=cutmix"]))  # ERM: fine


# Which registered methods take augment.mix: those that classify the whole batch through the run's criterion.
# Per-domain risks (GroupDRO, VREx) and IRM's split-batch penalty call it on parts and are refused.
REFUSED = {"groupdro", "vrex", "irm"}


def test_every_single_image_algorithm_trains_on_mixed_batches_or_refuses_clearly():
    from test_algorithm_contract import CPU, batches, fresh, toy_pool  # the contract's toy model and pool

    from domgen.engine.loop import train_epoch

    refused = set()
    for name in ALGORITHMS.names():
        if ALGORITHMS.get(name).images_per_sample != 1 or name == "mixup":
            continue  # refused by validation (test above)
        model, opt, alg = fresh(name, LossConfig())
        m = BatchMixer(AugmentConfig(mix="mixup"), alg, num_classes=3)
        try:
            logs = train_epoch(model, m.batches(batches(alg, toy_pool(), 0, 3), 0), alg, opt, CPU, "fp32")
        except ConfigError as err:
            assert "part of the batch" in str(err)
            refused.add(name)
        else:
            assert np.isfinite(logs["loss"]), name
    assert refused == REFUSED
