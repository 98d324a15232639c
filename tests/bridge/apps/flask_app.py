"""The Flask recipe: a sync view calling async code through loopsafe.run_async."""

from __future__ import annotations

from flask import Flask

import loopsafe

from .work import handle, setup

setup()
app = Flask(__name__)


@app.get("/")
def index() -> str:
    return f"ok {loopsafe.run_async(handle(), timeout=10)}"
