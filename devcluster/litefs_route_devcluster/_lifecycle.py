"""``with`` for the dev cluster's parts: each starts with ``start()`` and stops with an idempotent ``close()``."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's from Python 3.11

__all__ = ["StartsAndCloses"]


class StartsAndCloses:
    """A part that ``with`` starts (the block gets what :meth:`start` returns) and closes on leaving."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
