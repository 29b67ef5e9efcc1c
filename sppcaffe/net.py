"""Net: a NetParameter turned into layers connected by blobs.

Follows Caffe's Net::Init step by step, because users depend on its exact
behaviour: phase/level/stage filtering, automatic Split layers for blobs
read by several layers, in-place layers, weight sharing by param name,
loss weights, and the rules deciding which layers need backward.
"""
import collections
import itertools
import logging
import os

import numpy as np

from . import io
from . import net_arguments as arguments
from .backends import current_device, gpu_mode
from .backends.gpu import Workspace as GpuWorkspace
from .blob import Blob
from .fusion import find_folds
from .io.caffemodel import blob_matches, blob_shape, blob_to_array
from .layer import LayerError, create_layer
from .proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
_log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Weights that do not fit the net (e.g. another net's); names the file."""


# What Net.copy_from did: the weights' source, the net's parameter layers it
# filled and those it left as they were, and the source layers the net lacks.
WeightsCopy = collections.namedtuple("WeightsCopy", "source filled unfilled ignored")


def quoted_names(names, limit=8):
    """'a', 'b', ... for a message: the first `limit` names and a count."""
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------------------
# Filtering by NetState (Caffe's FilterNet / StateMeetsRule)
# ---------------------------------------------------------------------------
def state_meets_rule(state, rule):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param):
    """A copy of `param` keeping only the layers its `state` includes."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(param)
    del filtered.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise LayerError(f"layer '{layer.name}': specify either include rules or exclude "
                             "rules, not both")
        included = len(layer.include) == 0
        if any(state_meets_rule(param.state, r) for r in layer.exclude):
            included = False
        if any(state_meets_rule(param.state, r) for r in layer.include):
            included = True
        if included:
            filtered.layer.add().CopyFrom(layer)
    return filtered


# ---------------------------------------------------------------------------
# Automatic Split layers (Caffe's InsertSplits)
# ---------------------------------------------------------------------------
def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{split_layer_name(layer_name, blob_name, top_index)}_{split_index}"


def insert_splits(param):
    """A copy of `param` where every top read by more than one bottom (or
    read once and also carrying an explicit loss weight) feeds a Split
    layer whose outputs go one to each reader."""
    last_top = {}            # blob name -> (layer index, top index) of its latest writer
    source = {}              # (layer, bottom index) -> (layer, top index)
    readers = collections.Counter()
    loss_weight = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise LayerError(f"layer '{layer.name}': unknown bottom blob '{name}' "
                                 f"(bottom index {j}); no earlier layer produces it")
            source[i, j] = last_top[name]
            readers[last_top[name]] += 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                readers[top] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = collections.Counter()
    for i, layer in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j in range(len(new.bottom)):
            top = source[i, j]
            if readers[top] > 1:
                writer = param.layer[top[0]].name
                new.bottom[j] = split_blob_name(writer, new.bottom[j], top[1], next_split[top])
                next_split[top] += 1
        for j, name in enumerate(layer.top):
            count = readers[i, j]
            if count <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            weight = loss_weight.get((i, j), 0.0)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del new.loss_weight[:]
                next_split[i, j] += 1
    return out


# pycaffe's Net.before_forward(f) & co.: f(layer index) around each layer's
# forward or backward (Caffe's Net::Callback).
HOOK_KINDS = ("before_forward", "after_forward", "before_backward", "after_backward")


def _is_hdf5(path):
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(".h5")


class Net:
    """A runnable network, with pycaffe's interface.

    ``Net(prototxt, phase, weights=None, level=0, stages=())`` or the older
    ``Net(prototxt, weights, phase)``.  `prototxt` may also be a
    NetParameter.  `data_shapes` gives the top shapes of data layers whose
    sources are not available (they then act as inputs fed from Python).
    `fold_batchnorm=False` keeps every BatchNorm + Scale after a convolution
    a layer of its own in forward-only nets (see sppcaffe/fusion.py).
    """

    def __init__(self, network, phase=None, weights=None, level=0, stages=(),
                 data_shapes=None, fold_batchnorm=True):
        if isinstance(phase, (str, os.PathLike)):        # Net(file, weights, phase)
            phase, weights = weights, phase
        if phase not in (TRAIN, TEST):
            raise ValueError("Net needs a phase: sppcaffe.TRAIN or sppcaffe.TEST")
        if isinstance(network, caffe_pb2.NetParameter):
            param = io.upgrade_net(network)
            self.source = "<NetParameter>"
        else:
            self.source = os.fspath(network)
            param = io.read_net(network)
        param.state.phase = phase
        if level:
            param.state.level = level
        # pycaffe passes stages=None when none are given.
        param.state.stage.extend(s for s in stages or () if s not in param.state.stage)
        self.phase = phase
        self.name = param.name
        self.data_shapes = dict(data_shapes or {})
        try:
            filtered = filter_net(param)
            with_splits = insert_splits(filtered)
            self._auto_splits = ({lp.name for lp in with_splits.layer}
                                 - {lp.name for lp in filtered.layer})
            self._build(with_splits, param.force_backward)
        except ValueError as err:
            if self.source != "<NetParameter>":
                err.add_note(f"while building the net of {self.source}")
            raise
        self._folds = find_folds(self) if fold_batchnorm else []
        self._hooks = {kind: [] for kind in HOOK_KINDS}
        self._frozen_diffs = GpuWorkspace()     # device copies of lr_mult 0 diffs
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------
    def _build(self, param, force_backward):
        self.param = param
        self.layers, self._layer_names = [], []
        self.blobs = collections.OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self._bottom_names, self._top_names = [], []
        self.inputs = []
        self.layer_loss_weights = []       # per layer: list of per-top weights
        blob_need_backward = {}
        available = set()
        self.bottom_need_backward, self.layer_need_backward = [], []
        self._param_owner = {}             # param name -> (layer index, param index)
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self._has_lr, self._has_decay = [], []
        self._learnable_index = {}         # id(owner Blob) -> index in learnable_params

        for li, lp in enumerate(param.layer):
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise LayerError(f"layer '{lp.name}': propagate_down must be given once per "
                                 f"bottom ({len(lp.bottom)}), got {len(lp.propagate_down)}")
            layer = create_layer(lp, self.phase)
            layer.net_data_shapes = self.data_shapes
            bottoms, bottom_need = [], []
            need_backward = False
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise LayerError(f"layer '{lp.name}': unknown bottom blob '{name}' "
                                     f"(bottom index {j})")
                available.discard(name)
                bottoms.append(self.blobs[name])
                need = blob_need_backward[name]
                need_backward |= need
                bottom_need.append(bool(lp.propagate_down[j]) if lp.propagate_down else need)
            tops = []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and name == lp.bottom[j]:
                    tops.append(self.blobs[name])           # in place
                elif name in self.blobs:
                    raise LayerError(f"layer '{lp.name}': top blob '{name}' is produced by "
                                     "multiple sources")
                else:
                    blob = Blob(name=name)
                    self.blobs[name] = blob
                    tops.append(blob)
                    if lp.type == "Input":
                        self.inputs.append(name)
                available.add(name)
            try:
                layer.setup(bottoms, tops)
            except LayerError:
                raise
            except (ValueError, IndexError, TypeError) as err:
                raise LayerError(f"layer '{lp.name}' ({lp.type}): {err}") from err
            self.layer_loss_weights.append(self._loss_weights(layer, lp, len(tops)))
            need_backward |= self._append_params(li, layer, lp)
            for name in lp.top:
                blob_need_backward[name] = need_backward
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self._bottom_names.append(list(lp.bottom))
            self._top_names.append(list(lp.top))
            self.bottom_need_backward.append(bottom_need)
            self.layer_need_backward.append(need_backward)

        self._prune_backward()
        if force_backward:
            for li, layer in enumerate(self.layers):
                self.layer_need_backward[li] = True
                need = self.bottom_need_backward[li]
                for j in range(len(need)):
                    need[j] = need[j] or layer.allow_force_backward(j)
                layer.param_propagate_down = [True] * len(layer.blobs)
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.forward_only = not need
        # Caffe keeps outputs in a std::set: sorted by name.
        self.outputs = sorted(available)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self.layers))
        self.top_names = collections.OrderedDict(zip(self._layer_names, self._top_names))
        self.bottom_names = collections.OrderedDict(zip(self._layer_names, self._bottom_names))
        self._loss_tops = [(top, w) for tops, ws in zip(self.top_vecs, self.layer_loss_weights)
                           for top, w in zip(tops, ws) if w]

    @staticmethod
    def _loss_weights(layer, lp, num_top):
        if len(lp.loss_weight):
            if len(lp.loss_weight) != num_top:
                raise layer.error(f"loss_weight must be unspecified or given once per top "
                                  f"({num_top}), got {len(lp.loss_weight)}")
            return list(lp.loss_weight)
        if layer.is_loss or lp.type.endswith("Loss"):
            return [1.0] + [0.0] * (num_top - 1)
        return [0.0] * num_top

    def _append_params(self, li, layer, lp):
        """Register the layer's parameter blobs, sharing named ones; return
        whether any of them learns (lr_mult != 0)."""
        any_learns = False
        layer.param_propagate_down = []
        for pi, blob in enumerate(layer.blobs):
            spec = lp.param[pi] if pi < len(lp.param) else caffe_pb2.ParamSpec()
            learns = spec.lr_mult != 0
            layer.param_propagate_down.append(learns)
            any_learns |= learns
            name = spec.name
            if not name or name not in self._param_owner:
                if name:
                    self._param_owner[name] = (li, pi)
                self._learnable_index[id(blob)] = len(self.learnable_params)
                self.learnable_params.append(blob)
                self._has_lr.append(spec.HasField("lr_mult"))
                self._has_decay.append(spec.HasField("decay_mult"))
                self.params_lr.append(spec.lr_mult)
                self.params_weight_decay.append(spec.decay_mult)
                continue
            oli, opi = self._param_owner[name]
            owner_layer = self.layers[oli] if oli < len(self.layers) else layer
            owner = owner_layer.blobs[opi]
            if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                if owner.count != blob.count:
                    raise layer.error(
                        f"cannot share param '{name}' owned by layer '{owner_layer.name}': count "
                        f"mismatch; owner shape {owner.shape}, this shape {blob.shape}")
            elif owner.shape != blob.shape:
                raise layer.error(
                    f"cannot share param '{name}' owned by layer '{owner_layer.name}': shape "
                    f"mismatch; owner shape {owner.shape}, this shape {blob.shape}")
            if owner.shape == blob.shape:
                layer.blobs[pi] = owner
            else:
                blob.view_of(owner, blob.shape)
            k = self._learnable_index[id(owner)]
            for has, values, field in ((self._has_lr, self.params_lr, "lr_mult"),
                                       (self._has_decay, self.params_weight_decay, "decay_mult")):
                if not spec.HasField(field):
                    continue
                if has[k] and values[k] != getattr(spec, field):
                    raise layer.error(f"shared param '{name}' has mismatched {field}")
                has[k], values[k] = True, getattr(spec, field)
        return any_learns

    def _prune_backward(self):
        """Caffe's rule: layers whose tops reach no loss skip backward, and
        so do layers none of whose tops needs a gradient."""
        under_loss, skip = set(), set()
        for li in range(len(self.layers) - 1, -1, -1):
            contributes = False
            skip_down = True
            for name, w in zip(self._top_names[li], self.layer_loss_weights[li]):
                if w or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            need = self.bottom_need_backward[li]
            if self.layer_need_backward[li] and skip_down:
                self.layer_need_backward[li] = False
                need[:] = [False] * len(need)
            if not contributes:
                self.layer_need_backward[li] = False
            for j, name in enumerate(self._bottom_names[li]):
                if contributes:
                    under_loss.add(name)
                else:
                    need[j] = False
                if not need[j]:
                    skip.add(name)

    # ------------------------------------------------------------------
    # pycaffe-style accessors
    # ------------------------------------------------------------------
    @property
    def params(self):
        return collections.OrderedDict(
            (name, layer.blobs) for name, layer in self.layer_dict.items() if layer.blobs)

    @property
    def blob_loss_weights(self):
        weights = collections.OrderedDict((name, 0.0) for name in self.blobs)
        for names, ws in zip(self._top_names, self.layer_loss_weights):
            for name, w in zip(names, ws):
                weights[name] = w
        return weights

    def _index(self, layer_name, default):
        if layer_name is None:
            return default
        try:
            return self._layer_names.index(layer_name)
        except ValueError:
            raise KeyError(f"net '{self.name}' has no layer '{layer_name}'") from None

    # pycaffe's underscored names (the C++ Net as _caffe.cpp shows it), for
    # scripts that use them.  Blob ids are positions in `blobs`.
    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self):
        return self._blob_ids(self.inputs)

    @property
    def _outputs(self):
        return self._blob_ids(self.outputs)

    def _top_ids(self, layer_index):
        return self._blob_ids(self._top_names[layer_index])

    def _bottom_ids(self, layer_index):
        return self._blob_ids(self._bottom_names[layer_index])

    def _blob_ids(self, names):
        ids = {name: i for i, name in enumerate(self.blobs)}
        return [ids[name] for name in names]

    # ------------------------------------------------------------------
    # Hooks (pycaffe's Net.before_forward & co., Caffe's Net::Callback)
    # ------------------------------------------------------------------
    def before_forward(self, callback):
        """Call `callback(i)` before layer i runs forward, in every forward
        pass from now on (as in Caffe, a hook cannot be removed).  While a
        forward hook is set, BatchNorm folding is off: every layer runs, and
        is seen, as in Caffe."""
        self._add_hook("before_forward", callback)

    def after_forward(self, callback):
        """Call `callback(i)` after layer i ran forward (see before_forward)."""
        self._add_hook("after_forward", callback)

    def before_backward(self, callback):
        """Call `callback(i)` before layer i's backward step, for every layer
        of the pass, also those that need no backward (as Caffe does)."""
        self._add_hook("before_backward", callback)

    def after_backward(self, callback):
        """Call `callback(i)` after layer i's backward step (see before_backward)."""
        self._add_hook("after_backward", callback)

    def _add_hook(self, kind, callback):
        if not callable(callback):
            raise TypeError(f"net '{self.name}': {kind} takes a callable called with the layer "
                            f"index, got {callback!r}")
        self._hooks[kind].append(callback)

    # ------------------------------------------------------------------
    # Running
    # ------------------------------------------------------------------
    def reshape(self):
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    def _set_inputs(self, inputs):
        for name, value in arguments.checked_inputs(self, inputs).items():
            blob = self.blobs[name]
            if value.shape != blob.shape:
                blob.reshape(value.shape)
            blob.data[...] = value

    def forward_from_to(self, start=0, end=None):
        """Run layers start..end (inclusive); return the weighted loss."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        gpu = gpu_mode()
        before, after = self._hooks["before_forward"], self._hooks["after_forward"]
        # Hooks are to see every layer run as Caffe runs it: no folding then.
        folds = [] if gpu or before or after else [
            f for f in self._folds if start <= f.first and f.last <= end]
        skipped = set()
        for fold in folds:
            fold.conv.fold = fold.affine
            skipped.update(fold.skipped)
        try:
            for li in range(start, end + 1):
                if li in skipped:
                    continue
                for hook in before:
                    hook(li)
                layer, bottom, top = self.layers[li], self.bottom_vecs[li], self.top_vecs[li]
                layer.reshape(bottom, top)
                if gpu:
                    layer.forward_gpu(bottom, top)
                else:
                    layer.forward(bottom, top)
                for blob, w in zip(top, self.layer_loss_weights[li]):
                    if w:
                        loss += w * float(blob.cpu_data.sum(dtype=np.float64))
                for hook in after:
                    hook(li)
        finally:
            for fold in folds:
                fold.conv.fold = None
        return loss

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """pycaffe's forward: feed `inputs` (input name=array: every input,
        or none to run on what the blobs hold), run layers `start` to `end`
        (names; default: all), return {name: data} of the outputs (the tops
        of `end` when given) and of the blob names listed in `blobs`.  An
        array of another size than its blob (a new image size) reshapes it;
        net_arguments.py has the rules."""
        blobs = arguments.blob_names(self, "forward", "blobs", blobs)
        arguments.check_layer_argument(self, "forward", "start", start)
        arguments.check_layer_argument(self, "forward", "end", end)
        start_i = self._index(start, 0)
        end_i = self._index(end, len(self.layers) - 1)
        self._set_inputs(inputs)
        self.loss = self.forward_from_to(start_i, end_i)
        names = set(self._top_names[end_i]) if end is not None else set(self.outputs)
        names.update(blobs)
        return {name: self.blobs[name].data for name in sorted(names)}

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        gpu = gpu_mode()
        for blob, w in self._loss_tops:
            blob.diff[...] = w
        # As Caffe's BackwardFromTo: the hooks run for every layer, also
        # those that need no backward.
        before, after = self._hooks["before_backward"], self._hooks["after_backward"]
        for li in range(start, end - 1, -1):
            for hook in before:
                hook(li)
            if self.layer_need_backward[li]:
                self._backward_layer(li, gpu)
            for hook in after:
                hook(li)

    def _backward_layer(self, li, gpu):
        layer = self.layers[li]
        # lr_mult 0: Caffe computes no gradient, so those diffs are put back
        # after the layer's backward (nothing frozen is the usual case).
        frozen = [] if all(layer.param_propagate_down) else [
            (p, _saved_diff(p, gpu, self._frozen_diffs, f"{li}/{i}")) for i, (p, learns)
            in enumerate(zip(layer.blobs, layer.param_propagate_down)) if not learns]
        run = layer.backward_gpu if gpu else layer.backward
        run(self.top_vecs[li], self.bottom_need_backward[li], self.bottom_vecs[li])
        for p, saved in frozen:
            _restore_diff(p, saved, gpu)

    def backward(self, diffs=None, start=None, end=None, **top_diffs):
        """pycaffe's backward: set output diffs (output name=array: every
        output, or none to run on what the diffs hold), run layers `start`
        down to `end` (names; default: all), return {name: diff} of the
        inputs (the bottoms of `end` when given) and of the blob names
        listed in `diffs`."""
        diffs = arguments.blob_names(self, "backward", "diffs", diffs)
        arguments.check_layer_argument(self, "backward", "start", start)
        arguments.check_layer_argument(self, "backward", "end", end)
        start_i = self._index(start, len(self.layers) - 1)
        end_i = self._index(end, 0)
        for name, value in arguments.checked_top_diffs(self, top_diffs).items():
            self.blobs[name].diff[...] = value
        self.backward_from_to(start_i, end_i)
        names = self._bottom_names[end_i] if end is not None else self.inputs
        names = list(dict.fromkeys(list(names) + diffs))
        return {name: self.blobs[name].diff for name in names}

    def forward_backward(self):
        """One forward and backward pass over the whole net; the loss."""
        self.loss = self.forward_from_to()
        self.backward_from_to()
        return self.loss

    # pycaffe's _forward(start, end) and _backward(start, end), by layer index.
    _forward = forward_from_to
    _backward = backward_from_to

    # ------------------------------------------------------------------
    # Batched passes (pycaffe's forward_all / forward_backward_all)
    # ------------------------------------------------------------------
    def forward_all(self, blobs=None, **inputs):
        """Run `inputs` (name=array, as many items each) through the net in
        batches of the net's batch size (the first dimension of its first
        blob), the last batch padded with zeros.  Returns {name: array}
        for the outputs and `blobs`, one row per item, padding dropped."""
        count = _item_count(inputs, "forward_all")
        names = set(self.outputs) | set(blobs or ())
        parts = {name: [] for name in names}
        for batch in self._batch(inputs):
            outs = self.forward(blobs=blobs, **batch)
            for name in names:
                parts[name].append(self._rows(name, outs[name], "forward_all"))
        return {name: np.concatenate(rows)[:count] for name, rows in parts.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **arrays):
        """forward_all and backward together: `arrays` holds inputs (fed
        forward) and output diffs (fed backward), as many items each; a pass
        lacking its arrays runs on what the blobs hold.  Returns
        ({output or blob: data}, {input or diff: gradient}), one row per item."""
        count = _item_count(arrays, "forward_backward_all")
        unknown = sorted(set(arrays) - set(self.inputs) - set(self.outputs))
        if unknown:
            raise KeyError(f"net '{self.name}': forward_backward_all takes inputs "
                           f"{self.inputs} and output diffs {self.outputs}, got {unknown}")
        forward_batches = self._batch({n: arrays[n] for n in self.inputs if n in arrays})
        backward_batches = self._batch({n: arrays[n] for n in self.outputs if n in arrays})
        outs = {name: [] for name in set(self.outputs) | set(blobs or ())}
        grads = {name: [] for name in set(self.inputs) | set(diffs or ())}
        for fb, bb in itertools.zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].append(self._rows(name, value, "forward_backward_all"))
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].append(self._rows(name, value, "forward_backward_all"))
        return ({name: np.concatenate(rows)[:count] for name, rows in outs.items()},
                {name: np.concatenate(rows)[:count] for name, rows in grads.items()})

    def _batch_size(self):
        first = next(iter(self.blobs.values()), None)
        if first is None or not first.shape:
            raise ValueError(f"net '{self.name}' has no batch size (its first blob has no "
                             "first dimension) to cut arrays into batches")
        return first.shape[0]

    def _batch(self, arrays):
        """pycaffe's Net._batch: yield {name: batch} over `arrays` (as many
        items each), `_batch_size()` items at a time, the last batch padded
        with zeros; nothing for no arrays."""
        if not arrays:
            return
        arrays = {name: np.asarray(a) for name, a in arrays.items()}
        size = self._batch_size()
        count = _item_count(arrays, "a batched pass")
        for start in range(0, count, size):
            batch = {}
            for name, array in arrays.items():
                part = array[start:start + size]
                if len(part) < size:
                    padding = np.zeros((size - len(part),) + part.shape[1:], part.dtype)
                    part = np.concatenate([part, padding])
                batch[name] = part
            yield batch

    def _rows(self, name, array, what):
        """A copy of a blob's batch, checked to have one row per item."""
        size = self._batch_size()
        if array.ndim == 0 or array.shape[0] != size:
            raise ValueError(f"net '{self.name}': {what} splits blobs into one row per item, "
                             f"but blob '{name}' has shape {array.shape} for a batch of "
                             f"{size}; use forward() for it")
        return array.copy()

    def set_input_arrays(self, data, labels):
        """pycaffe's set_input_arrays: `data` (N x channels x height x
        width) and `labels` (N, or N x 1 x 1 x 1) for the MemoryData layer,
        which must be the net's first layer; N a multiple of its batch
        size.  pycaffe's checks, with its messages; any real dtype is taken
        (as float32) where pycaffe demands float32."""
        first = self.layers[0] if self.layers else None
        if first is None or first.type != "MemoryData":
            found = f" (it is '{first.name}', type {first.type})" if first is not None else ""
            raise LayerError(f"net '{self.name}': set_input_arrays may only be called if the "
                             f"first layer is a MemoryDataLayer{found}")
        data, labels = np.asarray(data), np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, np.newaxis, np.newaxis, np.newaxis]
        p = first.param.memory_data_param
        _check_memory_array(first, data, "data array", (p.channels, p.height, p.width))
        _check_memory_array(first, labels, "labels array", (1, 1, 1))
        if len(data) != len(labels):
            raise first.error(f"data and labels must have the same first dimension "
                              f"({len(data)} and {len(labels)})")
        if len(data) % p.batch_size:
            raise first.error(f"first dimensions of input arrays must be a multiple of batch "
                              f"size ({len(data)} items, batch size {p.batch_size})")
        first.set_input_arrays(data, labels)

    def close(self):
        """Stop the data layers' prefetch threads and close their sources."""
        for layer in self.layers:
            if hasattr(layer, "close"):
                layer.close()

    def set_forward_only(self):
        """Mark every layer forward_only, for a net that is only ever run
        forward although it has a loss (a solver's test nets, `caffe
        test`): convolutions then keep no columns (less memory, and the
        faster chunked forward).  A backward called anyway recomputes what
        it needs, or says why it cannot."""
        for layer in self.layers:
            layer.forward_only = True

    def clear_param_diffs(self):
        """Zero the learnable params' gradients (Caffe's ClearParamDiffs),
        on the device in GPU mode: no copy either way."""
        if gpu_mode():
            device = current_device()
            for p in self.learnable_params:
                device.memset0(p.mutable_gpu_diff, 4 * p.count)
            return
        for p in self.learnable_params:
            p.diff[...] = 0

    # ------------------------------------------------------------------
    # Weights
    # ------------------------------------------------------------------
    def copy_from(self, weights, allow_unmatched=False):
        """Copy parameters from a .caffemodel or .caffemodel.h5 (path) or a
        NetParameter, by layer name, as Caffe's CopyTrainedLayersFrom:
        source layers the net lacks are ignored (logged as Caffe logs them),
        a blob count or shape mismatch is an error naming the layer and
        both shapes.  Logs how many of the net's parameter layers were
        filled; weights that fill none of them (another net's) are a
        WeightsError unless `allow_unmatched`.  Returns a WeightsCopy."""
        if _is_hdf5(weights):
            from .io import hdf5        # h5py is imported only when needed
            source = os.fspath(weights)
            filled, ignored = hdf5.copy_into_net(self, weights)
        else:
            if isinstance(weights, caffe_pb2.NetParameter):
                source, src = "<NetParameter>", io.upgrade_net(weights)
            else:
                source, src = os.fspath(weights), io.read_weights(weights)
            filled, ignored = self._copy_layers(source, src)
        return self._report_copy(source, filled, ignored, allow_unmatched)

    def _copy_layers(self, source, src):
        """Copy the blobs of NetParameter `src` into the layers named like
        its layers; (names of the layers filled, source layers ignored)."""
        filled, ignored = [], []
        for lp in src.layer:
            layer = self.layer_dict.get(lp.name)
            if layer is None:
                ignored.append(lp.name)
                continue
            if not len(lp.blobs):
                continue
            if len(lp.blobs) != len(layer.blobs):
                raise LayerError(f"{source}: layer '{lp.name}' has {len(lp.blobs)} parameter "
                                 f"blobs in the weights but {len(layer.blobs)} in the net")
            for i, (bp, target) in enumerate(zip(lp.blobs, layer.blobs)):
                if not blob_matches(bp, target.shape):
                    raise LayerError(
                        f"{source}: cannot copy param {i} of layer '{lp.name}': shape mismatch; "
                        f"weights have {blob_shape(bp)}, the net expects {target.shape}")
                target.data[...] = blob_to_array(bp, shape=target.shape)
            filled.append(lp.name)
        return filled, ignored

    def _report_copy(self, source, filled, ignored, allow_unmatched):
        """Say what a weights copy did, as Caffe's log does and more: each
        ignored source layer, then how many parameter layers were filled.
        Filling none of them is an error unless `allow_unmatched`."""
        for name in ignored:
            _log.info("Ignoring source layer %s", name)
        done = set(filled)
        with_params = [name for name, layer in self.layer_dict.items() if layer.blobs]
        unfilled = [name for name in with_params if name not in done]
        result = WeightsCopy(source, [n for n in with_params if n in done], unfilled, ignored)
        if with_params and not result.filled and not allow_unmatched:
            raise WeightsError(
                f"{source}: these weights fill none of the {len(with_params)} parameter layers "
                f"of net '{self.name}' ({quoted_names(with_params)}); its layers that the net "
                f"lacks: {quoted_names(ignored) if ignored else 'none'} (weights of another "
                "net?)")
        _log.info("%s: copied weights into %d of the %d parameter layers of net '%s'%s", source,
                  len(result.filled), len(with_params), self.name,
                  f"; left as initialized: {quoted_names(unfilled)}" if unfilled else "")
        return result

    def save_hdf5(self, path):
        """pycaffe's save_hdf5: the parameters in Caffe's HDF5 layout,
        whatever the file's extension."""
        from .io import hdf5
        hdf5.write_net(self, path)

    def load_hdf5(self, path, allow_unmatched=False):
        """pycaffe's load_hdf5: parameters from Caffe's HDF5 layout (as
        CopyTrainedLayersFromHDF5), whatever the file's extension; logged
        and checked as copy_from."""
        from .io import hdf5
        filled, ignored = hdf5.copy_into_net(self, path)
        return self._report_copy(os.fspath(path), filled, ignored, allow_unmatched)

    def share_with(self, other):
        """Caffe's ShareTrainedLayersWith (pycaffe's share_with): every layer
        named like one of net `other` uses that layer's parameter data (the
        same memory: updates show at once); gradients stay separate."""
        for name, source in other.layer_dict.items():
            target = self.layer_dict.get(name)
            if target is None:
                continue
            if len(target.blobs) != len(source.blobs):
                raise LayerError(f"cannot share the weights of layer '{name}': incompatible "
                                 f"number of blobs ({len(source.blobs)} in net '{other.name}', "
                                 f"{len(target.blobs)} in net '{self.name}')")
            for i, (src, dst) in enumerate(zip(source.blobs, target.blobs)):
                if src.shape != dst.shape:
                    raise LayerError(f"cannot share param {i} weights from layer '{name}'; "
                                     f"shape mismatch.  Source param shape is {src.shape}; "
                                     f"target param shape is {dst.shape}")
                dst.share_data(src)

    def to_proto(self, write_diff=False):
        """The net's definition with its parameters, as Caffe's Net::ToProto
        (automatic Split layers left out)."""
        out = caffe_pb2.NetParameter()
        out.name = self.name
        for layer in self.layers:
            if layer.name in self._auto_splits:
                continue
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for blob in layer.blobs:
                io.array_to_blob(blob.data, lp.blobs.add(), blob.diff if write_diff else None)
        return out

    def save(self, path, write_diff=False):
        """Write the parameters as a binary .caffemodel, or in Caffe's HDF5
        layout for a path ending in .h5 (temp file + rename either way)."""
        if _is_hdf5(path):
            from .io import hdf5
            hdf5.write_net(self, path, write_diff)
        else:
            io.write_binary(self.to_proto(write_diff=write_diff), path)

    def __repr__(self):
        return f"<Net '{self.name}' phase={'TRAIN' if self.phase == TRAIN else 'TEST'} " \
               f"layers={len(self.layers)}>"


