"""The pipeline, one package per step, in the order of the notebooks.

- 01 data: ``data`` (MNIST, Fashion-MNIST and folder files, splits)
- 02 training: ``models`` (the model kinds, their damage and augmentation) and ``training`` (the loop,
  each kind's objective, checkpoints and resume, processes, device and precision)
- 03 evaluation: ``scoring`` (the inference loop, maps, the registry of scores) and ``evaluation``
  (metrics; the figures every step draws)
- 04 explorer: ``explorer`` (view state, drawing, widgets)
- 05 latent: ``latent`` (latents, t-SNE)

``progress`` is how a long step reports progress, in a live front end or a log.
"""
