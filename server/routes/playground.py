"""`GET /playground`: one static page that calls this server's public API from the same origin.

No build step and nothing from third parties: the page, its script and its style are files beside this
package, served with a Content-Security-Policy that allows this origin only. It needs no token to load; the
user pastes one, and the page keeps it in memory (or sessionStorage, if asked).
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

_DIRECTORY = Path(__file__).resolve().parents[1] / "playground"
# What the page may do: its own script and style, images from this origin and from blob: (the results),
# requests to this origin only; no frames, no forms posted elsewhere, no <base> tricks.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
FILES = {
    "/playground": ("index.html", "text/html; charset=utf-8"),
    "/playground/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/playground/style.css": ("style.css", "text/css; charset=utf-8"),
}
PATHS = frozenset(FILES)


@functools.cache
def _content(name: str) -> bytes:
    return (_DIRECTORY / name).read_bytes()


def _serve(path: str):
    name, media_type = FILES[path]

    async def serve() -> Response:
        return Response(_content(name), media_type=media_type, headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        })

    return serve


for _path in FILES:
    router.add_api_route(_path, _serve(_path), methods=["GET"])
