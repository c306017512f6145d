"""The search web page: a small Flask app over a :class:`~fastreid_ext.search.engine.Searcher`.

Why Flask and not Gradio (this field's usual demo library):

* install weight: Flask adds four small pure-Python packages to what the environment already has
  (Werkzeug and Jinja2 come with TensorBoard); Gradio brings FastAPI, uvicorn, pandas, httpx,
  gradio_client, a bundled front-end and more -- tens of MB for one page;
* file serving: Gradio serves files through its own cache and ``allowed_paths`` rules; here one
  route serves images and :class:`~fastreid_ext.search.file_guard.FileGuard` decides every request
  (gallery images under the index's roots only, symlinks and ``..`` resolved), which a test checks;
* browser tests: the page is plain server-rendered HTML (a form, ``<figure>`` per hit with
  ``data-rank``/``data-score``/``data-pid``), with no JavaScript, no web-socket queue and no
  resources fetched from outside the machine, so a headless browser drives it without waiting on
  a front-end framework.

Routes:

* ``GET /``: the page; ``?q=CAPTION&k=K`` runs a text search (text-image index).
* ``POST /`` (multipart: ``image`` file, ``modality``, ``k``): an image search (visible-infrared).
* ``GET /api/search?q=CAPTION&k=K``: the same text search as JSON (the CLI's result record).
* ``GET /image/<root>/<relative path>``: a gallery image, only as :class:`FileGuard` allows.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any, Dict, List, Optional, Tuple

from flask import Flask, abort, jsonify, render_template_string, request, send_file, url_for
from PIL import Image, UnidentifiedImageError
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server as werkzeug_make_server

from .engine import Searcher, SearchError
from .file_guard import FileGuard, RefusedPath
from .queries import MODALITIES
from .records import Query, SearchResult

__all__ = ["create_app", "make_server"]

logger = logging.getLogger(__name__)

#: Largest accepted upload (query image) in bytes.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fastreid-ext person search</title>
<style>
body { font-family: sans-serif; margin: 1.5em; }
form { margin: 1em 0; }
#query { width: 40em; max-width: 90%; }
#topk { width: 4em; }
.meta { color: #555; font-size: 0.85em; }
.error { color: #b00; font-weight: bold; }
#results { display: flex; flex-wrap: wrap; gap: 10px; }
figure.hit { margin: 0; text-align: center; font-size: 0.85em; }
figure.hit img { height: {{ cell_h }}px; border: 2px solid #aaa; display: block; }
#query-image img { height: {{ cell_h }}px; border: 2px solid #05c; }
</style></head>
<body>
<h1>Person search</h1>
<p class="meta">index {{ info.index }} &middot; {{ info.task }} &middot;
{{ info.gallery_size }} gallery images &middot; model {{ info.model_fingerprint }}</p>
{% if kind == "text" %}
<form id="search-form" method="get" action="{{ url_for('page') }}">
  <input id="query" name="q" type="text" value="{{ q }}" placeholder="describe the person"
         required autofocus>
  top-k <input id="topk" name="k" type="number" min="1" max="{{ max_k }}" value="{{ k }}">
  <button id="submit" type="submit">Search</button>
</form>
{% else %}
<form id="search-form" method="post" action="{{ url_for('page') }}"
      enctype="multipart/form-data">
  <input id="image" name="image" type="file" accept="image/*" required>
  <select id="modality" name="modality">
  {% for m in modalities %}<option value="{{ m }}">{{ m }}</option>{% endfor %}
  </select>
  top-k <input id="topk" name="k" type="number" min="1" max="{{ max_k }}" value="{{ k }}">
  <button id="submit" type="submit">Search</button>
</form>
{% endif %}
{% if error %}<p id="error" class="error">{{ error }}</p>{% endif %}
{% if result %}
<p id="summary">Top {{ hits|length }} for {% if query_image %}a {{ result.query.modality }} image
{% else %}&ldquo;{{ result.query.text }}&rdquo;{% endif %}</p>
{% if query_image %}<div id="query-image"><img src="{{ query_image }}" alt="query"></div>{% endif %}
<div id="results">
{% for h in hits %}
  <figure class="hit" data-rank="{{ h.rank }}" data-score="{{ '%.6f'|format(h.score) }}"
          data-pid="{{ '' if h.pid is none else h.pid }}" data-path="{{ h.path }}">
    {% if h.url %}<img src="{{ h.url }}" alt="rank {{ h.rank }}">
    {% else %}<span class="error">image outside the index roots</span>{% endif %}
    <figcaption>#{{ h.rank }} &middot; {{ '%.4f'|format(h.score) }}
    {% if h.pid is not none %}&middot; pid {{ h.pid }}{% endif %}</figcaption>
  </figure>
{% endfor %}
</div>
{% endif %}
</body></html>
"""


