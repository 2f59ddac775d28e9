"""The classification-loss task (see docs/classification_task.md)."""
