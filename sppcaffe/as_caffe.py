"""Run code written for pycaffe on sppcaffe: its ``import caffe`` gets sppcaffe.

    python -m sppcaffe.as_caffe SCRIPT.py [ARG ...]    # the script unchanged

or, as the first lines of a script or notebook:

    import sppcaffe.as_caffe  # noqa: F401  (`import caffe` is sppcaffe from here on)
    import caffe

Opt-in and only where no real Caffe is importable: where one is (on
sys.path / PYTHONPATH, or already imported), both forms stop with an error
naming it (the runner exits with status 1, the import raises
sppcaffe.pycaffe_compat.RealCaffeInstalled) and nothing is shadowed.
``sppcaffe.install_as_caffe()`` does the same from code.  What ``caffe``
then holds is described in sppcaffe/pycaffe_compat.py.

The runner starts the script as ``python SCRIPT.py ARG ...`` would
(``sys.argv``, the script's folder first on sys.path, ``__name__ ==
"__main__"``) and shows the framework's log lines on stderr in Caffe's
format, as pycaffe shows glog's, down to GLOG_minloglevel when it is set.
"""
import os
import runpy
import sys

from . import pycaffe_compat

PROG = "python -m sppcaffe.as_caffe"
USAGE = f"usage: {PROG} SCRIPT.py [ARG ...]"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"{USAGE}\n{PROG}: error: no script given", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"{PROG}: error: no script '{script}'", file=sys.stderr)
        return 2
    if not sys.flags.safe_path:
        # `python -m` put the working directory there; `python SCRIPT` puts
        # the script's folder, where its own modules are.  Set before the
        # check below, which must see what the script's `import caffe` will.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        pycaffe_compat.install_as_caffe()
    except pycaffe_compat.RealCaffeInstalled as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    pycaffe_compat.log_like_pycaffe()
    sys.argv = argv
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    pycaffe_compat.install_as_caffe()
