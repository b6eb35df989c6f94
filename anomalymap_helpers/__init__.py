"""AnomalyMap helpers: the small package under the notebook series.

- ``parameters``: every notebook parameter, declared once;
- ``pipeline``: the steps, one package each, in the order of the notebooks (data, models and training,
  scoring and evaluation, explorer, latent);
- ``files``: a run's files and atomic writes; ``runs``: a run folder opened, predictions, the report;
- ``commands``: the command line, one module a command;
- ``errors``: the errors that speak to the user.
"""

__version__ = "0.1.0"
