"""`python -m tritium` runs the same CLI as the `tritium` console script."""

from tritium.cli import main

if __name__ == "__main__":
    main()
