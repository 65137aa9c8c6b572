"""The demo: the whole pipeline on the local stack, from seeded rows to a verified repair."""
