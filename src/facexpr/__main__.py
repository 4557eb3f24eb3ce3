"""``python -m facexpr``: the same as the ``facexpr`` command."""

from facexpr.cli import main

if __name__ == "__main__":
    main()
