"""Sphinx configuration for jaxdl."""

project = "jaxdl"
author = "jaxdl developers"
extensions = [
    "myst_parser",
    "sphinx.ext.napoleon",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
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
html_theme = "alabaster"
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
# ref.python: an :ivar: named like another class's field (conv, norm) is ambiguous to Sphinx, harmlessly.
suppress_warnings = ["myst.header", "ref.python"]
