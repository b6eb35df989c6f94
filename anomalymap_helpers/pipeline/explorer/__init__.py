"""Step 04, the interactive heatmap explorer, and step 05's latent map linked to it.

``state`` holds the state (image, threshold, colour scale) and what follows from it,
``render`` draws it and writes it to files, ``widgets`` builds the ipywidgets, ``view``'s
:class:`Explorer` puts the three together, and ``linked`` puts the t-SNE map (plotly) beside
the explorer, each following the other; each imports only those before it.
Where no widget front end runs (papermill, nbval, GitHub) both show a PNG.
"""

from anomalymap_helpers.pipeline.explorer.linked import LatentExplorer
from anomalymap_helpers.pipeline.explorer.view import Explorer

__all__ = ["Explorer", "LatentExplorer"]
