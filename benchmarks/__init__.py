"""The measuring instruments: scripts that answered a development question, kept beside the
package (as PyTorch's and anomalib's benchmarks are), not inside it. Each runs from the
repository's root as ``python benchmarks/NAME.py --help``; docs/benchmarks.md names the script
behind each figure.

- ``speed.py``: training and scoring throughput against the original design's loop.
- ``time_to_detector.py``: the whole default series against the original loop's training.
- ``schedule_curve.py``: validation MSE and ROC-AUC against images trained on, per schedule.
- ``compare_models.py``: the autoencoder against the VAE, every score, over seeds.
- ``score_selection.py``: how the default score was chosen, on a split of the training images.
- ``precision_report.py``: a run's scores in fp32 against bf16/fp16 on the same weights.
- ``screenshot.py``: notebook 04's explorer (or 05's linked map) in JupyterLab, as a PNG.
- ``explorer_latency.py``: milliseconds from a slider move to the redrawn explorer.
- ``gpu_check.py``: the CUDA tests, speed and the series on a machine with a GPU.
"""
