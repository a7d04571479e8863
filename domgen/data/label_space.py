"""Label spaces as data: a named, ordered class list that a run's labels, logits and tables follow.

``dermoscopy7`` is Yoon, Hamarneh & Garbi (MICCAI 2019), Table 1's seven classes in its order; the
native dermoscopy sources map their diagnoses onto it. A run picks its space with ``data.label_space``:
empty means the layout's own (``dermoscopy7`` for the native sources, the sorted labels found for a
``metadata_csv`` or ``domain_folders`` root). Images whose label lies outside the chosen space are
dropped and counted, never relabelled. Registering a new space is one ``LABEL_SPACES.add`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from domgen.registry import Registry


@dataclass(frozen=True)
class LabelSpace:
    name: str
    classes: tuple[str, ...]  # the order of logits, confusion matrices and table columns
    description: str = ""

    def __post_init__(self):
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"label space {self.name!r}: classes must be a non-empty list without repeats")

    @property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.classes)


LABEL_SPACES: Registry[LabelSpace] = Registry("label space")
DERMOSCOPY7 = LabelSpace("dermoscopy7", ("nv", "mel", "bcc", "df", "bkl", "vasc", "akiec"),
                         "Yoon et al., MICCAI 2019, Table 1: the seven HAM10000 diagnoses")
LABEL_SPACES.add(DERMOSCOPY7.name, DERMOSCOPY7)


def from_labels(labels: Iterable[str]) -> LabelSpace:
    """The space of a generic root that names none: its labels, sorted (so it does not depend on row order)."""
    found = tuple(sorted({str(x) for x in labels}))
    if not found:
        raise ValueError("no labels found to build a label space from")
    return LabelSpace("labels", found, "the sorted labels of the data root")
