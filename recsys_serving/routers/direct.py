"""Routes whose endpoint takes the request and returns a response, called directly.

FastAPI's request handler resolves dependencies, parses declared parameters and validates a
response model on every request. The hot routes parse their own input (:mod:`..params`) and build
their own response (:mod:`..responses`), so for them that handler is pure overhead; this route
class calls the endpoint instead. The OpenAPI schema is unchanged: it comes from the route's
declaration (``response_model``, ``openapi_extra``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        declared = (
            dependant.path_params
            + dependant.query_params
            + dependant.header_params
            + dependant.cookie_params
            + dependant.body_params
            + dependant.dependencies
        )
        if declared:
            # Nothing would resolve them: refuse at start-up rather than serve without them.
            names = ", ".join(sorted(str(getattr(p, "name", p)) for p in declared))
            raise TypeError(
                f"{path}: a DirectRoute endpoint takes only the Request (declared: {names}); "
                "parse the input in the endpoint (recsys_serving.params)"
            )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint
