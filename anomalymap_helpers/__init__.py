"""AnomalyMap helpers: the small package under the notebook series.

- ``parameters``: every notebook parameter, declared once;
- ``pipeline``: the steps, in the order of the notebooks (data, model, train, scoring,
  metrics, explorer, latent);
- ``runs``: the run folder and its files (paths, storage, checkpoint, report, the opened run);
- ``tools``: the runner, the command line and the benchmarks;
- ``errors``: the errors that speak to the user.
"""

__version__ = "0.1.0"
