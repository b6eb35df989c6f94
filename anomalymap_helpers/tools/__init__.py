"""Tools around the pipeline: ``cli`` (the command line), ``runner`` (the series under papermill),
``progress`` (what the runner prints while a notebook runs), ``benchmark`` (detection benchmark),
``speed`` (speed benchmark) and ``latency`` (the explorer's response time).
"""
