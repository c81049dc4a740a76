"""``python -m ftops.cli``: the same as the ``ftops`` command."""

if __name__ == "__main__":
    from ftops.cli import main

    raise SystemExit(main())
