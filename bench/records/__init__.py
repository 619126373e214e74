"""The results format, owned in one place: columns (`columns`), reasons (`reasons`), writing (`write`), reading (`read`)."""
