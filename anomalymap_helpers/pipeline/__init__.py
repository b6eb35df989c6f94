"""The pipeline, in the order of the notebooks.

- 01 data: ``data`` (MNIST files, splits)
- 02 training: ``model`` (the autoencoder), ``device`` (device and precision), ``train`` (the loop)
- 03 evaluation: ``scoring`` (the inference loop, maps, scores), ``metrics`` (ROC-AUC, threshold)
- 04 explorer: ``explorer`` (view state, drawing, widgets)
- 05 latent: ``latent`` (latents, t-SNE)

``plotting`` holds the figures every step draws.
"""
