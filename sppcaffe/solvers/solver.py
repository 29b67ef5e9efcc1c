"""Solver: Caffe's training loop (src/caffe/solver.cpp), with pycaffe's API.

A solver builds its train net and test nets from a SolverParameter, then
`step(n)` runs Caffe's Solver::Step: test every `test_interval`, clear the
gradients, forward/backward `iter_size` times, smooth and display the
loss, apply the update (the subclass's rule, see updates.py), count the
iteration, snapshot every `snapshot` iterations.  `solve()` runs to
`max_iter` as `caffe train` does, with SIGINT/SIGHUP handled.

Net file paths in the solver are opened relative to the working directory,
as Caffe does; when such a path does not exist there but does exist
relative to the solver file's folder, that file is used instead (so a
solver and its nets can be moved together and run from anywhere).

Python code can follow training through listeners
(``solver.add_listener(obj)``), objects defining any of
``on_display(solver, smoothed_loss, outputs, lr)``,
``on_test(solver, net_index, scores)`` and
``on_snapshot(solver, model_path, state_path)``, where `outputs` and
`scores` are lists of (blob name, value), one per output element, in the
order of Caffe's log lines; and through pycaffe's
``add_callback(on_start, on_gradients_ready)``.
"""
import logging
import os
import re
import time

import numpy as np

from .. import io
from ..layer import LayerError
from ..net import TEST, TRAIN, Net, quoted_names
from ..proto import caffe_pb2
from ..random import set_random_seed
from ..io.atomic import remove_stale_temps, write_problem
from . import resume_state, signals, state
from .lr_policy import check_policy

log = logging.getLogger("sppcaffe")

_TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


class SolverError(ValueError):
    """A solver definition Caffe would refuse; the message names the file."""


class TrainingDiverged(SolverError):
    """The training loss became NaN or infinite (see Solver's allow_nan)."""


def _g(value):
    """A number as C++'s ostream prints a float by default (6 significant digits)."""
    return f"{float(value):g}"


def _loss_note(weight, value):
    if not weight:
        return ""
    return f" (* {_g(weight)} = {_g(np.float32(weight) * np.float32(value))} loss)"


def output_values(net):
    """(name, value) for every element of every output blob of `net`, in
    Caffe's order (outputs sorted by name, elements in memory order)."""
    return [(name, value) for name in net.outputs
            for value in net.blobs[name].cpu_data.ravel().tolist()]


