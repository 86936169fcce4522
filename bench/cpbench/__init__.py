"""The benchmark driver behind bench/run.py, one job per module.

settings     what a run is asked to do, and the names every module shares
cli          the command line: flags in, result file and table out
environment  the machine as the run found it, and the congestion control it runs under
procfs       /proc: process trees, their CPU ticks and memory, every CPU's load
processes    starting children pinned and stopping process trees by PID
tools        the C load generator and origin: built when stale, run and read
targets      the proxies under test: config, start, policy check, stop
tracers      valgrind's callgrind and strace, for the counts that do not drift
journal      what a run records besides figures: raw output, notes, noise
scenarios    rate, throughput, idle, instructions, syscalls: each a set of figures
report       medians over rounds, ratios, and the Markdown table
explain      `connectproxy explain` on the large config: wall time from start to answer
driver       one whole run: the rounds, in alternating order, and the result

Only the Python standard library is used, so any python3 >= 3.11 can run it.
"""
