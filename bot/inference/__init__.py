"""Where models run, below the Discord layer: nothing in this package imports discord.

executor (queues, batching, deadlines, cancellation) → a backend (`local`: the models in this
process) → tasks (one Auto class each); plus errors, device choice and safe loading.
"""
