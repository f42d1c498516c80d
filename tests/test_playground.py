"""The page at `/` over HTTP: its files, their security headers, AI_PLAYGROUND=false, and the
files shipped in a built (non-editable) package. What it does in a browser: test_browser.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.playground import ASSETS, CONTENT_SECURITY_POLICY

ROOT = Path(__file__).resolve().parent.parent
FILES = {"/": "text/html", **{f"/assets/{name}": kind for name, kind in ASSETS.items()}}


@pytest.mark.parametrize(("path", "content_type"), FILES.items())
async def test_page_and_assets_carry_security_headers(client, path, content_type):
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == content_type
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert len(await resp.read()) > 100
    head = await client.head(path)
    assert head.status == 200 and head.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_policy_allows_only_this_origin() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "img-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


async def test_page_is_plain_files_with_nothing_from_elsewhere(client):
    html = await (await client.get("/")).text()
    # No inline script or style (the policy would block them), every reference local.
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/assets/playground.js" defer>']
    assert "<style" not in html and not re.search(r"\s(style|on[a-z]+)=", html)
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert references and all(ref.startswith(("/assets/", "#")) for ref in references), references
    for name in ASSETS:
        text = await (await client.get(f"/assets/{name}")).text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), name  # only the SVG namespace


async def test_page_is_open_but_shows_nothing_of_the_configuration(make_client):
    client = await make_client(api_keys="web:0123456789abcdef-web")
    resp = await client.get("/")
    assert resp.status == 200
    html = await resp.text()
    for secret in ("0123456789abcdef-web", "claude-primary", "sk-ant", "127.0.0.1"):
        assert secret not in html
    assert (await client.get("/assets/playground.js")).status == 200
    assert (await client.get("/ai/status")).status == 401  # what the page then calls needs the key


@pytest.mark.parametrize("path", ["/assets/missing.js", "/assets/..%2Fapp.py", "/assets/index.html", "/index.html"])
async def test_unknown_files_are_404_json(client, path):
    resp = await client.get(path)
    assert resp.status == 404
    assert (await resp.json())["code"] == "not_found"


async def test_playground_false_turns_the_page_off(make_client):
    client = await make_client(playground=False)
    for path in FILES:
        resp = await client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["code"] == "not_found"
    assert (await client.get("/health")).status == 200


def test_playground_setting_reads_the_environment(monkeypatch, make_settings):
    monkeypatch.setenv("AI_PLAYGROUND", "false")
    assert make_settings().playground is False
    monkeypatch.setenv("AI_PLAYGROUND", "true")
    assert make_settings().playground is True


def test_built_package_ships_the_page(tmp_path: Path) -> None:
    """A wheel built from the sources and installed elsewhere serves the page from its own
    files (the package data), not from this source tree."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("service", "providers", "storage"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("ai_stream-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True, cwd=tmp_path)
    shutil.rmtree(source)  # nothing left to fall back on
    check = (
        "import service, service.playground as p; files = p.load_static(); "
        "print(service.__file__); print(sorted(files)); print(files['index.html'].body[:15])"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    module_file, names, start = run.stdout.splitlines()
    assert Path(module_file).is_relative_to(site)
    assert names == str(sorted(["index.html", *ASSETS]))
    assert start == "b'<!doctype html>'"
