"""A new method is one file: a toy algorithm written by the test, imported, and trained through the normal
driver (``run_train``) with no edit to the engine; its hyperparameters, its choice of sampler, its logged
values and its state reach the run folder like ERM's and CCSA's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from domgen.algorithms import ALGORITHMS
from domgen.data.samplers import chunks
from domgen.engine.logging import read_results
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train

TOY = '''
"""ERM that also keeps a running mean of its loss (state beside the model) and counts its steps."""
from dataclasses import dataclass

import torch

from domgen.algorithms import ALGORITHMS, Algorithm, Step, hparam
from domgen.config import AlgorithmConfig


@dataclass(frozen=True)
class ToyHparams(AlgorithmConfig):
    name: str = "toy"
    sampler: str = "domain_balanced"
    momentum: float = hparam(0.5, lambda rng: float(rng.uniform(0.0, 1.0)))


@ALGORITHMS.register("toy")
class Toy(Algorithm):
    Hparams = ToyHparams

    def build(self, pool):
        super().build(pool)
        self.average, self.steps = torch.zeros(()), 0
        return self

    def loss(self, model, batch):
        loss = self.criterion(model(batch.x), batch.y, self.class_w)
        m = self.hparams.momentum
        self.average = m * self.average + (1 - m) * loss.detach().cpu()
        self.steps += 1
        return Step(loss, {"average": self.average.clone(), "domains": batch.domain.unique().numel() * torch.ones(())})

    def state_dict(self):
        return super().state_dict() | {"average": self.average, "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.average, self.steps = state["average"], state["steps"]
'''


@pytest.fixture
def toy(plugin):
    """The toy module imported from a file of its own; the registry is restored afterwards."""
    return plugin(ALGORITHMS, "toy_algorithm", TOY)


@pytest.mark.slow
def test_a_toy_algorithm_in_one_file_trains_through_the_driver(toy, smoke_cache, tmp_path):
    cfg = resolve_config("A", "smoke", 0, [f"data.cache_dir={smoke_cache}", "data.workers=0", "threads=1",
                                           f"out={tmp_path / 'runs'}", "data.nsec=2", "optim.epochs=1",
                                           "algorithm.name=toy", "algorithm.momentum=0.25"])
    assert cfg.algorithm == toy.ToyHparams(momentum=0.25)
    result = run_train(cfg)
    rows = read_results(result.run_dir)
    train = [r for r in rows if r["stage"] == "train"]
    assert len(train) == 1 and {"train_loss", "train_average", "train_domains"} <= set(train[0])
    # the run record describes the method as the toy class declares it
    assert all(r["algorithm"] == "toy" and r["momentum"] == 0.25 and r["sampler"] == "domain_balanced" for r in rows)
    assert "momentum: 0.25" in (result.run_dir / "config.yaml").read_text()
    # its state went into the checkpoint: one step per batch of the epoch
    state = torch.load(result.run_dir / "last.pt", weights_only=True)["algorithm"]
    assert state["steps"] == len(chunks(np.arange(state["sampler"]["pool_size"]), cfg.optim.batch_size)) > 1
    # the domain-balanced sampler mixes HAM with the nsec=2 images of every other source: most batches
    # of 16 hold several domains (a uniform draw would be mostly HAM)
    assert train[0]["train_domains"] > 2
    done = json.loads((result.run_dir / "done").read_text())
    assert done["algorithm"] == "toy"
