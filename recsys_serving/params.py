"""Input parsing with one error shape: every 422 is FastAPI's list of ``{type, loc, msg, input}``.

Hot routes parse their query strings and bodies here: FastAPI's per-parameter validation and
dependency resolution cost more than the recommendation itself (measured in
benchmarks/serve_bench.py).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from .engine import Engine
from .schemas import INT64_MAX, INT64_MIN

# (name, where, JSON schema, required, description) of one documented parameter
QueryParam = tuple[str, str, dict[str, Any], bool, str]
ID_LIST = re.compile(r"^(-?\d+(,-?\d+)*)?$")
ID_SCHEMA: dict[str, Any] = {"type": "integer", "format": "int64", "minimum": 1, "maximum": INT64_MAX}
ID_LIST_SCHEMA: dict[str, Any] = {"type": "string", "pattern": ID_LIST.pattern}
Body = TypeVar("Body", bound=BaseModel)


def invalid(field: str, where: str, message: str, value: object) -> HTTPException:
    return HTTPException(
        422, detail=[{"type": "value_error", "loc": [where, field], "msg": message, "input": value}]
    )


def query(request: Request) -> dict[str, str]:
    """The query string as a dict, the last value of a repeated name winning (as Starlette's
    QueryParams.get); plain strings skip the URL-decoding Starlette always does."""
    text = request.scope["query_string"].decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    return dict(part.partition("=")[::2] for part in text.split("&") if part)


def parse_int(value: str, field: str, where: str = "query") -> int:
    try:
        number = int(value)
    except ValueError:
        raise invalid(field, where, "Input should be a valid integer", value) from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise invalid(field, where, "Input should be a 64-bit integer", value)
    return number


def parse_id(value: str, field: str) -> int:
    """A user or movie id in the path: MovieLens ids are positive."""
    number = parse_int(value, field, "path")
    if number < 1:
        raise invalid(field, "path", "Input should be greater than or equal to 1", value)
    return number


def check_k(k: int, max_k: int, where: str, raw: object) -> int:
    if not 1 <= k <= max_k:
        raise invalid("k", where, f"Input should be between 1 and {max_k}", raw)
    return k


def parse_k(params: dict[str, str], max_k: int) -> int:
    raw = params.get("k")
    return 10 if raw is None else check_k(parse_int(raw, "k"), max_k, "query", raw)


def check_length(values: list[Any], field: str, limit: int, where: str = "query") -> None:
    if len(values) > limit:
        raise invalid(field, where, f"at most {limit} entries, got {len(values)}", len(values))


def check_genres(engine: Engine, genres: list[str], field: str, where: str = "query") -> None:
    unknown = engine.unknown_genres(genres)
    if unknown:
        raise invalid(field, where, f"unknown genre(s) {unknown}; known: {engine.genre_names}", unknown)


def parse_id_list(raw: str | None, field: str, limit: int) -> list[int]:
    if not raw:
        return []
    if not ID_LIST.match(raw):
        raise invalid(field, "query", "Input should be comma-separated integers", raw)
    values = [parse_int(v, field) for v in raw.split(",")]
    check_length(values, field, limit)
    return values


def parse_genres(engine: Engine, raw: str | None, field: str, limit: int) -> list[str]:
    genres = [g.strip() for g in raw.split(",") if g.strip()] if raw else []
    check_length(genres, field, limit)
    check_genres(engine, genres, field)
    return genres


def parse_bool(raw: str | None, field: str) -> bool:
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise invalid(field, "query", "Input should be a valid boolean", raw)


def k_param(max_k: int) -> QueryParam:
    schema = {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10}
    return ("k", "query", schema, False, f"number of movies, 1-{max_k} (default 10)")


def parse_body(model: type[Body], raw: bytes) -> Body:
    """A JSON request body validated by ``model`` (whatever the Content-Type says: a client that
    forgets it still gets its answer). Invalid JSON or values are a 422 listing each error at
    ``["body", ...field path]``, as FastAPI reports them."""
    try:
        # Bytes that are not UTF-8 (JSON is UTF-8) become U+FFFD: an error names them readably.
        return model.model_validate_json(raw.decode("utf-8", errors="replace"))
    except ValidationError as exc:
        errors = orjson.loads(exc.json(include_url=False))
        raise HTTPException(
            422, detail=[{**error, "loc": ["body", *error["loc"]]} for error in errors]
        ) from None


def request_body_docs(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its own (:func:`parse_body`)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def query_docs(*params: QueryParam) -> dict[str, Any]:
    """OpenAPI parameters for routes that parse their own query strings (and headers)."""
    return {
        "parameters": [
            {"name": name, "in": where, "required": required, "schema": schema, "description": text}
            for name, where, schema, required, text in params
        ]
    }
