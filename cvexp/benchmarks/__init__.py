"""Speed measurements: each figure is a ratio measured side by side in one process."""
