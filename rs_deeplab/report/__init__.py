"""Pages to look at outputs in a browser, offline: maps of predictions and reports of runs (no torch).

:mod:`rs_deeplab.report.page` holds what every page shares (output checks, the atomic write of a page and its
folder, HTML helpers), :mod:`rs_deeplab.report.assets` the vendored JavaScript libraries,
:mod:`rs_deeplab.report.tiles` the tile pyramids, :mod:`rs_deeplab.report.polygons` the outlines and
:mod:`rs_deeplab.report.prediction` the prediction page that ``pipelines/infer.py`` writes beside its outputs.
"""
