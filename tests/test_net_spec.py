"""sppcaffe.NetSpec / layers (L) / params (P) against pycaffe's net_spec:
the fixtures in tests/golden/pycaffe/netspec were printed by the real
pycaffe; the naming rules below are pycaffe's (python/caffe/net_spec.py)."""
import glob
import importlib.util
import os

import numpy as np
import pytest
from google.protobuf import text_format

import sppcaffe
from sppcaffe import layers as L
from sppcaffe import params as P
from sppcaffe.net_spec import NetSpecError, to_proto
from sppcaffe.proto import caffe_pb2

NETSPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "pycaffe", "netspec")
CASES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(NETSPEC, "*.py")))


def load_case(case):
    spec = importlib.util.spec_from_file_location(f"netspec_{case}",
                                                  os.path.join(NETSPEC, case + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cases_found():
    assert {"lenet", "spp_params"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden_netspec(case):
    ours = load_case(case).make(sppcaffe)
    with open(os.path.join(NETSPEC, case + ".prototxt")) as f:
        expected = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    assert isinstance(ours, caffe_pb2.NetParameter)
    assert [lp.name for lp in ours.layer] == [lp.name for lp in expected.layer]
    for got, want in zip(ours.layer, expected.layer):
        assert got == want, f"layer '{want.name}':\n{got}\n!=\n{want}"
    assert ours == expected


def small_input():
    return L.Input(shape=dict(dim=[1, 3, 8, 8]))


def test_auto_names_without_netspec():
    # pycaffe: unnamed tops and layers are <Type><count>, counted per type
    # in the order names are handed out; an in-place layer keeps its bottom.
    conv = L.Convolution(small_input(), num_output=2, kernel_size=3)
    relu = L.ReLU(conv, in_place=True)
    net = to_proto(relu)
    assert [(lp.name, list(lp.bottom), list(lp.top)) for lp in net.layer] == [
        ("Input1", [], ["Input1"]),
        ("Convolution1", ["Input1"], ["Convolution1"]),
        ("ReLU1", ["Convolution1"], ["Convolution1"]),
    ]
    assert relu.to_proto() == net


def test_several_tops_and_partly_named_netspec():
    n = sppcaffe.NetSpec()
    n.data = small_input()
    first, second = L.Slice(L.Convolution(n.data, num_output=4, kernel_size=1), ntop=2,
                            slice_param=dict(axis=1))
    n.merged = L.Eltwise(first, second)
    net = n.to_proto()
    assert [(lp.name, list(lp.bottom), list(lp.top)) for lp in net.layer] == [
        ("data", [], ["data"]),
        ("Convolution1", ["data"], ["Convolution1"]),
        ("Slice1", ["Convolution1"], ["Slice1", "Slice2"]),
        ("merged", ["Slice1", "Slice2"], ["merged"]),
    ]


def test_layer_emitted_once_and_inputs_first():
    n = sppcaffe.NetSpec()
    n.data = small_input()
    n.a = L.ReLU(n.data)
    n.c = L.Concat(n.a, L.Sigmoid(n.data))      # Sigmoid is emitted before Concat
    n.b = L.TanH(n.a)
    names = [lp.name for lp in n.to_proto().layer]
    assert names == ["data", "a", "Sigmoid1", "c", "b"]


def test_field_routing():
    n = sppcaffe.NetSpec()
    n.data, n.label = L.Data(source="db", batch_size=4, backend=P.Data.LMDB, ntop=2,
                             transform_param=dict(mirror=True, crop_size=5, mean_value=[1, 2]),
                             include=dict(phase=sppcaffe.TEST))
    n.ip = L.InnerProduct(n.data, num_output=3, param=[dict(lr_mult=1), dict(lr_mult=2)],
                          loss_weight=[0.5], propagate_down=False,
                          weight_filler=dict(type="gaussian", std=0.01))
    n.pool = L.Pooling(n.data, pool=P.Pooling.AVE, kernel_size=2, engine=P.Pooling.CAFFE)
    data, ip, pool = n.to_proto().layer
    assert data.data_param.source == "db" and data.data_param.batch_size == 4
    assert data.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert data.transform_param.crop_size == 5 and list(data.transform_param.mean_value) == [1, 2]
    assert [rule.phase for rule in data.include] == [caffe_pb2.TEST]
    assert [p.lr_mult for p in ip.param] == [1, 2]
    assert list(ip.loss_weight) == [0.5]
    assert list(ip.propagate_down) == [False]          # a lone value for a repeated field
    assert ip.inner_product_param.weight_filler.std == pytest.approx(0.01)
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert pool.pooling_param.engine == caffe_pb2.PoolingParameter.CAFFE


def test_params_enums():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.STOCHASTIC == caffe_pb2.PoolingParameter.STOCHASTIC
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    with pytest.raises(AttributeError, match="PoolingParameter has no value 'MEDIAN'"):
        P.Pooling.MEDIAN
    with pytest.raises(AttributeError, match="NoSuchParameter"):
        P.NoSuch.VALUE


def test_bad_field_names_the_layer():
    n = sppcaffe.NetSpec()
    n.data = small_input()
    n.conv1 = L.Convolution(n.data, num_output=2, kernal_size=3)
    with pytest.raises(NetSpecError, match=r"layer 'conv1' \(Convolution\).*kernal_size"):
        n.to_proto()


def test_bottom_must_be_a_top():
    with pytest.raises(TypeError, match="Convolution input 0 is not a Top"):
        L.Convolution("data", num_output=2)


def test_netspec_mapping_interface():
    n = sppcaffe.NetSpec()
    n["data"] = small_input()
    n.relu = L.ReLU(n["data"])
    assert n.keys() == ["data", "relu"] and n.vals() == [n.data, n.relu]
    n.update("relu", dict(negative_slope=0.1))
    assert n.to_proto().layer[1].relu_param.negative_slope == pytest.approx(0.1)
    del n["relu"]
    assert n.keys() == ["data"]
    with pytest.raises(AttributeError, match="no top 'missing'"):
        n.missing


def test_layers_package_is_also_L():
    # pycaffe's `caffe.layers` is NetSpec's L; sppcaffe.layers is also the
    # package of layer implementations, whose modules stay reachable.
    assert sppcaffe.layers.Convolution(small_input(), num_output=1).fn.type_name == "Convolution"
    from sppcaffe.layers import conv
    assert conv.__name__ == "sppcaffe.layers.conv"
    with pytest.raises(AttributeError):
        sppcaffe.layers.not_a_module


def test_generated_net_runs():
    n = sppcaffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 6, 6]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3,
                           weight_filler=dict(type="constant", value=1))
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.prob = L.Softmax(L.InnerProduct(n.pool, num_output=3))
    net = sppcaffe.Net(n.to_proto(), sppcaffe.TEST)
    out = net.forward(data=np.ones((2, 3, 6, 6), np.float32))
    assert net.blobs["conv"].data.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(net.blobs["conv"].data, 27.0)
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-6)
