"""The pool party benchmark suite: workloads, driver and charts.

Run it with `poolparty-bench` (see docs/bench.md).  Importing this package
imports nothing else: the cells run on interpreters, a free-threaded one
among them, that may lack matplotlib, psutil or poolparty itself.
"""
