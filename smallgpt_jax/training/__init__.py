"""A training run around the train step: the loop, its evaluation phase,
stopping early, warm-up compilation, profiling hooks, reporting.
"""
