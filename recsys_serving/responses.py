"""Response building shared by the routes: movie lists, the bundle version, the request-log entry."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from .engine import Engine
from .models import Scored
from .schemas import ErrorMessage, InvalidInput

# OpenAPI documentation of the error responses the routes share.
REJECTED: dict[int | str, dict[str, Any]] = {
    422: {"model": InvalidInput, "description": "invalid input; the detail names the field"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorMessage}, **REJECTED}


class JSONResponse(Response):
    """JSON encoded by orjson: encoding a response with the standard library took a sizeable share
    of a recommendation request (benchmarks/serve_bench.py)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def movie_items(engine: Engine, scored: Scored) -> list[dict[str, Any]]:
    """Response items as plain dicts (the schemas document them; building pydantic objects per
    item and re-validating them would cost more than the recommendation itself)."""
    out = []
    fields = engine.movie_fields
    for rank, (row, score) in enumerate(zip(scored.rows.tolist(), scored.scores.tolist(), strict=True), 1):
        item = {**fields[row], "rank": rank, "score": score}
        if scored.because is not None:
            liked = scored.because[rank - 1]
            item["because"] = (
                None
                if liked is None
                else {"movieId": int(engine.item_ids[liked]), "title": engine.titles[liked]}
            )
        out.append(item)
    return out


def movie_list(
    request: Request,
    engine: Engine,
    scored: Scored,
    *,
    strategy: str,
    k: int,
    logged: dict[str, Any] | None = None,
    **fields: object,
) -> JSONResponse:
    """A response listing ``scored`` movies, every field taken from the one ``engine`` the request
    started with, and what the request log keeps of it."""
    items = movie_items(engine, scored)
    logged = dict(logged or {})
    propensities = logged.pop("propensities", None)
    request.state.served = {
        "strategy": strategy,
        "k": k,
        "bundle_version": engine.version,
        # With exploration, each item also carries the probability it was shown in its place.
        "items": [(m["movieId"], m["rank"], m["score"]) for m in items]
        if propensities is None
        else [(m["movieId"], m["rank"], m["score"], p) for m, p in zip(items, propensities, strict=True)],
        **logged,
    }
    return JSONResponse({"bundle_version": engine.version, "strategy": strategy, **fields, "items": items})
