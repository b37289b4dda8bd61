"""nslib's benchmarks, side by side with the alternatives and a raw-C floor.

A package of the source tree (not installed with nslib).  Run from the root
of a checkout, as root, with the ``bench`` extra installed::

    python -m benchmarks.run_all [--quick] [--only switching,named,...]
    python -m benchmarks.bench_switching [--quick]

``nslib bench`` runs the first one for you.  See :mod:`benchmarks._harness`.
"""
