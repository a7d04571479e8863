"""The contract every registered algorithm keeps with every classification loss, on a toy pool of three
domains where one domain lacks a class: it builds, trains two steps to a finite loss, its state survives
a weights-only checkpoint, and a run resumed from that checkpoint equals the uninterrupted one."""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, Batch, make_algorithm
from domgen.config import LossConfig
from domgen.data.samplers import TrainPool
from domgen.engine.checkpoint import rng_state, set_rng_state
from domgen.engine.loop import train_epoch
from domgen.losses import LOSSES

K, D = 3, 4
CPU = torch.device("cpu")
# HAM (the primary) holds every class; DMF lacks class 2; UDA holds classes 0 and 2 only.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 1, 1, 0, 2, 2, 0])
DOMAINS = np.array(["HAM"] * 8 + ["DMF"] * 4 + ["UDA"] * 4)
# Every algorithm with cross-entropy, weighted and not; every other loss with the algorithms that call the
# criterion in their own way: on the whole batch (erm), on two streams (ccsa), on each domain's subset
# (groupdro, irm), beside closed-form head gradients (fishr), on mixed labels (mixup). Every algorithm x
# every loss was checked once (576 cases) when the losses arrived; this keeps the suite's time in check.
CRITERION_USES = ("erm", "ccsa", "groupdro", "irm", "fishr", "mixup")
CASES = [(a, "ce", w) for a in ALGORITHMS.names() for w in (True, False)] + [
    (a, loss, w) for loss in LOSSES.names() if loss != "ce" for a in CRITERION_USES for w in (True, False)]


class Toy(nn.Module):
    """g: two 1x1 conv stages named like ResNet's (where MixStyle hooks in), flatten + linear to D
    features; h: linear to K logits (the interface of domgen.models)."""

    def __init__(self):
        super().__init__()
        self.g = nn.Sequential(OrderedDict(
            layer1=nn.Conv2d(3, 3, 1), layer2=nn.Conv2d(3, 3, 1), flatten=nn.Flatten(), fc=nn.Linear(3 * 2 * 2, D),
            bn=nn.BatchNorm1d(D), relu=nn.ReLU()))
        self.h = nn.Linear(D, K)

    def forward_both(self, x):
        z = self.g(x)
        return self.h(z), z

    def forward(self, x):
        return self.forward_both(x)[0]


def toy_pool(seed: int = 0) -> TrainPool:
    return TrainPool.of(LABELS, DOMAINS, num_classes=K, seed=seed, primary="HAM")


IMAGES = torch.randn(len(LABELS), 3, 2, 2, generator=torch.Generator().manual_seed(0))


def batches(algorithm, pool: TrainPool, epoch: int, n: int | None = None) -> list[Batch]:
    """The algorithm's batches of ``epoch`` as the engine's input pipeline hands them over (without images)."""
    out = []
    for d in algorithm.batches(epoch, batch_size=3)[:n]:
        extras = {k: torch.as_tensor(np.asarray(v)) for k, v in d.extras.items()}
        out.append(Batch(IMAGES[d.idx], torch.as_tensor(pool.labels[d.idx]), torch.as_tensor(pool.domains[d.idx]), extras))
    return out


def fresh(name: str, loss: LossConfig, seed: int = 0):
    torch.manual_seed(0)
    model = Toy()
    algorithm = make_algorithm(ALGORITHMS.get(name).Hparams(), loss, CPU).build(toy_pool(seed))
    algorithm.attach(model)  # as the trainer does: the algorithm's own modules exist before the optimiser
    optimizer = torch.optim.AdamW(algorithm.param_groups(model), lr=1e-2)
    return model, optimizer, algorithm


def through_checkpoint(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what a run checkpoint allows


@pytest.mark.parametrize("name, loss, weighted", CASES)
def test_two_steps_give_a_finite_loss_and_move_the_model(name, loss, weighted):
    model, optimizer, algorithm = fresh(name, LossConfig(name=loss, weighted=weighted))
    before = [p.detach().clone() for p in model.parameters()]
    two = batches(algorithm, toy_pool(), 0, n=2)
    assert len(two) == 2 and all(len(b.y) == 3 * algorithm.images_per_sample for b in two)
    out = train_epoch(model, two, algorithm, optimizer, CPU)
    assert np.isfinite(out["loss"]) and out["loss"] > 0 and all(np.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert algorithm.describe()["algorithm"] == name and algorithm.describe()["loss"] == loss


def same(a, b) -> bool:
    """Equal states: dicts and lists compared item by item, tensors by ``torch.equal`` (an algorithm's
    ``nets`` state holds tensors, whose ``==`` is elementwise)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name, loss, weighted", CASES)
def test_state_round_trips_through_a_weights_only_checkpoint(name, loss, weighted):
    _, _, algorithm = fresh(name, LossConfig(name=loss, weighted=weighted))
    state = through_checkpoint(algorithm.state_dict())
    _, _, again = fresh(name, LossConfig(name=loss, weighted=weighted))
    again.load_state_dict(state)
    assert same(through_checkpoint(again.state_dict()), state)
    _, _, other = fresh(name, LossConfig(name=loss, weighted=weighted), seed=1)
    with pytest.raises(ValueError, match="different"):  # another seed would draw other batches
        other.load_state_dict(state)


@pytest.mark.parametrize("name, loss, weighted", CASES)
def test_resume_equals_uninterrupted(name, loss, weighted):
    cfg = LossConfig(name=loss, weighted=weighted)
    model, optimizer, algorithm = fresh(name, cfg)
    pool = toy_pool()
    train_epoch(model, batches(algorithm, pool, 0), algorithm, optimizer, CPU)
    # The global RNGs travel in the checkpoint as the trainer saves them: methods that draw (Mixup's lam,
    # MixStyle's permutations) resume from the same random state.
    saved = through_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "algorithm": algorithm.state_dict(), "rng": rng_state()})
    straight = train_epoch(model, batches(algorithm, pool, 1), algorithm, optimizer, CPU)

    model2, optimizer2, algorithm2 = fresh(name, cfg)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    algorithm2.load_state_dict(saved["algorithm"])
    set_rng_state(saved["rng"])
    resumed = train_epoch(model2, batches(algorithm2, pool, 1), algorithm2, optimizer2, CPU)
    assert resumed == straight
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_names_its_paper_and_is_listed(name):
    from domgen.algorithms import describe_algorithms

    cls = ALGORITHMS.get(name)
    assert cls.reference and cls.__doc__, f"{name}: `list algorithms` shows its docstring's first line and its paper"
    listed = describe_algorithms().splitlines()
    line = next(i for i, text in enumerate(listed) if text.split()[0] == name)
    assert f"sampler={cls.Hparams().sampler}" in listed[line] and listed[line + 1].strip() == cls.reference
