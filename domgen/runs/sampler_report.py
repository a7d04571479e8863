"""What an experiment's sampler draws. For a one-image sampler (uniform, domain- or class-balanced,
sqrt-frequency, effective-number): the exact class and domain probabilities, the class weights that invert
them (what corrects the sampler's residual bias) and their expected size, and empirical frequencies from
whole epochs (:func:`single_sampler_report`). For the dynamic pair sampler: exact class probabilities of both streams, the
joint, P(y1 == y2), P(positive), the resulting loss weights and their expected size under the sampler,
empirical frequencies from drawn pairs, and, when the warm start exists, the size of each weighted loss
term (and its gradient at the features) on the first pair batches."""

from __future__ import annotations

import math

import numpy as np
import torch

from domgen.algorithms import Algorithm, images_per_sample, make_algorithm
from domgen.config import RunConfig
from domgen.data.pair_sampler import PairSampler
from domgen.engine.checkpoint import load_checkpoint
from domgen.engine.inputs import Inputs
from domgen.engine.loop import step_values
from domgen.engine.trainer import train_pool
from domgen.data.run_data import RunData, prepare_data
from domgen.models import build_model, input_normalization

TERMS = ("cls", "align", "sep", "gn_cls", "gn_align", "gn_sep")


def pair_algorithm(cfg: RunConfig, data: RunData) -> Algorithm:
    """The run's algorithm built on its pool (on the CPU); it must draw pairs."""
    algorithm = make_algorithm(cfg.algorithm, cfg.loss).build(train_pool(data, cfg.seed))
    if not isinstance(algorithm.sampler, PairSampler):
        raise ValueError(f"experiment {cfg.exp} trains {cfg.algorithm.name!r} with the {cfg.algorithm.sampler!r} sampler, "
                         "not the pair sampler: it draws no pairs")
    return algorithm


def single_sampler_report(cfg: RunConfig, data: RunData, n_draws: int = 100_000) -> dict:
    """The run's one-image sampler on its pool: exact P(class), P(domain) and the class weights, against
    the frequencies of ``n_draws`` images drawn epoch by epoch as training draws them."""
    pool = train_pool(data, cfg.seed)
    algorithm = make_algorithm(cfg.algorithm, cfg.loss).build(pool)
    sampler, labels = algorithm.sampler, data.labels[data.pool]
    K, D = len(data.classes), len(pool.domain_names)
    probs = getattr(sampler, "image_probabilities", None)
    p_image = probs() if probs is not None else np.full(len(pool), 1 / len(pool))  # uniform: each image once
    p_class = np.asarray(sampler.class_probabilities(), dtype=float)
    p_domain = np.bincount(pool.domains, weights=p_image, minlength=D)
    class_n, domain_n, drawn, epoch = np.zeros(K), np.zeros(D), 0, 0
    while drawn < n_draws:
        idx = np.concatenate([d.idx for d in sampler.epoch_batches(epoch, cfg.optim.batch_size)])
        class_n += np.bincount(labels[idx], minlength=K)
        domain_n += np.bincount(pool.domains[idx], minlength=D)
        drawn, epoch = drawn + len(idx), epoch + 1
    w = algorithm.class_w.cpu().numpy() if algorithm.class_w is not None else np.ones(K)
    return {
        "exp": cfg.exp, "data": data.identity, "kind": "single", "sampler": cfg.algorithm.sampler,
        "algorithm": cfg.algorithm.name, "weighted": cfg.loss.weighted, "class_weights": cfg.loss.class_weights,
        "weight_norm": cfg.loss.weight_norm, "classes": list(data.classes), "domains": list(pool.domain_names),
        "pool_classes": np.bincount(labels, minlength=K).tolist(), "pool_domains": np.bincount(pool.domains, minlength=D).tolist(),
        "exact": {"p_class": p_class.tolist(), "p_domain": p_domain.tolist()},
        "empirical": {"draws": drawn, "epochs": epoch, "p_class": (class_n / drawn).tolist(), "p_domain": (domain_n / drawn).tolist()},
        "weights": {"class_w": w.tolist(), "expected": float(p_class @ w),
                    "effective_class_mass": (p_class * w / (p_class @ w)).tolist() if (p_class @ w) > 0 else [math.nan] * K},
    }


