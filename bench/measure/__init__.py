"""Measurement: timing loops, statistics, memory, FLOPs and the machine's ceilings."""
