"""Per-connection record files and stream pointers."""
