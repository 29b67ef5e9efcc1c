"""Caffe-compatible protobuf schema (generated ``caffe_pb2`` from ``protos/caffe.proto``)."""
