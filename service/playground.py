"""The page at `/`: a playground to try the service and its live status (AI_PLAYGROUND).

Plain HTML, CSS and JavaScript shipped in the package (`service/static/`), no framework and
nothing from elsewhere, so it works offline. The page is open like /health and shows nothing
by itself; it calls the `/ai/...` routes with the key the user enters.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from service.errors import ApiError

# Only this origin's own files; no inline script or style, no frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
PAGE = "index.html"
# name -> content type of each asset the page loads
ASSETS = {
    "playground.js": "text/javascript",
    "playground.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str


def load_static() -> dict[str, StaticFile]:
    """The page and its assets, read from the installed package (not the source tree)."""
    folder = resources.files("service").joinpath("static")
    files = {PAGE: "text/html", **ASSETS}
    try:
        return {name: StaticFile(folder.joinpath(name).read_bytes(), kind) for name, kind in files.items()}
    except OSError as exc:
        raise RuntimeError(f"the page's files are missing from the package ({exc.strerror}); reinstall it") from None


def _respond(file: StaticFile) -> web.Response:
    return web.Response(body=file.body, content_type=file.content_type, charset="utf-8", headers=SECURITY_HEADERS)


def add_playground_routes(app: web.Application) -> None:
    static = load_static()

    async def page(request: web.Request) -> web.Response:
        return _respond(static[PAGE])

    async def asset(request: web.Request) -> web.Response:
        file = static.get(request.match_info["name"]) if request.match_info["name"] in ASSETS else None
        if file is None:
            raise ApiError(404, "not_found", "There is nothing at this path.")
        return _respond(file)

    app.router.add_get("/", page, allow_head=True)
    app.router.add_get("/assets/{name}", asset, allow_head=True)
