"""The console commands: each module is one thin app (Hydra, or argparse for compare and bench)
whose `main()` is the console entry point, over a library function a Python user can call.

Each module imports torch and Lightning only inside the function that runs the command, so
that `--help`, `--cfg job` and Hydra's tab completion answer without loading them.
"""
