"""One stable-seed rule (domgen.seeds) gives every caller the numbers it drew before the two helpers
(engine.checkpoint.derive_seed, data.splits._stream_seed) were merged: expected values are computed
here from hashlib by hand, and pinned as the integers the old helpers returned."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from domgen.data import splits
from domgen.seeds import derive_seed


def by_hand(text: str, shift: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> shift


def test_training_seeds_are_the_old_63_bit_slash_joined_ones():
    # the trainer's derive_seed(cfg.seed, epoch, "augment") and the pruning driver's calls
    assert derive_seed(0, 3, "augment") == by_hand("0/3/augment", 1) == 8323622155679372282
    assert derive_seed(7, "prune-calibration") == by_hand("7/prune-calibration", 1) == 6281496169569835639
    assert derive_seed(0, 3, "augment") < 2**63  # fits torch.manual_seed's int64


def test_split_seeds_are_the_old_64_bit_pipe_joined_ones():
    assert derive_seed(5, "HAM", "mel", sep="|", bits=64) == by_hand("5|HAM|mel", 0) == 6940816338499735125
    keys = splits._row_keys(pd.Series(["x/a.jpg", "x/b.jpg"]), pd.Series(["MSK", "MSK"]), 3)
    assert keys.dtype == np.uint64
    assert keys.tolist() == [by_hand("nsec|3|MSK|x/a.jpg", 0), by_hand("nsec|3|MSK|x/b.jpg", 0)]
    assert keys.tolist() == [12232753545932372930, 14597988936250776850]


def test_assign_splits_deals_the_same_groups_as_before():
    """Ten one-image groups of one (domain, class): the seeded permutation alone decides who goes where;
    these are the splits the code gave before the seed helpers were merged."""
    rec = pd.DataFrame({"domain": ["HAM"] * 10, "label": ["mel"] * 10, "group": [f"g{i}" for i in range(10)]})
    assert splits.assign_splits(rec, 5).tolist() == [
        "train", "val", "train", "val", "train", "train", "test", "train", "test", "test"]
    assert splits.assign_splits(rec, 6).tolist() == [
        "train", "train", "train", "train", "test", "train", "val", "test", "test", "val"]


def test_bits_out_of_range_fail():
    with pytest.raises(ValueError, match="1..64"):
        derive_seed(1, bits=65)
