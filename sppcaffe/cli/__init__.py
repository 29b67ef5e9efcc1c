"""Command-line tools (the scripts in tools/ are thin wrappers around these
modules' ``main`` functions)."""
