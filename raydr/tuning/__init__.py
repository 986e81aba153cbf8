"""``raydr tune``: Ray Tune searches whose scheduler reads *validation* retrieval quality.

``space`` parses and checks the search space, ``trial`` is the function each trial runs,
``search`` sizes, schedules, runs and resumes the search, ``summary`` reads its results.
"""
