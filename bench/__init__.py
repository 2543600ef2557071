"""`make bench`: Echo measured beside a bare forwarder (the floor) and LiteLLM, in one run.

``python -m bench.run`` is the harness; each module here holds one part of it
(the fake upstream, the probes, the load generator's driver, the processes,
the statistics, the report). See docs/BENCHMARKS.md.
"""
