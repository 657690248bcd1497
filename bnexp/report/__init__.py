"""The report wing: reads an experiment's result files (load), computes its tables (tables,
cells), draws its figures (plots), assembles its sections (sections) and writes the page
(page, write). It reads only what the runs wrote: no config, data or Keras backend.
"""

from bnexp.report.load import Experiment, load_experiment
from bnexp.report.write import REPORT_DIR, write_report, write_reports

__all__ = ["Experiment", "REPORT_DIR", "load_experiment", "write_report", "write_reports"]
