"""Step 04, the interactive heatmap explorer.

``view`` holds the state (image, threshold, colour scale) and what follows from it,
``render`` draws the view and writes it to files, ``widgets`` builds the ipywidgets.
Where no widget front end runs (papermill, nbval, GitHub) the explorer shows a PNG.
"""

from anomalymap_helpers.pipeline.explorer.view import Explorer

__all__ = ["Explorer"]
