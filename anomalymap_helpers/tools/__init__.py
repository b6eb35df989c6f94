"""The product's tools around the pipeline: ``cli`` (the command line), ``runner`` (the series under
papermill), ``kernel`` (one kernel for the series), ``progress`` (what the runner prints while a
notebook runs), ``training`` (the train command), ``export`` (the ONNX detector) and ``benchmark``
(the published-protocol detection benchmark). The measuring instruments are in ``benchmarks/``.
"""
