"""A Python layer module that fails while it is imported (tests/test_python_layer.py)."""
import caffe  # noqa: F401

raise RuntimeError("cannot start: no dataset configured")
