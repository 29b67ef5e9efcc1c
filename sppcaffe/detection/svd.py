"""Truncated SVD of fully connected layers (Fast R-CNN, Girshick 2015,
Sec. 3.1): a layer y = W x + b with W of u x v is replaced by two,

    fcX_L: z = (Sigma_k V_k^T) x      (k x v, no bias)
    fcX_U: y = U_k z + b              (u x k)

where W ~ U_k Sigma_k V_k^T keeps the k largest singular values.  The
multiply-adds per window drop from u*v to k*(u + v): for ZF-5's fc6
(4096 x 12800) at k = 1024, from 52.4 M to 17.3 M.  The second layer
keeps the original top, so everything after it is unchanged.

``compress_fc(param, net, ranks)`` returns the new net definition and its
weights (``compress_files`` does the same from and to files, e.g. for
models/zf5_spp/detect_fc.prototxt with ranks {"fc6": 1024, "fc7": 256};
``compressed_net`` builds the factorized Net).  As in Fast R-CNN the SVMs
are trained on the exact layers and the factorization is a test-time
option (the config's test.svd_fc6_rank / svd_fc7_rank); the mAP it costs
on the demo set is in README.md.
"""
import numpy as np

from ..io import array_to_blob
from ..proto import caffe_pb2


def truncated_svd(weight, rank):
    """(L, U), float32, with U @ L the best rank-`rank` approximation of
    `weight` (u x v): L is k x v and U is u x k.

    From the top-k eigenvectors of the smaller Gram matrix: for u <= v,
    W W^T = U S^2 U^T gives U_k and L = U_k^T W = S_k V_k^T (Fast R-CNN's
    split); for u > v, W^T W gives V_k, L = V_k^T and U = W V_k = U_k S_k.
    Either way U @ L is W projected on its top-k singular directions.

    Speed (ZF-5's fc6, 4096 x 12800 at rank 1024, 2 shared cores): the Gram
    matrix is one float32 BLAS product (1.3 s) and LAPACK's syevr computes
    only the k eigenvectors wanted, in float32 (3.9 s); float64 throughout
    with every eigenvector took 14 s, a full SVD about five minutes.
    float32 loses nothing that matters: the weights are float32, and the
    projection agrees with float64's to ~1e-6 of the weights' scale."""
    from scipy.linalg import eigh          # scipy comes with scikit-learn

    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"an InnerProduct weight is 2-D (outputs x inputs), got {weight.shape}")
    outputs, inputs = weight.shape
    if not 1 <= rank <= min(outputs, inputs):
        raise ValueError(f"rank must lie in 1..{min(outputs, inputs)} for a {outputs} x "
                         f"{inputs} weight, got {rank}")
    w = np.asarray(weight, np.float32)
    wide = outputs <= inputs
    gram = w @ w.T if wide else w.T @ w
    size = len(gram)
    # Eigenvalues ascending: the last `rank` are the largest.
    _, vectors = eigh(gram, subset_by_index=[size - rank, size - 1], driver="evr",
                      overwrite_a=True, check_finite=False)
    top = vectors[:, ::-1]
    if wide:
        left, right = top.T @ w, top
    else:
        left, right = top.T, w @ top
    return np.ascontiguousarray(left, np.float32), np.ascontiguousarray(right, np.float32)


def _fc_layer(param, name):
    layers = [lp for lp in param.layer if lp.name == name]
    if not layers:
        raise ValueError(f"net '{param.name}' has no layer '{name}'")
    lp = layers[0]
    if lp.type != "InnerProduct":
        raise ValueError(f"layer '{name}' is a {lp.type}, not an InnerProduct")
    p = lp.inner_product_param
    if p.transpose or p.axis != 1:
        raise ValueError(f"layer '{name}': only InnerProduct with axis 1 and no transpose "
                         "can be factorized")
    return lp


def compress_fc(param, net, ranks):
    """Factorize the InnerProduct layers named in `ranks` ({name: k}).

    param: the net's NetParameter (e.g. io.read_net of detect_fc.prototxt);
    net: a Net built from it holding the trained weights.
    Returns (definition, weights): a NetParameter without blobs, with each
    named layer replaced by `<name>_L` and `<name>_U`, and a NetParameter
    holding the parameter blobs of every layer of the new net (for
    Net.copy_from or io.write_binary to a .caffemodel)."""
    for name in ranks:
        _fc_layer(param, name)
    definition = caffe_pb2.NetParameter()
    definition.CopyFrom(param)
    del definition.layer[:]
    weights = caffe_pb2.NetParameter(name=param.name)
    for lp in param.layer:
        if lp.name not in ranks:
            new = definition.layer.add()
            new.CopyFrom(lp)
            del new.blobs[:]
            if lp.name in net.params:
                saved = weights.layer.add(name=lp.name, type=lp.type)
                for blob in net.params[lp.name]:
                    array_to_blob(blob.data, saved.blobs.add())
            continue
        rank = int(ranks[lp.name])
        blobs = net.params[lp.name]
        try:
            left, right = truncated_svd(blobs[0].data, rank)
        except ValueError as err:
            raise ValueError(f"layer '{lp.name}': {err}") from None
        first, second = definition.layer.add(), definition.layer.add()
        first.CopyFrom(lp)
        del first.blobs[:]
        first.name = f"{lp.name}_L"
        del first.top[:]
        first.top.append(first.name)
        first.inner_product_param.num_output = rank
        first.inner_product_param.bias_term = False
        del first.param[1:]
        second.CopyFrom(lp)
        del second.blobs[:]
        second.name = f"{lp.name}_U"
        del second.bottom[:]
        second.bottom.append(first.name)
        for name, arrays in ((first.name, [left]),
                             (second.name, [right] + [b.data for b in blobs[1:]])):
            saved = weights.layer.add(name=name, type="InnerProduct")
            for array in arrays:
                array_to_blob(array, saved.blobs.add())
    return definition, weights


def compress_files(net_path, weights_path, ranks, out_prefix):
    """compress_fc on files: reads the net prototxt and its .caffemodel,
    writes ``<out_prefix>.prototxt`` and ``<out_prefix>.caffemodel``
    (atomically) and returns their paths."""
    from ..net import TEST, Net
    from ..io import read_net, write_binary, write_text
    param = read_net(net_path)
    definition, weights = compress_fc(param, Net(param, TEST, weights=weights_path), ranks)
    paths = f"{out_prefix}.prototxt", f"{out_prefix}.caffemodel"
    write_text(definition, paths[0])
    write_binary(weights, paths[1])
    return paths


def compressed_net(net_path, net, ranks):
    """A TEST Net computing what `net` (built from the prototxt `net_path`,
    holding the trained weights) computes, with the layers named in `ranks`
    ({name: k}) factorized; `net` itself when `ranks` is empty."""
    if not ranks:
        return net
    from ..io import read_net
    from ..net import TEST, Net
    definition, weights = compress_fc(read_net(net_path), net, ranks)
    return Net(definition, TEST, weights=weights)


def multiply_adds(outputs, inputs, rank=None):
    """Multiply-adds per row of an InnerProduct, factorized at `rank` or not."""
    return outputs * inputs if rank is None else rank * (outputs + inputs)
