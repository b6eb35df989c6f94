"""AnomalyMap helpers: the small package under the notebook series.

One module per concern: ``data``, ``model``, ``train``, ``checkpoint``,
``scoring``, ``metrics``, ``plotting``, ``explorer``, ``latent``, ``run``.
"""

__version__ = "0.1.0"
