"""Typed user errors: the CLI turns these into one line and exit status 2."""

import re


class BnexpError(Exception):
    """A user error: bad config, missing data, unusable results directory."""


class ConfigError(BnexpError):
    """The config file, a --set or --sweep override or a sweep value is invalid,
    or together they do not mean one experiment (a setting that would be ignored, two runs that are one)."""


class DataError(BnexpError):
    """A dataset is missing, corrupt or unusable."""


class ResultsError(BnexpError):
    """The results directory is missing, unwritable or from an incompatible bnexp."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, without terminal colour codes (Keras colours some of its
    messages; some libraries end theirs with a newline), or its type when it has none."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split()) or type(exc).__name__
