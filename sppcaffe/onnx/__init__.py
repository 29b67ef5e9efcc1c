"""ONNX export of sppcaffe (Caffe) nets: ``sppcaffe.onnx.export(net, path)``.

Needs the optional package onnx, and onnxruntime to run or check a model (``pip install
'sppcaffe[onnx]'``); ``import sppcaffe`` itself never imports them.
Converters live in sppcaffe/onnx/layers/, one module per layer family,
registered by layer type (registry.py).
"""
from .export import DEFAULT_OPSET, export  # noqa: F401
from .registry import CONVERTERS, ExportError, converter  # noqa: F401

__all__ = ["export", "ExportError", "CONVERTERS", "converter", "DEFAULT_OPSET"]
