"""The package version, in a module of its own so that reading it loads no model code."""

__version__ = "0.1.0"