def format_single_report(r: dict) -> str:
    cls, doms = r["classes"], r["domains"]
    e, m, w = r["exact"], r["empirical"], r["weights"]

    def row(name, values, names, fmt="{:7.4f}"):
        return f"{name:<10}" + " ".join(fmt.format(v) for v in values)

    def head(names):
        return " " * 10 + " ".join(f"{n:>7}" for n in names)

    weights = f"{r['class_weights']} class weights normalised by {r['weight_norm']}" if r["weighted"] else "unweighted"
    return "\n".join([
        f"experiment {r['exp']} on {r['data']}: algorithm {r['algorithm']}, sampler {r['sampler']}, {weights}",
        f"class probabilities (exact | empirical from {m['draws']} images over {m['epochs']} epochs)",
        head(cls),
        row("pool n", r["pool_classes"], cls, "{:7d}"),
        row("P(class)", e["p_class"], cls),
        row("empirical", m["p_class"], cls),
        row("weight", w["class_w"], cls, "{:7.3f}"),
        row("P x w", w["effective_class_mass"], cls),
        f"expected weight under the sampler: E[w] {w['expected']:.4g}; 'P x w' is each class's share of the weighted loss",
        "domain probabilities (exact | empirical):",
        head(doms),
        row("pool n", r["pool_domains"], doms, "{:7d}"),
        row("P(domain)", e["p_domain"], doms),
        row("empirical", m["p_domain"], doms),
    ])


def sampler_report(cfg: RunConfig, n_pairs: int = 100_000, bar=None, warm_batches: int = 4) -> dict:
    """The pair sampler's report below, or :func:`single_sampler_report` for a one-image sampler."""
    data = prepare_data(cfg.data, bar=bar)
    if images_per_sample(cfg.algorithm) == 1:
        return single_sampler_report(cfg, data, n_pairs)
    domains = data.manifest["domain"].to_numpy()[data.pool]
    labels = data.labels[data.pool]
    algorithm = pair_algorithm(cfg, data)
    sampler, method = algorithm.sampler, algorithm.describe()
    exact = sampler.exact_probabilities()
    norm = cfg.loss.weight_norm
    w1, w2 = sampler.class_weights(norm)
    pw = sampler.pair_weights(norm)
    K = len(data.classes)
    joint = np.zeros((K, K))
    drawn, epoch, positive = 0, 0, 0
    while drawn < n_pairs:  # whole epochs: each x1 once per epoch, as in training
        pairs = sampler.epoch_draw(epoch)
        np.add.at(joint, (labels[pairs.idx1], labels[pairs.idx2]), 1)
        drawn, epoch, positive = drawn + len(pairs.idx1), epoch + 1, positive + int(pairs.positive.sum())
    emp = joint / drawn
    return {
        "exp": cfg.exp,
        "data": data.identity,
        "loss": {k: method.get(k) for k in ("alpha", "weight_norm", "pairs", "p_same", "exclude_own_domain", "margin")},
        "pool": {d: int((domains == d).sum()) for d in data.train_domains},
        "classes": list(data.classes),
        "exact": {"p1": exact.p1.tolist(), "p2": exact.p2.tolist(), "joint": exact.joint.tolist(), "p_equal": exact.p_equal,
                  "p_positive": exact.p_positive, "p_same_domain": exact.p_same_domain},
        "weights": {"class_w1": w1.tolist(), "class_w2": w2.tolist(), "pair_w": pw.tolist(),
                    "expected": {"w1": float(exact.p1 @ w1), "w2": float(exact.p2 @ w2), "pair_w": float((exact.joint * pw).sum())}},
        "empirical": {"pairs": drawn, "epochs": epoch, "p1": emp.sum(1).tolist(), "p2": emp.sum(0).tolist(), "joint": emp.tolist(),
                      "p_equal": float(np.trace(emp)), "p_positive": positive / drawn},
        "warm_start": warm_start_terms(cfg, data, warm_batches, bar, algorithm),
    }