def default_snapshot_prefix(param, path):
    """Caffe's UpgradeSnapshotPrefixProperty, applied to solvers read from a
    file: no snapshot_prefix means the solver file's name without its
    extension; a prefix that is a folder means that folder/solver name."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
        log.info("snapshot_prefix was not specified and is set to %s", param.snapshot_prefix)
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
        log.info("snapshot_prefix was a directory and is replaced to %s", param.snapshot_prefix)


class Solver:
    """Base of the six solvers: nets, the training loop, testing,
    snapshots.  Subclasses provide `_presolve` (history buffers) and
    `apply_update` (the update rule).

    ``Solver(solver_prototxt_or_SolverParameter, data_shapes=None,
    sigint_effect="stop", sighup_effect="snapshot", allow_nan=False,
    allow_unmatched_weights=False)``; `data_shapes` goes to every Net
    (shapes of data layers fed from Python); the effects say what SIGINT and
    SIGHUP do during `solve()`: "stop", "snapshot" or "none".

    A training loss that is NaN or infinite stops training with a
    TrainingDiverged error and a snapshot of the weights before that
    iteration's update; `allow_nan=True` (or setting ``solver.allow_nan``)
    trains on, as Caffe does.  `allow_unmatched_weights=True` accepts
    solver `weights` files that fill none of the net's layers (see
    Net.copy_from).
    """

    def __init__(self, solver, data_shapes=None, sigint_effect=signals.STOP,
                 sighup_effect=signals.SNAPSHOT, source=None, allow_nan=False,
                 allow_unmatched_weights=False):
        # `source`: the file a SolverParameter came from (e.g. after --set
        # overrides), for messages and for finding nets beside it.
        if isinstance(solver, caffe_pb2.SolverParameter):
            self.source = os.fspath(source) if source else "<SolverParameter>"
            self.param = io.upgrade_solver(solver, source=self.source)
            self._solver_dir = None
            if source:
                default_snapshot_prefix(self.param, self.source)
                self._solver_dir = os.path.dirname(os.path.abspath(self.source))
        else:
            self.source = os.fspath(solver)
            self.param = io.read_solver(self.source)
            default_snapshot_prefix(self.param, self.source)
            self._solver_dir = os.path.dirname(os.path.abspath(self.source))
        self.sigint_effect = signals.check_action("sigint_effect", sigint_effect)
        self.sighup_effect = signals.check_action("sighup_effect", sighup_effect)
        self.data_shapes = data_shapes
        self.allow_nan = allow_nan
        self.allow_unmatched_weights = allow_unmatched_weights
        log.info("Initializing solver from parameters: \n%s", io.to_text(self.param))
        self._check_param()
        if self.param.random_seed >= 0:
            set_random_seed(self.param.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        log.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.smoothed_loss = np.float32(0)
        self.lr = None                     # the rate of the latest update
        self.mean_scores = [[] for _ in self.test_nets]
        # Python code may set "stop" or "snapshot" here (e.g. from a callback);
        # it is acted on, and reset, where Caffe polls for signals.
        self.requested_action = signals.NONE
        self.history_blobs = []            # the update rule's state (_presolve fills it)
        self._losses = []
        self._callbacks = []
        self._listeners = []
        self._signals = None
        self._requested_early_exit = False
        self._timer = time.perf_counter()
        self._iterations_last = 0
        self._display_outputs = None
        # A parallel.training.DataParallel when this solver is one of several
        # MPI ranks: it averages the gradients and agrees on signals and snapshots.
        self.parallel = None
        self._presolve()

    # ------------------------------------------------------------------
    # Hooks of the update rules
    # ------------------------------------------------------------------
    uses_delta = False          # whether the rule divides by a term with `delta`

    def _sanity_check(self):
        """Solver-type specific checks of the parameters (Caffe's
        constructor_sanity_check)."""

    def _presolve(self):
        raise NotImplementedError

    @property
    def history(self):
        """The history as host arrays, what snapshots save (brought from
        the device when it was updated there; writing them in place is
        seen by the next update on either side)."""
        return [blob.data for blob in self.history_blobs]

    def apply_update(self):
        """Update the weights from their gradients and count the iteration."""
        raise NotImplementedError

    # ------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------
    def _error(self, message):
        return SolverError(f"{self.source}: {message}")

    def _require(self, condition, field, rule):
        """A SolverError naming `field`, its value and the `rule` it breaks
        unless `condition` (written to be False for NaN too)."""
        if not condition:
            raise self._error(f"{field} must be {rule}, got {_g(getattr(self.param, field))}")

    def _check_param(self):
        p = self.param
        # Values outside the domain of Caffe's formulas train on silently
        # (a negative rate climbs the loss, momentum >= 1 diverges): refuse them.
        self._require(p.base_lr >= 0, "base_lr", ">= 0")
        self._require(p.weight_decay >= 0, "weight_decay", ">= 0")
        self._require(0 <= p.momentum < 1, "momentum", "in [0, 1)")
        if self.uses_delta:
            self._require(p.delta > 0, "delta", f"> 0 for {self.type}")
        for field in ("display", "snapshot", "test_interval"):
            self._require(getattr(p, field) >= 0, field, ">= 0")
        if any(n < 0 for n in p.test_iter):
            raise self._error(f"test_iter must be >= 0, got {list(p.test_iter)}")
        if p.regularization_type not in ("L1", "L2"):
            raise self._error(f"unknown regularization_type '{p.regularization_type}' "
                              "(known: L1, L2)")
        if p.average_loss < 1:
            raise self._error(f"average_loss must be >= 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise self._error(f"iter_size must be >= 1, got {p.iter_size}")
        if p.snapshot and p.snapshot_format not in (p.BINARYPROTO, p.HDF5):
            raise self._error(f"unsupported snapshot_format {p.snapshot_format}")
        if p.snapshot:
            # Caffe's CheckSnapshotWritePermissions: fail now, not after hours of training.
            if not p.HasField("snapshot_prefix"):
                raise self._error("snapshot is specified but snapshot_prefix is not")
            self._check_snapshot_prefix()
        self._sanity_check()

    def _check_snapshot_prefix(self):
        problem = write_problem(f"{self.param.snapshot_prefix}_iter_0.caffemodel")
        if problem:
            raise self._error(f"cannot write to snapshot prefix '{self.param.snapshot_prefix}' "
                              f"({problem}). Make sure that the directory exists and is "
                              "writeable.")

    def _resolve(self, path):
        """A path from the solver: as given (Caffe: relative to the working
        directory), else relative to the solver file's folder if it exists
        there."""
        if os.path.isabs(path) or os.path.exists(path) or self._solver_dir is None:
            return path
        beside = os.path.join(self._solver_dir, path)
        return beside if os.path.exists(beside) else path

    def _read_net_file(self, field, path):
        resolved = self._resolve(path)
        if os.path.isdir(resolved):
            raise IsADirectoryError(f"{self.source}: {field} file '{path}' is a directory, "
                                    "not a file")
        if not os.path.isfile(resolved):
            where = "the working directory" + (
                f" or the solver's folder {self._solver_dir}" if self._solver_dir else "")
            raise FileNotFoundError(f"{self.source}: {field} file '{path}' not found "
                                    f"(looked in {where})")
        return resolved, io.read_net(resolved)

    def _build_net(self, net_param, net_state, what, path=None):
        merged = caffe_pb2.NetParameter()
        merged.CopyFrom(net_param)
        merged.state.CopyFrom(net_state)
        try:
            net = Net(merged, merged.state.phase, data_shapes=self.data_shapes)
        except Exception as err:
            err.add_note(f"while creating the {what} of solver {self.source}")
            raise
        if not net.layers:
            # An empty or all-excluded prototxt: nothing would be trained or tested.
            raise self._error(f"the {what} ({path or 'net_param'}) has no layers in phase "
                              f"{caffe_pb2.Phase.Name(merged.state.phase)}")
        if path is not None:
            net.source = path
        for models in self.param.weights:
            for model in models.split(","):
                model = self._resolve(model.strip())
                log.info("Finetuning from %s", model)
                net.copy_from(model, allow_unmatched=self.allow_unmatched_weights)
        return net

    def _init_train_net(self):
        p = self.param
        given = [f for f in _TRAIN_NET_FIELDS if p.HasField(f)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise self._error(f"a solver must specify exactly one train net using one of "
                              f"these fields: {', '.join(_TRAIN_NET_FIELDS)} (found: {found})")
        field, path = given[0], None
        if field.endswith("_param"):
            log.info("Creating training net specified in %s.", field)
            net_param = getattr(p, field)
        else:
            path, net_param = self._read_net_file(field, getattr(p, field))
            log.info("Creating training net from %s file: %s", field, path)
        # Solver default (TRAIN), then the net's own state, then train_state win.
        net_state = caffe_pb2.NetState(phase=TRAIN)
        net_state.MergeFrom(net_param.state)
        net_state.MergeFrom(p.train_state)
        return self._build_net(net_param, net_state, "training net", path)

    def _init_test_nets(self):
        p = self.param
        generic = p.HasField("net_param") or p.HasField("net")
        specific = len(p.test_net_param) + len(p.test_net)
        if len(p.test_iter) < specific or (not generic and len(p.test_iter) != specific):
            raise self._error(f"test_iter must be specified for each test network: "
                              f"{specific} test net(s) given by test_net/test_net_param, "
                              f"{len(p.test_iter)} test_iter")
        count = len(p.test_iter) if generic else specific
        if len(p.test_state) and len(p.test_state) != count:
            raise self._error(f"test_state must be unspecified or specified once per test "
                              f"net: {count} test net(s), {len(p.test_state)} test_state")
        if count and p.test_interval <= 0:
            raise self._error(f"test_interval must be > 0 with {count} test net(s) "
                              f"(got {p.test_interval})")
        sources = [("test_net_param", q, None) for q in p.test_net_param]
        for path in p.test_net:
            path, q = self._read_net_file("test_net", path)
            sources.append((f"test_net file: {path}", q, path))
        remaining = count - len(sources)
        if p.HasField("net_param"):
            sources += [("net_param", p.net_param, None)] * remaining
        elif p.HasField("net") and remaining:
            path, q = self._read_net_file("net", p.net)
            sources += [(f"net file: {path}", q, path)] * remaining
        nets = []
        for i, (what, net_param, path) in enumerate(sources):
            net_state = caffe_pb2.NetState(phase=TEST)
            net_state.MergeFrom(net_param.state)
            if len(p.test_state):
                net_state.MergeFrom(p.test_state[i])
            log.info("Creating test net (#%d) specified by %s", i, what)
            net = self._build_net(net_param, net_state, f"test net #{i}", path)
            net.set_forward_only()          # as Caffe's Solver: test nets never run backward
            nets.append(net)
        return nets

    # ------------------------------------------------------------------
    # pycaffe API
    # ------------------------------------------------------------------
    def add_callback(self, on_start, on_gradients_ready):
        """pycaffe's add_callback: `on_start()` before each iteration's
        forward/backward, `on_gradients_ready()` before its update."""
        self._callbacks.append((on_start, on_gradients_ready))

    def add_listener(self, listener):
        """Call `listener`'s on_display / on_test / on_snapshot methods,
        those it defines (signatures in the module docstring)."""
        self._listeners.append(listener)

    def _notify(self, event, *args):
        for listener in self._listeners:
            handler = getattr(listener, event, None)
            if handler is not None:
                handler(self, *args)

    def share_weights(self, net):
        """Make `net` use this solver's trained weights (pycaffe's share_weights)."""
        net.share_with(self.net)

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def _requested(self):
        """Caffe's GetRequestedAction: a signal's effect, else what Python
        code put in `requested_action` (consumed); over MPI, the action all
        ranks agreed on with this iteration's gradients."""
        if self.parallel is not None:
            return self.parallel.agreed_action()
        return self._poll_request()

    def _poll_request(self):
        if self._signals is not None:
            action = self._signals.requested_action()
            if action != signals.NONE:
                return action
        action, self.requested_action = self.requested_action, signals.NONE
        return signals.check_action("requested_action", action)

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        loss = np.float32(loss)
        if len(self._losses) < average_loss:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = np.float32(
                (self.smoothed_loss * np.float32(size - 1) + loss) / np.float32(size))
        else:
            index = (self.iter - start_iter) % average_loss
            self.smoothed_loss = np.float32(
                self.smoothed_loss + (loss - self._losses[index]) / np.float32(average_loss))
            self._losses[index] = loss

    def _is_display_iter(self):
        return bool(self.param.display) and self.iter % self.param.display == 0

    def _display_train(self):
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse if lapse else 1)
        log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, _g(per_s),
                 _g(lapse), self.param.display, _g(self.smoothed_loss))
        self._timer, self._iterations_last = now, self.iter
        weights = self.net.blob_loss_weights
        outputs = output_values(self.net)
        for index, (name, value) in enumerate(outputs):
            log.info("    Train net output #%d: %s = %s%s", index, name, _g(value),
                     _loss_note(weights[name], value))
        self._display_outputs = outputs

    def _announce_rate(self, rate):
        """Called by apply_update once the rate is known: Caffe's lr log
        line, and the display listeners."""
        self.lr = rate
        if not self._is_display_iter():
            return
        log.info("Iteration %d, lr = %s", self.iter, _g(rate))
        if self._display_outputs is not None:
            outputs, self._display_outputs = self._display_outputs, None
            self._notify("on_display", self.smoothed_loss, outputs, rate)

    def step(self, iters):
        """Run `iters` training iterations (Caffe's Solver::Step)."""
        p = self.param
        # Caffe clears this only in Solve(); clearing it here too lets step()
        # be called again after a stopped solve() instead of doing nothing.
        self._requested_early_exit = False
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self._losses = []
        self.smoothed_loss = np.float32(0)
        self._timer, self._iterations_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self._requested_early_exit:
                    break      # stop was requested while testing
            for on_start, _ in self._callbacks:
                on_start()
            display = self._is_display_iter()
            loss = np.float32(0)
            for _ in range(p.iter_size):
                loss += np.float32(self.net.forward_backward())
            loss /= np.float32(p.iter_size)
            if self.parallel is not None:
                # Every rank's gradients averaged into the diffs; the ranks' mean loss.
                loss = self.parallel.finish_iteration(loss)
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            if display:
                self._display_train()
            if not (self.allow_nan or np.isfinite(loss)):
                self._stop_diverged(loss)
            for _, on_gradients_ready in self._callbacks:
                on_gradients_ready()
            self.apply_update()
            request = self._requested()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == signals.SNAPSHOT:
                self.snapshot()
            if request == signals.STOP:
                self._requested_early_exit = True
                break

    def solve(self, resume_file=None):
        """Train to max_iter (restoring `resume_file` first), as `caffe
        train`: SIGINT/SIGHUP act as sigint_effect/sighup_effect meanwhile."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self._requested_early_exit = False
        self._prepare_run()
        with signals.SignalHandler(self.sigint_effect, self.sighup_effect) as handler:
            self._signals = handler
            try:
                if resume_file is not None:
                    log.info("Restoring previous solver status from %s", resume_file)
                    self.restore(resume_file)
                start_iter = self.iter
                self.step(p.max_iter - self.iter)
                if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                    self.snapshot()
                if self._requested_early_exit:
                    log.info("Optimization stopped early.")
                    return
                # A last forward pass to display the loss of the final weights,
                # and a last test, as Caffe does.
                if self._is_display_iter():
                    loss = self.net.forward_from_to()
                    self._update_smoothed_loss(loss, start_iter, p.average_loss)
                    log.info("Iteration %d, loss = %s", self.iter, _g(self.smoothed_loss))
                if p.test_interval and self.iter % p.test_interval == 0:
                    self.test_all()
                log.info("Optimization Done.")
            finally:
                self._signals = None

    def _prepare_run(self):
        """Before training to max_iter: what would fail only at the end of
        the run fails now, and what killed writes of an earlier run with
        the same snapshot_prefix left behind is removed."""
        p = self.param
        self._require(p.max_iter > 0, "max_iter", "> 0 to train")
        check_policy(p, self.source)        # else only the first update would say
        if not (p.snapshot or p.snapshot_after_train):
            return
        # The final snapshot (snapshot_after_train) needs the prefix as much as `snapshot`.
        self._check_snapshot_prefix()
        # The files a run writes there: snapshots (+ sidecars) and train_net's curves.
        folder, name = os.path.split(os.path.abspath(p.snapshot_prefix + "_"))
        remove_stale_temps(folder, re.escape(name) + r"(iter_\d+\..+|training\.(csv|png))")

    def _stop_diverged(self, loss):
        """A NaN or infinite training loss: snapshot the weights it came
        from (not updated with its gradients yet), and stop."""
        p = self.param
        bad = [f"{name} = {_g(value)}" for name, value in output_values(self.net)
               if not np.isfinite(value)]
        if not p.HasField("snapshot_prefix"):
            saved = "no snapshot written (the solver has no snapshot_prefix)"
        elif not all(np.isfinite(blob.cpu_data).all() for blob in self.net.learnable_params):
            saved = "no snapshot written: the weights themselves are no longer finite"
        else:
            try:
                model, state_path = self.snapshot()
                saved = f"the weights before this update are in {model} (solver state {state_path})"
            except OSError as err:
                saved = f"writing a snapshot of the weights failed: {err}"
        raise TrainingDiverged(
            f"{self.source}: iteration {self.iter}: the training loss is {_g(loss)}"
            f"{' (' + ', '.join(bad) + ')' if bad else ''}; training stopped before updating "
            f"the weights with it, {saved}. A lower base_lr or clip_gradients may help; "
            "allow_nan=True (train_net --allow-nan) trains on, as Caffe does")

    # ------------------------------------------------------------------
    # Testing
    # ------------------------------------------------------------------
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self._requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Caffe's Solver::Test: `test_iter` forward passes of a test net
        sharing the train net's weights; each output element's values are
        summed in float32, then averaged and logged.  Returns the scores as
        (name, mean) pairs, or None if a stop was requested."""
        p = self.param
        self._requested_early_exit = False      # (as in step(): a stop is for the run it ends)
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        net.share_with(self.net)
        iterations = p.test_iter[test_net_id]
        totals, loss = None, np.float32(0)
        for _ in range(iterations):
            request = self._requested()
            while request != signals.NONE:
                if request == signals.SNAPSHOT:
                    self.snapshot()
                elif request == signals.STOP:
                    self._requested_early_exit = True
                request = self._requested()
            if self._requested_early_exit:
                break
            iter_loss = net.forward_from_to()
            if p.test_compute_loss:
                loss += np.float32(iter_loss)
            values = [net.blobs[name].cpu_data.ravel() for name in net.outputs]
            values = np.concatenate(values) if values else np.zeros(0, np.float32)
            if totals is None:
                totals = values.astype(np.float32)
            elif totals.shape != values.shape:
                raise self._error(f"test net #{test_net_id}: its outputs changed size from "
                                  f"{totals.size} to {values.size} values between test "
                                  "iterations")
            else:
                totals += values
        if self._requested_early_exit:
            log.info("Test interrupted.")
            return None
        if p.test_compute_loss:
            log.info("Test loss: %s", _g(loss / np.float32(iterations)))
        names = [name for name in net.outputs for _ in range(net.blobs[name].count)]
        means = [] if totals is None else (totals / np.float32(iterations)).tolist()
        weights = net.blob_loss_weights
        scores = list(zip(names, means))
        for i, (name, mean) in enumerate(scores):
            log.info("    Test net output #%d: %s = %s%s", i, name, _g(mean),
                     _loss_note(weights[name], mean))
        self.mean_scores[test_net_id] = means
        self._notify("on_test", test_net_id, scores)
        return scores

    # ------------------------------------------------------------------
    # Snapshots
    # ------------------------------------------------------------------
    def _snapshot_filename(self, extension):
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write the weights and the solver state (Caffe's names:
        <prefix>_iter_<N>.caffemodel / .solverstate, + .h5 for HDF5), each
        under a temporary name renamed into place.  Returns both paths."""
        if self.parallel is not None:
            return self.parallel.snapshot(self)    # rank 0 writes, with every rank's positions
        return self.write_snapshot(resume_state.capture(self))

    def write_snapshot(self, sidecar):
        """snapshot() with the .rng sidecar's content given."""
        p = self.param
        if p.snapshot_format == p.HDF5:
            model = self._snapshot_filename(".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model)
        elif p.snapshot_format == p.BINARYPROTO:
            model = self._snapshot_filename(".caffemodel")
            log.info("Snapshotting to binary proto file %s", model)
        else:
            raise self._error(f"unsupported snapshot_format {p.snapshot_format}")
        self.net.save(model, write_diff=p.snapshot_diff)
        if p.snapshot_format == p.HDF5:
            state_path = self._snapshot_filename(".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", state_path)
        else:
            state_path = self._snapshot_filename(".solverstate")
            log.info("Snapshotting solver state to binary proto file %s", state_path)
        # Read only: in GPU mode the history stays current on the device.
        history = [blob.cpu_data for blob in self.history_blobs]
        state.write_state(state_path, self.iter, model, self.current_step, history)
        state.write_rng_state(state_path, sidecar)
        self._notify("on_snapshot", model, state_path)
        return model, state_path

    def restore(self, state_file):
        """Resume from a .solverstate (binary, or HDF5 for .h5): the weights
        file it names, the iteration, the multistep position, the history
        and, from its .rng sidecar (resume_state.py), the random generator
        and the data layers' positions (a warning says what differs when
        the sidecar is missing)."""
        state_file = os.fspath(state_file)
        snap = state.read_state(state_file, [h.shape for h in self.history_blobs])
        if snap.learned_net is not None:
            self._restore_weights(state.find_learned_net(snap.learned_net, state_file),
                                  state_file)
        self.iter = snap.iter
        self.current_step = snap.current_step
        log.info("%s: restoring history", type(self).__name__)
        for blob, saved in zip(self.history_blobs, snap.history):
            blob.data[...] = saved
        resume_state.restore(self, state_file)

    def _restore_weights(self, weights, state_file):
        """Copy a state's learned_net, which must be a snapshot of this very
        net: a file that leaves any parameter layer unfilled (another net's
        weights) is an error, not a resume from half-random weights."""
        fits = f"{state_file}: its learned_net '{weights}' does not fit net '{self.net.name}'"
        try:
            copied = self.net.copy_from(weights, allow_unmatched=True)
        except LayerError as err:
            raise state.SolverStateError(f"{fits}: {err}") from None
        if copied.unfilled:
            raise state.SolverStateError(
                f"{fits}: it holds no weights for its layer(s) {quoted_names(copied.unfilled)} "
                "(a snapshot of another net? To start a changed net from these weights, "
                "fine-tune with --weights instead of resuming)")

    def __repr__(self):
        return (f"<{type(self).__name__} '{self.source}' iter={self.iter} "
                f"test_nets={len(self.test_nets)}>")
