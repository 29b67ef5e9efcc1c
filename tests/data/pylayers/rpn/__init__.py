"""Stand-in for py-faster-rcnn's `rpn` package (tests/test_fast_rcnn_nets.py)."""
