"""The report wing: reads an experiment's result files (load), computes its tables (tables,
cells), draws its figures (plots), assembles its sections (sections) and writes the page
(page, write). It reads only what the runs wrote: no config, data or Keras backend.
"""

from bnexp.report.load import Experiment, load_experiment

__all__ = ["Experiment", "REPORT_DIR", "load_experiment", "write_report", "write_reports"]


def __getattr__(name: str):
    # The writers are imported on first use: they bring matplotlib (and with it PIL), which reading
    # an experiment, as a notebook does, never needs.
    if name in ("REPORT_DIR", "write_report", "write_reports"):
        from bnexp.report import write

        return getattr(write, name)
    raise AttributeError(f"module 'bnexp.report' has no attribute {name!r}")
