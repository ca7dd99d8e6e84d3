"""The rating page: a Starlette app on loopback over one `RatingBook` (the same Starlette and uvicorn
the Dagster UI runs on). The page is one self-contained HTML file: no external assets, works offline.
Everything the page may do goes through three JSON endpoints; the store decides what is accepted.

A write must come from the page itself: it carries the token the server put in the page (a page of
another site cannot read it), as `application/json` (which a cross-site form cannot send without a
preflight the server never grants), to a loopback Host (DNS rebinding). Any bad body is a 400 with a
one-line reason, never a 500."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from rest_pipeline.core.human.ratings import PAGE_VERSION, RatingBook, RatingError

PAGE = Path(__file__).with_name("rating_page.html")


LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def rating_app(book: RatingBook, token: str | None = None) -> Starlette:
    token = token or secrets.token_urlsafe(24)
    page = PAGE.read_text(encoding="utf-8").replace("{{WRITE_TOKEN}}", token)

    def error(e: RatingError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def round_info(request: Request) -> JSONResponse:
        r = book.round
        return JSONResponse({"round": r.round_id, "items": r.items, "split": r.split, "page_version": PAGE_VERSION})

    async def next_item(request: Request) -> JSONResponse:
        rater = request.query_params.get("rater", "")
        try:
            after = int(request.query_params.get("after", "-1"))
            book.check_rater(rater)
        except ValueError as e:
            return error(e if isinstance(e, RatingError) else RatingError(f"'after' must be an item number: {e}"))
        item = book.next_item(rater, after)
        view = None if item is None else book.view(item)
        return JSONResponse(
            {
                "rated": len(book.rated(rater)),
                "total": book.round.items,
                "item": None
                if view is None
                else {"index": view.index, "source": view.source, "translations": view.translations},
            }
        )

    def refused(request: Request) -> RatingError | None:
        """Why a write does not come from the page this server served, if it does not."""
        host = request.headers.get("host", "").rsplit(":", 1)[0]
        if host not in LOOPBACK:
            return RatingError(f"writes are accepted for a loopback Host only, got '{host}'", 403)
        if not secrets.compare_digest(request.headers.get("x-rest-token", ""), token):
            return RatingError("missing or wrong page token: rate from the page this server serves", 403)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return RatingError("the body must be sent as application/json", 415)
        return None

    async def rate(request: Request) -> JSONResponse:
        problem = refused(request)
        if problem is not None:
            return error(problem)
        try:
            body = json.loads((await request.body()).decode("utf-8"))
            if not isinstance(body, dict) or not isinstance(body.get("scores"), dict):
                raise RatingError("expected a JSON object with rater, item, scores and an optional comment")
            book.rate(str(body.get("rater", "")), body.get("item"), body["scores"], body.get("comment") or "")
        except UnicodeDecodeError:
            return error(RatingError("the request body is not UTF-8 text"))
        except json.JSONDecodeError:
            return error(RatingError("the request body is not JSON"))
        except RatingError as e:
            return error(e)
        except (ValueError, TypeError, KeyError) as e:  # client input the checks above did not foresee
            return error(RatingError(f"bad request: {type(e).__name__}: {e}".splitlines()[0]))
        rater = str(body["rater"])
        return JSONResponse({"rated": len(book.rated(rater)), "total": book.round.items})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/round", round_info),
            Route("/api/next", next_item),
            Route("/api/rate", rate, methods=["POST"]),
        ]
    )


def serve(book: RatingBook, port: int) -> None:
    """Serve on 127.0.0.1 until interrupted; every stored rating is already on disk."""
    import uvicorn

    uvicorn.run(rating_app(book), host="127.0.0.1", port=port, log_level="warning")
