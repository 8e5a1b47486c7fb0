"""``python -m foundation …``: the same command as ``foundation …``."""

from foundation.cli import main

if __name__ == "__main__":
    main(prog_name="foundation")
