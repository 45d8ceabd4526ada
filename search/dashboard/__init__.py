"""``search dashboard``: a live Pareto-front dashboard in the browser.

:mod:`search.dashboard.server` holds the FastAPI app (``create_app``) and ``serve``; the page
and its plotting code (plain JS + SVG/canvas, no external libraries) live in ``static/``.
Importing this package imports neither FastAPI nor uvicorn.
"""
