"""`python -m adapter`: the OpenAI adapter on its own (flags: see `adapter.cli`)."""

from adapter.cli import main

if __name__ == "__main__":
    main()
