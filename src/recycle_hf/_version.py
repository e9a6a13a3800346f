"""The package version, in a module of its own so that any module can read it without importing the package
(`recycle_hf/__init__.py` imports the adapter code, which records this version in every adapter it writes), and so
that setuptools reads it statically (`setup.cfg`: `version = attr: recycle_hf._version.__version__`)."""

__version__ = "0.1.0"
