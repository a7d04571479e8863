"""MedMNIST v2 (Yang et al., Scientific Data 2023) as a data source: the npz release of the 2D sets,
each file one domain (``data.layout=medmnist``; card: datasets/medmnist.md).

A file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``,
``test_labels``: images ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` uint8, labels ``[N]`` or ``[N, 1]``
integer class indices. The official splits are kept as given: records carry ``official_split``, which the
split manifest uses instead of drawing its own (:func:`domgen.data.splits.build_manifest`), because the
benchmark's published numbers are on these splits and re-splitting would make them incomparable (the card
says more). Multi-label sets (ChestMNIST) are refused: domgen trains single-label classifiers.

Images are written once as PNG files under ``<cache>/medmnist/<file stem>-<content hash>/`` (grayscale
stays one channel; the decoder's RGB conversion repeats it to three, as the backbones expect), so the
image cache, transforms and engine read them like any other source. Class names come from the
``medmnist`` package's ``INFO`` when it is installed, else from the copy below (the card quotes it), else
``class_<i>``; they are made safe for metric keys (``normal, benign`` -> ``normal_benign``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from domgen.data.sources.base import DataLayoutError, LoadResult, make_records

NAME = "medmnist"
SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
LAYOUT = ("one MedMNIST npz file per domain (e.g. breastmnist.npz, breastmnist_224.npz) with keys "
          + ", ".join(KEYS) + "; images [N, H, W] or [N, H, W, 3] uint8, labels [N] or [N, 1] class indices")
# medmnist's INFO[flag]["label"] for the sets a test or the synthetic data uses, copied from medmnist v2.2
# (medmnist/info.py), for machines without the package; the synthetic set borrows BreastMNIST's classes.
LABELS = {
    "breastmnist": {"0": "malignant", "1": "normal, benign"},
    "synthetic_breastmnist": {"0": "malignant", "1": "normal, benign"},
}


def flag_of(stem: str) -> str:
    """``breastmnist_224`` -> ``breastmnist``: the size suffix of the larger releases is not part of the set's name."""
    return re.sub(r"_(28|64|128|224)$", "", stem)


def label_names(stem: str) -> dict[int, str] | None:
    """Index -> class name for the set ``stem``, or None when neither medmnist nor the copy knows it."""
    flag = flag_of(stem)
    try:
        from medmnist import INFO  # optional: only its metadata is read

        labels = INFO[flag]["label"] if flag in INFO else LABELS.get(flag)
    except ImportError:
        labels = LABELS.get(flag)
    if labels is None:
        return None
    return {int(k): re.sub(r"[^a-z0-9]+", "_", str(v).lower()).strip("_") for k, v in labels.items()}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of one file, checked: every key present, images uint8 [N, H, W(, 3)] of one size
    across splits, labels one integer per image within the set's classes. Errors name the file."""
    def bad(msg: str) -> DataLayoutError:
        return DataLayoutError(f"{NAME}: {path}: {msg}. Expected layout: {LAYOUT}")

    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise bad(f"missing key(s) {', '.join(missing)} (has {', '.join(z.files) or 'none'})")
            arrays = {k: z[k] for k in KEYS}
    except (OSError, ValueError) as err:  # not an npz, truncated, or pickled objects
        raise bad(f"cannot be read as an npz file ({err})") from None
    names = label_names(path.stem)
    shape = None
    for split in SPLITS:
        img, lab = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if img.dtype != np.uint8 or not (img.ndim == 3 or (img.ndim == 4 and img.shape[-1] == 3)):
            raise bad(f"{split}_images has shape {img.shape} and dtype {img.dtype}; a 2D set is uint8 [N, H, W] or [N, H, W, 3]")
        if shape is not None and img.shape[1:] != shape:
            raise bad(f"{split}_images are {img.shape[1:]}, the other splits' {shape}")
        shape = img.shape[1:]
        if lab.ndim == 2 and lab.shape[1] > 1:
            raise bad(f"{split}_labels has shape {lab.shape}: a multi-label set (one column per finding), not supported")
        lab = lab.reshape(-1) if lab.ndim == 2 else lab
        if lab.ndim != 1 or len(lab) != len(img) or not np.issubdtype(lab.dtype, np.integer):
            raise bad(f"{split}_labels has shape {arrays[f'{split}_labels'].shape} and dtype {lab.dtype} for {len(img)} "
                      "images; expected one integer class index per image")
        high = len(names) if names is not None else None
        out = lab[(lab < 0) | (lab >= high)] if high is not None else lab[lab < 0]
        if len(out):
            raise bad(f"{split}_labels holds {int(out[0])}, outside the set's classes 0..{(high or 1) - 1}")
        arrays[f"{split}_labels"] = lab.astype(np.int64)
    return arrays


def extract(path: Path, arrays: dict[str, np.ndarray], cache: Path) -> Path:
    """Each image as ``<split>/<index>.png`` in a folder named by the file's content hash, written once
    (to a temporary folder, then renamed: a reader never sees half of it)."""
    from PIL import Image

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    folder = Path(cache) / NAME / f"{path.stem}-{digest}"
    if (folder / "complete").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{np.random.default_rng().integers(1 << 62):x}.tmp")
    for split in SPLITS:
        (tmp / split).mkdir(parents=True)
        for i, img in enumerate(arrays[f"{split}_images"]):
            Image.fromarray(img).save(tmp / split / f"{i}.png")  # [H, W] -> mode L, [H, W, 3] -> RGB
    (tmp / "complete").write_text(f"{path}\n")
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class MedMnist:
    name = NAME
    layout = LAYOUT

    def load_root(self, root: Path, skip_missing: bool = False, cache: Path | None = None) -> dict[str, LoadResult]:
        """Domain (file stem) -> its records with ``official_split``, in sorted file order."""
        root = Path(root)
        files = sorted(root.glob("*.npz"))
        if not files:
            raise DataLayoutError(f"{NAME}: no .npz file in {root}. Expected layout: {LAYOUT}")
        if cache is None:
            raise ValueError("the medmnist layout needs a cache folder for its extracted images")
        out = {}
        for path in files:
            arrays = read_npz(path)
            names = label_names(path.stem) or {}
            folder = extract(path, arrays, cache)
            rows = []
            for split in SPLITS:
                for i, y in enumerate(arrays[f"{split}_labels"]):
                    rows.append({"path": str(folder / split / f"{i}.png"), "label": names.get(int(y), f"class_{int(y)}"),
                                 "group": f"{split}/{i}", "image_id": f"{split}_{i}", "official_split": split})
            out[path.stem] = LoadResult(f"{NAME}:{path.stem}", path.stem, root, make_records(pd.DataFrame(rows), path.stem))
        return out
