"""Sphinx configuration for jaxdl."""

import os
import sys

# Document (and run the tutorials against) this checkout's jaxdl, not whichever one is installed.
_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, _ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))

project = "jaxdl"
author = "jaxdl developers"
extensions = [
    # MyST-NB: the MyST markdown parser plus executed notebooks (docs/tutorials)
    "myst_nb",
    "sphinx.ext.napoleon",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    # MathJax 3 served from the built site's _static/mathjax (no CDN): formulas render offline
    "sphinx-mathjax-offline",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
# Attributes sections as fields: autodoc documents dataclass fields itself, so directives would duplicate.
napoleon_use_ivar = True
exclude_patterns = ["_build"]
templates_path = ["_templates"]
# The theme JAX, Flax and optax publish with; the toctree of index.md is its navigation.
html_theme = "sphinx_book_theme"
html_title = "jaxdl"
html_theme_options = {
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
# Notebooks (MyST markdown with code cells) are executed at build time; an error fails the build.
# "cache" re-executes only notebooks whose code changed (jupyter-cache in _build).
nb_execution_mode = "cache"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# stderr (tqdm's notice that ipywidgets is missing) is not part of the lesson
nb_output_stderr = "remove"
# ref.python: an :ivar: named like another class's field (conv, norm) is ambiguous to Sphinx, harmlessly.
suppress_warnings = ["myst.header", "ref.python"]
