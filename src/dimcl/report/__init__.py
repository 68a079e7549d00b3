"""Tables and plots from run directories: :func:`build_report`."""

from dimcl.report.report import build_report

__all__ = ["build_report"]
