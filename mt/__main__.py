"""`python -m mt` -> cli.main; nothing else."""

from mt.cli import main

if __name__ == "__main__":
    main()
