"""Typed user errors: the CLI turns these into one line and exit status 2."""


class BnexpError(Exception):
    """A user error: bad config, missing data, unusable results directory."""


class ConfigError(BnexpError):
    """The config file, a --set or --sweep override or a sweep value is invalid,
    or together they do not mean one experiment (a setting that would be ignored, two runs that are one)."""


class DataError(BnexpError):
    """A dataset is missing, corrupt or unusable."""


class ResultsError(BnexpError):
    """The results directory is missing, unwritable or from an incompatible bnexp."""