def warm_start_terms(cfg: RunConfig, data: RunData, n_batches: int, bar=None, algorithm: Algorithm | None = None) -> dict:
    """Mean of each weighted term of the loss, as it enters the total ((1 - alpha) cls, alpha align,
    alpha sep), and of its gradient norm at the features, over the first ``n_batches`` pair batches of
    epoch 0, from the warm start's weights (the parent's best checkpoint, if it has been trained).
    ``algorithm``: the run's, already built by :func:`pair_algorithm` (its epoch-0 batches are seeded)."""
    from domgen.runs.train import parent_config, run_dir_for  # the drivers sit above this report

    if not cfg.warm_start:
        return {"status": "no warm start: the experiment starts from its own initialisation"}
    parent = parent_config(cfg)
    best = run_dir_for(parent, data.identity) / "best.pt"
    if not best.exists():
        return {"status": f"warm start not trained yet (no {best}); train {cfg.warm_start} first"}
    algorithm = algorithm or pair_algorithm(cfg, data)
    model = build_model(cfg.model.arch, "none", len(data.classes))
    model.load_state_dict(load_checkpoint(best)["model"])
    model.train()  # the first training step sees batch statistics
    pool = train_pool(data, cfg.seed)
    draws = [d._replace(idx=data.pool[d.idx]) for d in algorithm.batches(0, cfg.optim.batch_size)[:n_batches]]
    inputs = Inputs(data.manifest["path"].tolist(), data.labels, cfg.transform, cfg.data, torch.device("cpu"), bar,
                    norm=input_normalization(cfg.model.arch), domains=pool.domain_index(data.manifest["domain"]))
    sums, seen = dict.fromkeys(TERMS, 0.0), 0
    for batch in inputs.batches(draws, 0):
        step = algorithm.loss(model, batch)
        values = step_values(step) | dict(step.terms)  # the terms as they enter the loss, and their gradients
        for k in TERMS:
            sums[k] += float(values[k].detach())
        seen += 1
    return {"status": f"from {best}", "batches": seen} | {k: v / max(seen, 1) for k, v in sums.items()}


def format_sampler_report(r: dict) -> str:
    if r.get("kind") == "single":
        return format_single_report(r)
    cls = r["classes"]
    head = "        " + " ".join(f"{c:>7}" for c in cls)

    def row(name, values, fmt="{:7.4f}"):
        return f"{name:<8}" + " ".join(fmt.format(v) for v in values)

    e, w, m, lo = r["exact"], r["weights"], r["empirical"], r["loss"]
    lines = [
        f"experiment {r['exp']} on {r['data']}; training pool: " + ", ".join(f"{d} {n}" for d, n in r["pool"].items()),
        f"pairs: {lo['pairs']}, p_same {lo['p_same']}, exclude own domain {lo['exclude_own_domain']}; "
        f"loss: (1 - {lo['alpha']}) cls + {lo['alpha']} (align + sep), margin {lo['margin']}, weights normalised by {lo['weight_norm']}",
        "class probabilities (exact | empirical from %d pairs over %d epochs)" % (m["pairs"], m["epochs"]),
        head,
        row("P(y1)", e["p1"]),
        row("emp y1", m["p1"]),
        row("P(y2)", e["p2"]),
        row("emp y2", m["p2"]),
        f"P(y1 == y2) exact {e['p_equal']:.4f}  empirical {m['p_equal']:.4f}",
        f"P(positive pair) exact {e['p_positive']:.4f}  empirical {m['p_positive']:.4f};  P(x2 from x1's domain) {e['p_same_domain']:.4f}",
        "joint P(y1 = row, y2 = column), exact:",
        head,
        *[row(c, vals) for c, vals in zip(cls, e["joint"])],
        f"weights (1/P, normalised by {lo['weight_norm']}):",
        head,
        row("w1", w["class_w1"], "{:7.3f}"),
        row("w2", w["class_w2"], "{:7.3f}"),
        "pair weights W[y1, y2]:",
        head,
        *[row(c, vals, "{:7.2g}") for c, vals in zip(cls, w["pair_w"])],
        "expected weight under the sampler: E[w1] {w1:.4g}  E[w2] {w2:.4g}  E[W] {pair_w:.4g}".format(**w["expected"]),
    ]
    ws = r["warm_start"]
    if "cls" in ws:
        lines += [
            f"weighted terms at the warm start ({ws['status']}; mean of {ws['batches']} pair batches, as they enter the loss):",
            f"  (1 - alpha) cls {ws['cls']:.4g}   alpha align {ws['align']:.4g}   alpha sep {ws['sep']:.4g}",
            f"  gradient norm at the features: cls {ws['gn_cls']:.4g}   align {ws['gn_align']:.4g}   sep {ws['gn_sep']:.4g}",
        ]
    else:
        lines.append(f"weighted terms at the warm start: {ws['status']}")
    return "\n".join(lines)