def _item_count(arrays, what):
    """The number of items of each of `arrays` (name -> array), which must
    be the same for all and at least one array."""
    if not arrays:
        raise ValueError(f"{what} needs the arrays to run as keywords, e.g. data=images")
    counts = {}
    for name, array in arrays.items():
        if np.ndim(array) == 0:
            raise ValueError(f"{what}: '{name}' must be an array of items, got {array!r}")
        counts[name] = len(array)
    if len(set(counts.values())) != 1:
        raise ValueError(f"{what}: the arrays must have as many items each, got {counts}")
    count = next(iter(counts.values()))
    if count == 0:
        raise ValueError(f"{what}: the arrays have no items")
    return count


def _check_memory_array(layer, array, what, item_shape):
    """pycaffe's CheckContiguousArray, on the shape (see set_input_arrays)."""
    if array.ndim != 4:
        raise layer.error(f"{what} must be 4-d, got shape {array.shape}")
    for axis, name in enumerate(("number of channels", "height", "width"), start=1):
        if array.shape[axis] != item_shape[axis - 1]:
            raise layer.error(f"{what} has wrong {name}: {array.shape[axis]}, the layer "
                              f"expects {item_shape[axis - 1]}")


def _saved_diff(blob, gpu, scratch, name):
    """A copy of the blob's diff; on the device in `scratch` (a gpu
    Workspace) under `name`, a buffer kept for the next pass."""
    if not gpu:
        return blob.diff.copy()
    saved = scratch.get(name, 4 * blob.count)
    current_device().copy(saved, blob.gpu_diff, 4 * blob.count)
    return saved


def _restore_diff(blob, saved, gpu):
    if gpu:
        current_device().copy(blob.mutable_gpu_diff, saved, 4 * blob.count)
    else:
        blob.diff[...] = saved
