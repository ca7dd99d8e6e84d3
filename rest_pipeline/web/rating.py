"""The rating page: a Starlette app on loopback over one `RatingBook` (the same Starlette and uvicorn
the Dagster UI runs on). The page is one self-contained HTML file: no external assets, works offline.
Everything the page may do goes through three JSON endpoints; the store decides what is accepted."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from rest_pipeline.core.human.ratings import PAGE_VERSION, RatingBook, RatingError

PAGE = Path(__file__).with_name("rating_page.html")


def rating_app(book: RatingBook) -> Starlette:
    page = PAGE.read_text(encoding="utf-8")

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

    async def rate(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("scores"), dict):
                raise RatingError("expected a JSON object with rater, item, scores and an optional comment")
            book.rate(str(body.get("rater", "")), body.get("item"), body["scores"], body.get("comment") or "")
        except json.JSONDecodeError:
            return error(RatingError("the request body is not JSON"))
        except RatingError as e:
            return error(e)
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
