import sys

from .cli import main

if __name__ == "__main__":  # guarded: a spawned unit worker (executor.LocalPool) imports this module too
    sys.exit(main())
