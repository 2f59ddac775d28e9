"""``python -m discovery``: the same command line as ``discovery``."""

from discovery.cli import main

if __name__ == "__main__":
    main()
