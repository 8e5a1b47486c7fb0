"""``python -m foundation …``: the same command as ``foundation …``."""

from foundation.cli import run

if __name__ == "__main__":
    run()
