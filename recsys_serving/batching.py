"""Cold starts that arrive together are ranked together.

A cold start's cost at 60k movies is one pass over every item's factors (about 0.4 ms on one core,
bound by memory, not arithmetic). The requests a server holds at the same moment reach their
search in the same turn of the event loop; :class:`SearchBatcher` collects them and ranks them
with one matrix product, so the factors are read once for all of them. Nothing waits for company:
the batch is ranked as soon as the requests already running have reached it (``call_soon``), so
a lone request pays no delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from .engine import Engine, LikedQuery
from .models import FactorModel, Scored


class SearchBatcher:
    def __init__(self, on_batch: Callable[[int], None] = lambda size: None) -> None:
        self._pending: list[tuple[FactorModel, np.ndarray, LikedQuery, asyncio.Future[Scored]]] = []
        self._on_batch = on_batch  # told each batch's size (the API's metrics histogram)

    async def rank_liked(self, engine: Engine, query: LikedQuery) -> Scored:
        """``engine.rank_liked(query)``; ALS queries behind a flat index are ranked with whatever
        else is waiting (the other kinds' searches gain nothing from company)."""
        model = engine.model
        if query.vector is None or not isinstance(model, FactorModel) or not model.scan_exactly:
            return engine.rank_liked(query)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored] = loop.create_future()
        self._pending.append((model, query.vector, query, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        # A hot swap between two requests of one turn leaves them on different models.
        for model in {id(entry[0]): entry[0] for entry in pending}.values():
            group = [entry for entry in pending if entry[0] is model and not entry[3].done()]
            if not group:
                continue
            self._on_batch(len(group))
            try:
                queries = [query for _, _, query, _ in group]
                ranked = model.rank_vectors(
                    np.stack([vector for _, vector, _, _ in group]),
                    [query.k for query in queries],
                    [query.allowed for query in queries],
                    [query.blocked for query in queries],
                )
            except Exception as exc:  # every waiting request answers with the error, none hangs
                for *_, future in group:
                    future.set_exception(exc)
                continue
            for (*_, future), scored in zip(group, ranked, strict=True):
                future.set_result(scored)
