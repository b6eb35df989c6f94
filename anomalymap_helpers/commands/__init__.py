"""The command line, one module a command: ``cli`` (``python -m anomalymap_helpers``), ``run`` (the series
under papermill, with ``kernel``, one kernel for the series, and ``echo``, what it prints while a notebook
runs), ``train`` (the train command, for torchrun, with notebook 02's helpers), ``export`` (the ONNX
detector), ``predict`` (new images) and ``benchmark`` (the published-protocol detection benchmark). The
measuring instruments are in ``benchmarks/``.
"""
