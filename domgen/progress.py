"""Progress without printing: library code receives a bar *factory* from the CLI (tqdm) or nothing.

``LazyBar`` creates the real bar on its first update, so a step that finds its work already cached
(the synthetic benchmark, the image cache) shows no empty bar.
"""

from __future__ import annotations

from typing import Any, Callable


class LazyBar:
    def __init__(self, factory: Callable[..., Any], **kwargs):
        self.factory, self.kwargs, self.bar = factory, kwargs, None
        self.total = kwargs.pop("total", None)

    def update(self, n: int = 1) -> None:
        if self.bar is None:
            self.bar = self.factory(total=self.total, **self.kwargs)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def lazy_bar(factory: Callable[..., Any] | None, **kwargs) -> LazyBar | None:
    return LazyBar(factory, **kwargs) if factory is not None else None
