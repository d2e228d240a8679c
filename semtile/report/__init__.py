"""``semtile report``: one HTML page over a run's results (summary, figures, a table of every image, maps).

Built on the results API (:mod:`semtile.results`): jinja2 renders the page,
matplotlib draws the figures, Pillow writes the pictures of each image.
"""

from semtile.report.page import REPORT_FORMAT, ReportOutcome, build_report

__all__ = ["build_report", "ReportOutcome", "REPORT_FORMAT"]
