"""attrx's version: the installed distribution's, or the source tree's when it is not installed."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attrx")
except PackageNotFoundError:  # a source checkout on sys.path without `pip install`
    __version__ = "0.0.0+unknown"
