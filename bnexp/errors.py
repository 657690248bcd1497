"""Typed user errors: the CLI turns these into one line and exit status 2."""


class BnexpError(Exception):
    """A user error: bad config, missing data, unusable results directory."""


class ConfigError(BnexpError):
    """The config file, a --set override or a sweep value is invalid."""


class DataError(BnexpError):
    """A dataset is missing, corrupt or unusable."""


class ResultsError(BnexpError):
    """The results directory is missing, unwritable or from an incompatible bnexp."""
