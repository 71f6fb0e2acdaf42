from importlib.metadata import version as _version, PackageNotFoundError as _PNF
try: __version__ = _version("tsai_cbs")
except _PNF: __version__ = "0+unknown"
