# Makes conf/ importable as the package cvexp.conf once installed (see pyproject.toml).
