"""The run folder and its files: ``paths`` (what each file is called), ``storage`` (atomic
writes), ``checkpoint`` (safetensors), ``report`` (environment.json) and ``opened``
(:class:`~anomalymap_helpers.runs.opened.Run`, one trained run opened for notebooks 03-05).
"""
