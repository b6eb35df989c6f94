"""Errors that speak to the user: what was wrong, where, and what to do next."""

from __future__ import annotations


class AnomalyMapError(Exception):
    """Base class of every error this package raises on purpose."""


class ParameterError(AnomalyMapError, ValueError):
    """A parameter has a value that is not allowed."""


class MissingInputError(AnomalyMapError, FileNotFoundError):
    """A file an earlier step should have written is not there."""


class CheckpointError(AnomalyMapError):
    """A checkpoint is corrupt, of another architecture, or not a safetensors file."""


class DataError(AnomalyMapError):
    """A data file is missing, corrupt, or differs from what a run was made from."""


class TrainingError(AnomalyMapError):
    """Training could not go on (for example, the loss became NaN)."""


class DiskFullError(AnomalyMapError, OSError):
    """The disk filled up while a file was written; nothing was written in its place."""
