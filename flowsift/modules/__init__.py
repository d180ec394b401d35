"""The module API, the chain runner and the built-in modules."""
