"""What the dynamic pair sampler of an experiment does: exact class probabilities of both streams, the
joint, P(y1 == y2), the resulting loss weights, and empirical frequencies from drawn pairs."""

from __future__ import annotations

import numpy as np

from domgen.config import RunConfig
from domgen.data.labels import CLASSES
from domgen.data.pair_sampler import PairSampler
from domgen.experiments.data import prepare_data


def sampler_report(cfg: RunConfig, n_pairs: int = 100_000, bar=None) -> dict:
    data = prepare_data(cfg.data, bar=bar)
    domains = data.manifest["domain"].to_numpy()[data.pool]
    labels = data.labels[data.pool]
    sampler = PairSampler(labels, domains, p_same=cfg.loss.p_same, seed=cfg.seed)
    exact = sampler.exact_probabilities()
    w1, w2 = sampler.class_weights()
    K = len(CLASSES)
    joint = np.zeros((K, K))
    drawn, epoch = 0, 0
    while drawn < n_pairs:  # whole epochs: each x1 once per epoch, as in training
        i1, i2 = sampler.epoch_pairs(epoch)
        np.add.at(joint, (labels[i1], labels[i2]), 1)
        drawn, epoch = drawn + len(i1), epoch + 1
    emp = joint / drawn
    return {
        "exp": cfg.exp,
        "data": data.identity,
        "pool": {d: int((domains == d).sum()) for d in data.train_domains},
        "classes": list(CLASSES),
        "exact": {"p1": exact.p1.tolist(), "p2": exact.p2.tolist(), "joint": exact.joint.tolist(), "p_equal": exact.p_equal},
        "weights": {"class_w1": w1.tolist(), "class_w2": w2.tolist(), "pair_w": sampler.pair_weights().tolist()},
        "empirical": {"pairs": drawn, "epochs": epoch, "p1": emp.sum(1).tolist(), "p2": emp.sum(0).tolist(), "joint": emp.tolist(), "p_equal": float(np.trace(emp))},
    }


def format_sampler_report(r: dict) -> str:
    cls = r["classes"]
    head = "        " + " ".join(f"{c:>7}" for c in cls)

    def row(name, values, fmt="{:7.4f}"):
        return f"{name:<8}" + " ".join(fmt.format(v) for v in values)

    e, w, m = r["exact"], r["weights"], r["empirical"]
    lines = [
        f"experiment {r['exp']} on {r['data']}; training pool: " + ", ".join(f"{d} {n}" for d, n in r["pool"].items()),
        "class probabilities (exact | empirical from %d pairs over %d epochs)" % (m["pairs"], m["epochs"]),
        head,
        row("P(y1)", e["p1"]),
        row("emp y1", m["p1"]),
        row("P(y2)", e["p2"]),
        row("emp y2", m["p2"]),
        f"P(y1 == y2) exact {e['p_equal']:.4f}  empirical {m['p_equal']:.4f}",
        "joint P(y1 = row, y2 = column), exact:",
        head,
        *[row(c, vals) for c, vals in zip(cls, e["joint"])],
        "weights (1/P, normalised to mean 1 under the sampler):",
        head,
        row("w1", w["class_w1"], "{:7.3f}"),
        row("w2", w["class_w2"], "{:7.3f}"),
        "pair weights W[y1, y2]:",
        head,
        *[row(c, vals, "{:7.2f}") for c, vals in zip(cls, w["pair_w"])],
    ]
    return "\n".join(lines)
