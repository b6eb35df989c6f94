"""The lowest layer: where a run's files live (``paths``) and how every file is written (``storage``,
atomically). Everything that writes sits above it; it imports nothing of the package but its errors."""
