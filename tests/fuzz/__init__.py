"""Fuzzing the protocol: coverage-guided codec targets (atheris) and a live-node fuzz.

``properties`` holds what must hold for any input (pure, also used by the unit tests), ``seeds`` the
valid encodings every corpus starts from, ``codec`` the atheris targets, ``live`` the fuzz of
running nodes, and ``__main__`` the long pass that runs them all (``tests/fuzz/run.sh``). Import it
as ``fuzz`` with ``tests/`` on ``sys.path``: pytest puts it there, and ``run.sh`` sets PYTHONPATH.
"""