def _parse_k(raw: Optional[str], default: int, max_k: int) -> int:
    if raw in (None, ""):
        return default
    try:
        k = int(raw)
    except ValueError:
        raise SearchError(f"top-k must be an integer, got {raw!r}") from None
    if k < 1:
        raise SearchError(f"top-k must be at least 1, got {k}")
    return min(k, max_k)


def _data_url(image: Image.Image, height: int) -> str:
    """A small PNG of ``image`` as a ``data:`` URL (the uploaded query is shown, never stored)."""
    thumb = image.copy()
    thumb.thumbnail((height * 4, height))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def create_app(searcher: Searcher, topk: int = 10, max_topk: int = 100, cell_h: int = 128) -> Flask:
    """The Flask app of the search page (see the module docstring for the routes).

    Args:
        searcher: the model and gallery index to search.
        topk: the default number of results.
        max_topk: the largest k a request may ask for (also capped at the gallery size).
        cell_h: displayed image height in pixels.
    """
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    guard = FileGuard(searcher.index.roots, searcher.index.paths, forbidden=[searcher.index_dir])
    max_k = max(1, min(max_topk, searcher.gallery_size))
    default_k = min(topk, max_k)
    app = Flask(__name__, static_folder=None)  # no /static route: images go through the guard
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.url_map.merge_slashes = False  # "//etc/passwd" reaches the guard instead of a redirect
    info = searcher.info()

    def hit_records(result: SearchResult) -> List[Dict[str, Any]]:
        out = []
        for h in result.hits:
            parts = guard.url_parts(h.path)
            url = url_for("image", root=parts[0], rel=parts[1]) if parts else None
            out.append({**h.to_dict(), "url": url})
        return out

    def render(status: int = 200, **kw: Any) -> Tuple[str, int]:
        kw.setdefault("q", "")
        kw.setdefault("k", default_k)
        html = render_template_string(
            _PAGE,
            info=info,
            kind=searcher.query_kind,
            modalities=MODALITIES,
            max_k=max_k,
            cell_h=cell_h,
            **kw,
        )
        return html, status

    def text_search(text: str, k: int) -> SearchResult:
        return searcher.search([Query(text=text, source="web")], k)[0]

    @app.get("/")
    def page():
        q = request.args.get("q", "").strip()
        try:
            k = _parse_k(request.args.get("k"), default_k, max_k)
        except SearchError as e:
            return render(400, error=str(e), q=q)
        if not q:
            return render(k=k)
        if searcher.query_kind != "text":
            return render(400, error="this index takes query images, not captions", k=k)
        result = text_search(q, k)
        return render(q=q, k=k, result=result, hits=hit_records(result))

    @app.post("/")
    def page_upload():
        if searcher.query_kind != "image":
            return render(400, error="this index takes captions: use the text box")
        try:
            k = _parse_k(request.form.get("k"), default_k, max_k)
        except SearchError as e:
            return render(400, error=str(e))
        modality = request.form.get("modality", "")
        upload = request.files.get("image")
        if modality not in MODALITIES:
            return render(400, error=f"modality must be one of {', '.join(MODALITIES)}", k=k)
        if upload is None or not upload.filename:
            return render(400, error="choose a query image", k=k)
        try:
            with Image.open(upload.stream) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            return render(400, error=f"{upload.filename} is not a readable image ({e})", k=k)
        query = Query(image=upload.filename, modality=modality, source="web upload")
        result = searcher.rank([query], searcher.encode_image(image, modality), k)[0]
        return render(
            k=k, result=result, hits=hit_records(result), query_image=_data_url(image, cell_h)
        )

    @app.get("/api/search")
    def api_search():
        q = request.args.get("q", "").strip()
        try:
            k = _parse_k(request.args.get("k"), default_k, max_k)
            if not q:
                raise SearchError("missing query text (?q=...)")
            if searcher.query_kind != "text":
                raise SearchError("this index takes query images, not captions")
        except SearchError as e:
            return jsonify(error=str(e)), 400
        return jsonify({**info, "topk": k, "result": text_search(q, k).to_dict()})

    @app.get("/image/<int:root>/<path:rel>")
    def image(root: int, rel: str):
        try:
            path = guard.resolve(root, rel)
        except RefusedPath as e:
            logger.warning("refused image request %s: %s", request.path, e.reason)
            abort(e.status, description=f"Refused: {e.reason}.")
        response = send_file(path, max_age=3600)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.after_request
    def headers(response):
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
            "form-action 'self'",
        )
        return response

    return app


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    """A threaded WSGI server for ``app`` bound to ``host:port`` (``port`` 0: a free one; the
    bound address is ``server.socket.getsockname()``). Call ``serve_forever()`` to run it.

    Werkzeug's server: enough for one person's local search page; put a production WSGI server
    in front for anything shared.
    """
    return werkzeug_make_server(host, port, app, threaded=True)
