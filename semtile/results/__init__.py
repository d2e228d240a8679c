"""Results of runs for people and notebooks: ``open_results`` gives the run table (pandas) and lazy arrays.

The one reader of result stores above :mod:`semtile.store`: ``semtile report``
and ``semtile evaluate`` go through it.
"""

from semtile.results.maps import MapInfo
from semtile.results.reader import Preview, ResultImage, Results, open_results
from semtile.results.runs import RunTables, read_run_tables
from semtile.results.scores import LabelScores, label_scores, read_answers
from semtile.results.sets import describe_parameters, parameter_set, parameter_sets

__all__ = ["open_results", "Results", "ResultImage", "MapInfo", "Preview", "RunTables", "read_run_tables",
           "LabelScores", "label_scores", "read_answers", "parameter_set", "parameter_sets", "describe_parameters"]
