"""The catalogue: one movie, similar movies, the most popular ones."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from ..deps import current_engine
from ..engine import NO_ROWS
from ..params import ID_SCHEMA, k_param, parse_genres, parse_id, parse_k, query, query_docs
from ..responses import NOT_FOUND, REJECTED, JSONResponse, movie_list
from ..schemas import MovieResponse, PopularMovies, SimilarMovies
from ..settings import ServingSettings
from .direct import DirectRoute


def router(settings: ServingSettings) -> APIRouter:
    routes = APIRouter(tags=["movies"], route_class=DirectRoute)

    def not_in_catalogue(movie_id: int) -> HTTPException:
        return HTTPException(404, detail=f"movie {movie_id} is not in the catalogue")

    @routes.get(
        "/movies/{movie_id}",
        response_model=MovieResponse,
        responses=NOT_FOUND,
        openapi_extra=query_docs(("movie_id", "path", ID_SCHEMA, True, "the movie")),
    )
    async def get_movie(request: Request) -> Response:
        current = current_engine(request)
        movie_id = parse_id(request.path_params["movie_id"], "movie_id")
        row = current.catalogue_row(movie_id)
        if row is None:
            raise not_in_catalogue(movie_id)
        return JSONResponse({**current.movie_fields[row], "bundle_version": current.version})

    @routes.get(
        "/movies/{movie_id}/similar",
        response_model=SimilarMovies,
        responses=NOT_FOUND,
        openapi_extra=query_docs(("movie_id", "path", ID_SCHEMA, True, "the movie"), k_param(settings.max_k)),
    )
    async def similar_movies(request: Request) -> Response:
        current = current_engine(request)
        movie_id = parse_id(request.path_params["movie_id"], "movie_id")
        k = parse_k(query(request), settings.max_k)
        row = current.catalogue_row(movie_id)
        if row is None:
            raise not_in_catalogue(movie_id)
        scored, strategy = current.similar(row, k)
        return movie_list(request, current, scored, strategy=strategy, k=k, movieId=movie_id)

    @routes.get(
        "/popular",
        response_model=PopularMovies,
        responses=REJECTED,
        openapi_extra=query_docs(
            k_param(settings.max_k),
            ("genre", "query", {"type": "string"}, False, "only movies of this genre"),
        ),
    )
    async def popular(request: Request) -> Response:
        current = current_engine(request)
        params = query(request)
        k = parse_k(params, settings.max_k)
        genre = params.get("genre") or None
        genres = parse_genres(current, genre, "genre", settings.max_list_items)
        scored = current.popular(k, genres, NO_ROWS)
        return movie_list(request, current, scored, strategy="popular_fallback", k=k, genre=genre)

    return routes
