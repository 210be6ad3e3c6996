"""In-memory fakes for two-party tests of the sans-I/O core (no sockets, no loop).

Import as ``fakes.relay`` / ``fakes.sink`` with ``tests/`` on ``sys.path`` (the
``tests/unit/core/conftest.py`` and ``bench/bench_cells.py`` arrange that).
"""
