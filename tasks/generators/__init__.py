"""Generators of the embedded tasks: deterministic in their seed, offline, in seconds."""
