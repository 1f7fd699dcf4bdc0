"""Recommendations for a known user and for a new user from the movies they like."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..deps import service_of, split_engine
from ..engine import NO_ROWS
from ..params import (
    ID_LIST_SCHEMA,
    ID_SCHEMA,
    check_genres,
    check_k,
    check_length,
    k_param,
    parse_body,
    parse_bool,
    parse_genres,
    parse_id,
    parse_id_list,
    parse_k,
    query,
    query_docs,
    request_body_docs,
)
from ..responses import REJECTED, movie_list
from ..schemas import ColdStartRequest, Recommendations
from ..settings import ServingSettings
from .direct import DirectRoute


def router(settings: ServingSettings) -> APIRouter:
    routes = APIRouter(tags=["recommendations"], route_class=DirectRoute)

    @routes.get(
        "/users/{user_id}/recommendations",
        response_model=Recommendations,
        responses=REJECTED,
        openapi_extra=query_docs(
            ("user_id", "path", ID_SCHEMA, True, "the user"),
            k_param(settings.max_k),
            ("exclude", "query", ID_LIST_SCHEMA, False, "comma-separated movie ids never to return"),
            ("genres", "query", {"type": "string"}, False, "comma-separated genres: only movies of these"),
            ("explain", "query", {"type": "boolean"}, False, "say which liked movie contributed most"),
        ),
    )
    async def recommend_for_user(request: Request) -> Response:
        service = service_of(request)
        params, limit = query(request), settings.max_list_items
        user_id = parse_id(request.path_params["user_id"], "user_id")
        current, assignment = split_engine(service, user_id)
        k = parse_k(params, settings.max_k)
        excluded = parse_id_list(params.get("exclude"), "exclude", limit)
        genres = parse_genres(current, params.get("genres"), "genres", limit)
        explain = parse_bool(params.get("explain"), "explain")
        exclude_rows = current.catalogue_rows(excluded) if excluded else NO_ROWS
        exclude_rows = exclude_rows[exclude_rows >= 0]
        row = current.user_row(user_id)
        experiment = assignment.logged() if assignment else {}
        if row is None:
            service.metrics.fallbacks.labels("unknown_user").inc()
            scored, strategy = current.popular(k, genres, exclude_rows), "popular_fallback"
        else:
            scored, strategy = current.recommend_known(row, k, exclude_rows, genres, explain)
            if strategy == "popular_fallback":
                service.metrics.fallbacks.labels("no_positives").inc()
            if assignment is not None and assignment.epsilon > 0 and not genres:
                blocked = np.concatenate([current.seen_rows(row), exclude_rows])
                scored, propensities = current.explore(scored, blocked, assignment.epsilon, service.rng)
                experiment["propensities"] = propensities
        return movie_list(
            request,
            current,
            scored,
            strategy=strategy,
            k=k,
            logged={"user_id": user_id, **experiment},
            model_kind=current.kind,
            user_id=user_id,
            **(assignment.response() if assignment else {}),
            unknown_movie_ids=[],
        )

    @routes.post(
        "/recommendations",
        response_model=Recommendations,
        responses=REJECTED,
        openapi_extra={
            **query_docs(
                (
                    "x-request-key",
                    "header",
                    {"type": "string"},
                    False,
                    "splits cold-start requests in an A/B test",
                )
            ),
            **request_body_docs(ColdStartRequest),
        },
    )
    async def recommend_cold_start(request: Request) -> Response:
        body = parse_body(ColdStartRequest, await request.body())
        # Without a request key, a cold-start request is assigned by its client address.
        key = request.headers.get("x-request-key") or (request.client.host if request.client else "unknown")
        service = service_of(request)
        current, assignment = split_engine(service, f"request:{key}")
        limit = settings.max_list_items
        check_length(body.liked, "liked", limit, "body")
        check_length(body.genres, "genres", limit, "body")
        check_genres(current, body.genres, "genres", "body")
        check_k(body.k, settings.max_k, "body", body.k)
        # A handful of ids: plain Python costs less than numpy calls.
        rows = [current.catalogue_row(m) for m in body.liked]
        unknown = sorted({m for m, row in zip(body.liked, rows, strict=True) if row is None})
        known = np.array(sorted({row for row in rows if row is not None}), dtype=np.int64)
        if not any(row < current.n_items for row in known.tolist()):
            service.metrics.fallbacks.labels("no_known_liked").inc()
            scored, strategy = current.popular(body.k, body.genres, known), "popular_fallback"
        else:
            scored, strategy = current.recommend_liked(known, body.k, body.genres, body.explain), "fold_in"
        return movie_list(
            request,
            current,
            scored,
            strategy=strategy,
            k=body.k,
            # Cold start is never explored: the log says epsilon 0 inside an experiment.
            logged={"cold_start": True, **({**assignment.logged(), "epsilon": 0.0} if assignment else {})},
            model_kind=current.kind,
            user_id=None,
            **(assignment.response() if assignment else {}),
            unknown_movie_ids=unknown,
        )

    return routes
