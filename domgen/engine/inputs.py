"""Batches for training and evaluation, on the device.

Default (``data.cached``): every image is decoded, resized and centre-cropped once into a uint8
memory-mapped array (``domgen.data.cache``, built by ``data.workers`` processes). A batch is then one
sorted fancy-index read of that array, done by a background thread a few batches ahead (no worker
processes: shipping 8.6 MB batches between processes cost more than the read itself, 25 vs 34
batches/s measured on 2 cores), and the random part of the recipe (random resized crop, flips, rot90,
Cutout) runs per batch on the device (``domgen.data.batch_augment``). All randomness comes from
generators seeded by (seed, epoch), so an epoch replays exactly after a resume.
Fallback (``data.cached=False``): the reference per-image PIL pipeline in DataLoader workers.
"""

from __future__ import annotations

import queue
import random
import threading
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from domgen.algorithms.base import Batch
from domgen.config import AugmentConfig, DataConfig, TransformConfig, cache_dir
from domgen.data.batch_augment import BatchAugment, eval_batch
from domgen.data.cache import build_cache, open_cache
from domgen.data.policies import PolicyAugment, make_policy, policy_train_transform
from domgen.data.samplers import Draw, chunks
from domgen.data.transforms import IMAGENET, ImageFolderDataset, Normalization, reference_eval_transform
from domgen.threads import thread_budget


def _gather(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [B, S, S, 3], labels [B]) at positions ``idx``, read from the memmap in sorted order."""
    order = np.argsort(idx)  # sorted reads are sequential on disk
    block = np.empty((len(idx),) + images.shape[1:], dtype=np.uint8)
    block[order] = images[idx[order]]
    return torch.from_numpy(block), torch.from_numpy(labels[idx])


class Inputs:
    """uint8 cache of every manifest image plus device-side augmentation.

    ``norm``: the mean/std the model expects (:func:`domgen.models.input_normalization` of its arch);
    ``domains``: [N] int64 domain index of every image, carried by each training batch (default 0)."""

    def __init__(self, paths: list[str], labels: np.ndarray, tcfg: TransformConfig, dcfg: DataConfig, device, progress=None,
                 norm: Normalization = IMAGENET, domains: np.ndarray | None = None, acfg: AugmentConfig = AugmentConfig()):
        budget = thread_budget(dcfg.cached, dcfg.workers)  # workers never exceed the usable cores
        self.t, self.device, self.workers, self.norm, self.a = tcfg, torch.device(device), budget.loader_workers, norm, acfg
        self.augment = self._batch_augment().to(self.device)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.domains = np.zeros(len(self.labels), dtype=np.int64) if domains is None else np.asarray(domains, dtype=np.int64)
        self.cached = dcfg.cached
        if self.cached:
            path = build_cache(paths, tcfg.resize, tcfg.crop, cache_dir(dcfg), progress=progress, num_workers=budget.cache_workers)
            self.images = open_cache(path)
        else:
            self.paths = list(paths)

    def _batch_augment(self) -> torch.nn.Module:
        """``augment.policy`` on the device: the paper's recipe is :class:`BatchAugment` as it always was, any
        other policy a :class:`domgen.data.policies.PolicyAugment`."""
        t, norm = self.t, self.norm
        if self.a.policy == "paper":
            return BatchAugment(out=t.size, cutout=t.cutout, mean=norm.mean, std=norm.std)
        return PolicyAugment(make_policy(self.a), t.size, t.cutout, norm, resize=t.resize)

    def _loader(self, batches: list[np.ndarray], train: bool, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cached:
            pin = self.device.type == "cuda"  # pinned host memory makes the non_blocking copy asynchronous
            batches_u8 = (_gather(self.images, self.labels, idx) for idx in batches)
            return prefetch(((x.pin_memory(), y.pin_memory()) if pin else (x, y) for x, y in batches_u8))
        t = self.t
        tf = (policy_train_transform(self.a, t.resize, t.crop, t.size, t.cutout, self.norm) if train
              else reference_eval_transform(t.resize, t.size, self.norm))
        ds = ImageFolderDataset(self.paths, self.labels, tf)
        g = torch.Generator().manual_seed(seed)  # seeds each worker's transforms, so epochs replay exactly
        return DataLoader(ds, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers, generator=g,
                          worker_init_fn=_seed_worker)

    def _to_device(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if not self.cached:
            return x
        if gen is not None:
            return self.augment(x, generator=gen)
        return eval_batch(x, self.t.size, self.norm.mean, self.norm.std, resize=self.t.resize)

    @staticmethod
    def _generator(seed: int) -> torch.Generator:
        # CPU generator: BatchAugment draws its choices on the CPU, so results do not depend on the device.
        return torch.Generator().manual_seed(seed)

    def batches(self, draws: Iterable[Draw], seed: int) -> Iterator[Batch]:
        """Training batches for ``draws`` (manifest positions in epoch order) -> augmented
        :class:`domgen.algorithms.Batch` (x [B, 3, s, s], y [B], domain [B], the draw's extras as tensors)."""
        draws = list(draws)
        gen = self._generator(seed)
        for draw, (x, y) in zip(draws, self._loader([d.idx for d in draws], True, seed)):
            x = self._to_device(x, gen)
            domain = torch.from_numpy(self.domains[draw.idx]).to(self.device)
            extras = {k: torch.from_numpy(np.asarray(v)).to(self.device) for k, v in draw.extras.items()}
            yield Batch(x, y.to(self.device), domain, extras)

    def train_batches(self, order: np.ndarray, batch_size: int, seed: int) -> Iterator[Batch]:
        """``order``: manifest positions in epoch order, in consecutive batches of ``batch_size``."""
        return self.batches([Draw(c) for c in chunks(order, batch_size)], seed)

    def eval_batches(self, positions: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._loader(chunks(positions, batch_size, drop_single=False), False, 0):
            yield self._to_device(x, None), y.to(self.device)


class ValidationStream:
    """``stream(k)``: the k-th evaluation batch (x, y) of an endless stream over ``positions`` (manifest
    positions), pass after pass, each pass in its own order seeded by (``seed``, pass). Batch k is a function
    of k alone, so a consumer that keeps k in its state (TPGM's radius updates) draws the same batches after
    a resume; consecutive calls read on through one loader, any other k starts one there."""

    def __init__(self, inputs: Inputs, positions: np.ndarray, batch_size: int, seed: int):
        self.inputs, self.positions, self.batch_size, self.seed = inputs, np.asarray(positions), batch_size, seed
        self._next, self._it = -1, None

    def __call__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        from domgen.errors import ConfigError
        from domgen.seeds import derive_seed

        n = len(self.positions)
        if n == 0:
            raise ConfigError("this regime learns on the training domains' validation split, and the run has none")
        per_pass = -(-n // self.batch_size)  # the last batch of a pass may be short
        cycle, j = divmod(k, per_pass)
        if k != self._next or j == 0 or self._it is None:
            order = self.positions[np.random.default_rng(derive_seed(self.seed, cycle)).permutation(n)]
            self._it = self.inputs.eval_batches(order[j * self.batch_size:], self.batch_size)
        self._next = k + 1
        return next(self._it)


def prefetch(items: Iterator, depth: int = 3) -> Iterator:
    """Produce ``items`` in a background thread, ``depth`` ahead of the consumer. numpy and torch copies
    release the GIL, so the next batch is read while this one is augmented and trained on."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer, raised there
            q.put(err)
        q.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (or finished): let the producer exit
        stop.set()


def _seed_worker(worker_id: int) -> None:
    """numpy and random in each worker follow torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
