"""SIGINT / SIGHUP during training, as Caffe's SignalHandler.

The handlers only record that a signal arrived; the solver asks once per
iteration (and once per test iteration) which action that maps to:
``"stop"`` (leave training; solve() still writes its final snapshot),
``"snapshot"`` (write one and go on) or ``"none"``.  Defaults are those of
``caffe train``: SIGINT stops, SIGHUP snapshots.
"""
import signal
import threading

STOP, SNAPSHOT, NONE = "stop", "snapshot", "none"
ACTIONS = (STOP, SNAPSHOT, NONE)


def check_action(name, value):
    if value not in ACTIONS:
        raise ValueError(f"{name} must be one of {', '.join(ACTIONS)}; got {value!r}")
    return value


class SignalHandler:
    """Context manager installing the handlers and restoring the previous
    ones on exit.  Outside the main thread Python cannot install handlers;
    then it does nothing and reports no signals."""

    def __init__(self, sigint_effect=STOP, sighup_effect=SNAPSHOT):
        self.effects = {signal.SIGINT: check_action("sigint_effect", sigint_effect)}
        if hasattr(signal, "SIGHUP"):          # not on Windows
            self.effects[signal.SIGHUP] = check_action("sighup_effect", sighup_effect)
        self._received = set()
        self._previous = {}

    def _handle(self, signum, frame):
        self._received.add(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.effects:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            # None: a handler installed outside Python; the default is the best we can do.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        return False

    def requested_action(self):
        """The action of a signal received since the last call (SIGHUP is
        looked at first, as in Caffe), else "none"."""
        for signum in (getattr(signal, "SIGHUP", None), signal.SIGINT):
            if signum in self._received:
                self._received.discard(signum)
                return self.effects[signum]
        return NONE
