"""Request and response models: the API's contract, and its OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .experiments import Experiment

# A known user is ranked by the served model (its kind names the strategy); a new user's liked movies
# are scored by the same model (``fold_in``); anyone else gets the most popular movies. Movies the
# model was not trained on are found by content (``content``: genres, year, tags).
Strategy = Literal["als", "ease", "item_knn", "fold_in", "popular_fallback"]
ModelKind = Literal["als", "ease", "item_knn"]
SimilarityStrategy = Literal["als", "ease", "item_knn", "content"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Ids are stored as int64 (numpy, SQLite, JSON encoders): a larger number is a client error.
Id = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class RequestLogStatus(BaseModel):
    written: int = Field(description="rows written since the service started")
    pending: int = Field(description="rows waiting for the next write")
    lost: int = Field(description="rows given up on (refused by SQLite, or over the backlog cap)")
    error: str | None = Field(None, description="why the last write failed; cleared by the next success")


class Readiness(BaseModel):
    ready: bool
    bundle_version: str | None = None
    model_kind: ModelKind | None = None
    dataset: str | None = None
    users: int | None = None
    items: int | None = None
    loaded_at: str | None = None
    source: str | None = Field(None, description="where the served bundle was found")
    error: str | None = Field(None, description="why the newest promoted bundle is not served")
    message: str | None = None
    request_log: RequestLogStatus | None = None


class Movie(BaseModel):
    movieId: int
    title: str
    year: int | None
    genres: list[str]
    content_scored: bool = Field(
        False,
        description="a movie the model was not trained on (new, or rarely rated), scored from its "
        "content; only present when true",
    )


class MovieResponse(Movie):
    bundle_version: str


class Because(BaseModel):
    movieId: int
    title: str


class RecommendedMovie(Movie):
    rank: int
    score: float
    because: Because | None = Field(None, description="the liked movie that contributed most (explain=true)")


class ExperimentAssignment(BaseModel):
    id: str
    arm: str


class Recommendations(BaseModel):
    bundle_version: str
    model_kind: ModelKind = Field(description="the kind of model the served bundle holds")
    strategy: Strategy
    user_id: int | None = None
    items: list[RecommendedMovie]
    experiment: ExperimentAssignment | None = Field(
        None, description="the A/B experiment and arm that served this request, when one is running"
    )
    unknown_movie_ids: list[int] = Field(
        default_factory=list,
        description="ids not in the catalogue, ignored (liked movies the model was not trained on "
        "are in the catalogue; they are left out of the list, and only the model's own count)",
    )


class SimilarMovies(BaseModel):
    bundle_version: str
    strategy: SimilarityStrategy = Field(
        description="the model whose item similarity ranked the list, or `content` for a movie the "
        "model was not trained on (content similarity: genres, year, tags)"
    )
    movieId: int
    items: list[RecommendedMovie]


class PopularMovies(BaseModel):
    bundle_version: str
    strategy: Literal["popular_fallback"] = "popular_fallback"
    genre: str | None
    items: list[RecommendedMovie]


class ColdStartRequest(BaseModel):
    # Strict: the schema says boolean and integer, so 0.0 or "1" is refused, not coerced.
    model_config = ConfigDict(strict=True)

    liked: list[Id] = Field(..., description="movie ids the new user likes")
    k: int = Field(10, ge=1)
    genres: list[str] = Field(default_factory=list, description="only recommend movies of these genres")
    explain: bool = False


class ReloadResult(BaseModel):
    bundle_version: str | None
    changed: bool
    error: str | None = None


class ErrorMessage(BaseModel):
    detail: str


class InvalidInput(BaseModel):
    detail: list[dict[str, Any]] = Field(
        ..., description="what is wrong, FastAPI's shape: a list of {type, loc, msg, input}"
    )


class ExperimentStatus(BaseModel):
    running: Experiment | None = Field(None, description="the experiment being served, if any")
    arms: dict[str, str] = Field(default_factory=dict, description="arm -> bundle version it serves now")
    weights: dict[str, float] = Field(default_factory=dict, description="arm -> share of users")
    error: str | None = Field(None, description="why the experiment in the file is not served")
