"""Coverage-guided fuzzing of puretor's parsers of hostile input (see ``fuzz/run.py``)."""
