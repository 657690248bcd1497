"""bnexp: paired with/without-BatchNormalization experiments from one YAML file."""

__version__ = "0.1.0"

# Version of the on-disk results layout (docs/RESULTS_FORMAT.md); bumped on incompatible change.
RESULTS_FORMAT = 1
