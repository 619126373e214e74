"""The results history: a database of runs, their trends, steps in them, and the calibrated gate."""
