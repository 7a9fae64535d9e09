"""Process plumbing shared by the entry points: Hydra apps, run directories, resume, DDP, errors."""
