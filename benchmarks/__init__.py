"""m3sh benchmarks: each module is ``python -m benchmarks.<name>`` and prints one JSON object last.

``python -m benchmarks`` (``make bench``) runs them all, writes ``benchmarks/results/<name>.json``
and prints one table of figures against their targets (``benchmarks/__main__.py`` holds the
targets). Benchmarks measure; they never assert: speed is not a test.
"""
