"""Logger plumbing: a CSVLogger that keeps earlier rows, figures to every logger that takes them,
and the values the logger configs compute (absolute paths, run names, MLflow tags)."""
