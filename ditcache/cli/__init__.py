"""The ``ditcache`` command line: the parser (parser.py), shared argument types (arguments.py), one module per
command group (plan, sample, export, calibration, generate, demo) and the entry points (main.py)."""

from .main import export_engines_main, main
from .parser import build_parser

__all__ = ["build_parser", "export_engines_main", "main"]
