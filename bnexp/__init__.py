"""bnexp: paired with/without-BatchNormalization experiments from one YAML file."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # RESULTS_FORMAT belongs to bnexp.store, the results layout's owner, and is offered here to code
    # that reads results; loading it on demand keeps `import bnexp` (and `bnexp --help`) from loading the store.
    if name == "RESULTS_FORMAT":
        from bnexp.store import RESULTS_FORMAT

        return RESULTS_FORMAT
    raise AttributeError(f"module 'bnexp' has no attribute {name!r}")
