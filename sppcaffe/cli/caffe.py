"""`caffe`: BVLC Caffe's command-line brew (tools/caffe.cpp) on sppcaffe.

    caffe train -solver S.prototxt [-weights A.caffemodel,B.caffemodel | -snapshot X.solverstate]
    caffe test -model M.prototxt -weights W.caffemodel [-iterations 50]
    caffe time -model M.prototxt [-iterations 50] [-phase TRAIN|TEST]
    caffe device_query -gpu 0|0,1|all

with Caffe's flags (-gpu, -level, -stage, -sigint_effect, -sighup_effect,
...), spelt as gflags reads them: `-solver x`, `--solver x`, `-solver=x`,
`--solver=x`, before or after the action; booleans as `-flag`,
`-flag=false` or `-noflag`; `--` ends the flags.  So a Caffe script such as
examples/mnist/train_lenet.sh (`./build/tools/caffe train
--solver=examples/mnist/lenet_solver.prototxt $@`) runs with only the
binary's path changed.

Each action is the code of the sppcaffe tool that does the same job
(train_net, test_net, time_net): the flags are turned into that tool's
arguments, and its options beyond Caffe's are accepted in the same spelling
(`caffe train -iters 500 -set base_lr=0.02`, `caffe time -data_shape
data=8,3,224,224`). As in Caffe, a Caffe flag the action does not read is
ignored, the log lines are glog's, on stderr, and -stage takes a comma-
separated list (here also repeated flags). Also read: glog's -log_dir DIR
(the log is written to DIR as well, under glog's file name, with the link
DIR/caffe.INFO; GLOG_log_dir in the environment too), -minloglevel N
(GLOG_minloglevel), -logtostderr (GLOG_logtostderr: no file in -log_dir)
and, without effect since the log always goes to stderr, -alsologtostderr,
-colorlogtostderr and -v.

Differences from Caffe: one GPU per process (`train -gpu 0,1` or `-gpu all`
on several GPUs is refused, except under `mpiexec -n N`, where each rank
takes its own: sppcaffe/parallel; `test` and `time` use the first id, as
Caffe does); a missing flag or file is one error line, exit status 1, instead of
an abort; without -level the solver file's train_state.level is kept (Caffe
sets 0); a solver asking for GPU mode where none opens trains on the CPU
with a warning (tools/train_net's rule); `test` reads -phase and `time`
reads -weights (Caffe ignores them there).
"""
import contextlib
import datetime
import getpass
import logging
import os
import socket
import sys
import textwrap
from typing import NamedTuple

from .. import backends, parallel
from . import CliError, device_for, progress, test_net, time_net, train_net

PROG = "caffe"
CAFFE_VERSION = "1.0.0"
log = logging.getLogger("sppcaffe")


class Flag(NamedTuple):
    name: str
    kind: str           # gflags' type name: string, int32 or bool
    default: str
    help: str


# tools/caffe.cpp's flags, in the order gflags lists them.
CAFFE_FLAGS = [
    Flag("gpu", "string", "", "Optional; run in GPU mode on given device IDs separated by ','. "
         "Use '-gpu all' to run on all available GPUs. The effective training batch size is "
         "multiplied by the number of devices."),
    Flag("iterations", "int32", "50", "The number of iterations to run."),
    Flag("level", "int32", "0", "Optional; network level."),
    Flag("model", "string", "", "The model definition protocol buffer text file."),
    Flag("phase", "string", "", "Optional; network phase (TRAIN or TEST). Only used for 'time'."),
    Flag("sighup_effect", "string", "snapshot", "Optional; action to take when a SIGHUP signal "
         "is received: snapshot, stop or none."),
    Flag("sigint_effect", "string", "stop", "Optional; action to take when a SIGINT signal is "
         "received: snapshot, stop or none."),
    Flag("snapshot", "string", "", "Optional; the snapshot solver state to resume training."),
    Flag("solver", "string", "", "The solver definition protocol buffer text file."),
    Flag("stage", "string", "", "Optional; network stages (not to be confused with phase), "
         "separated by ','."),
    Flag("weights", "string", "", "Optional; the pretrained weights to initialize finetuning, "
         "separated by ','. Cannot be set simultaneously with snapshot."),
]
# glog's flags that Caffe scripts pass (GLOG_<name> in the environment sets the default).
GLOG_FLAGS = [
    Flag("log_dir", "string", "", "If specified, logfiles are written into this directory "
         "too (DIR/caffe.INFO links to the latest)."),
    Flag("minloglevel", "int32", "0", "Messages logged at a lower level than this don't "
         "actually get logged anywhere (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL)."),
    Flag("logtostderr", "bool", "false", "Log to stderr only, with no file in -log_dir."),
    Flag("alsologtostderr", "bool", "false", "Accepted; the log always goes to stderr."),
    Flag("colorlogtostderr", "bool", "false", "Accepted, without effect."),
    Flag("v", "int32", "0", "Accepted, without effect (no VLOG lines)."),
]
HELP_FLAGS = ("help", "helpfull", "helpshort", "h", "version")
COMMANDS = [("train", "train or finetune a model"), ("test", "score a model"),
            ("device_query", "show GPU diagnostic information"),
            ("time", "benchmark model execution time")]
# The sppcaffe tool behind each action; test_net's --detection is a tool of its own.
TOOLS = {"train": train_net, "test": test_net, "time": time_net}
NOT_FORWARDED = {"help", "detection"}
LOG_LEVELS = [logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
TRUE, FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


# ---------------------------------------------------------------------------
# The command line, read as gflags reads it
# ---------------------------------------------------------------------------
def tool_options(action):
    """gflags name -> argparse action, for the options of the sppcaffe tool
    behind a caffe action (`--sigint-effect` is -sigint_effect)."""
    parser = TOOLS[action].build_parser()
    options = {}
    for option in parser._actions:      # argparse keeps no public list of them
        long_names = [s for s in option.option_strings if s.startswith("--")]
        if long_names and option.dest not in NOT_FORWARDED:
            options[long_names[0][2:].replace("-", "_")] = option
    return options


def takes_value(option):
    return option.nargs != 0            # store_true and store_false take none


def known_flags():
    """gflags name -> whether it takes a value, for every flag `caffe` reads."""
    known = {f.name: f.kind != "bool" for f in CAFFE_FLAGS + GLOG_FLAGS}
    known.update({name: False for name in HELP_FLAGS})
    for action in TOOLS:
        for name, option in tool_options(action).items():
            known.setdefault(name, takes_value(option))
    return known


def parse_command_line(argv, known=None):
    """([(flag name, value)], [positional arguments]) of a gflags command
    line.  A flag's value is a string; a boolean's is "true" or "false"."""
    known = known_flags() if known is None else known
    flags, positional = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        written, has_value, value = arg.lstrip("-").partition("=")
        name = written.replace("-", "_")
        if name not in known and name.startswith("no") and known.get(name[2:]) is False \
                and not has_value:
            flags.append((name[2:], "false"))
            continue
        if name not in known:
            raise CliError(f"unknown command line flag '{written}' (see `caffe -help`)")
        if not known[name]:
            value = value.lower() if has_value else "true"
            if value not in TRUE + FALSE:
                raise CliError(f"illegal value '{value}' specified for bool flag '{written}'")
            value = "true" if value in TRUE else "false"
        elif not has_value:
            if i >= len(argv):
                raise CliError(f"flag '{written}' is missing its argument")
            value = argv[i]
            i += 1
        flags.append((name, value))
    return flags, positional


def last_value(flags, name, default=""):
    """A flag's value (the last given, as gflags keeps), or `default`."""
    values = [value for flag, value in flags if flag == name]
    return values[-1] if values else default


def glog_setting(flags, name, default):
    """A glog flag's value: the command line's, else GLOG_<name>, else `default`."""
    return last_value(flags, name, os.environ.get(f"GLOG_{name}", default))


# ---------------------------------------------------------------------------
# Usage
# ---------------------------------------------------------------------------
def flag_lines(flag_list):
    lines = []
    for flag in flag_list:
        default = f'"{flag.default}"' if flag.kind == "string" else flag.default
        text = f"-{flag.name} ({flag.help}) type: {flag.kind} default: {default}"
        lines.append(textwrap.fill(text, width=80, initial_indent="    ",
                                   subsequent_indent="      "))
    return lines


def extra_option_lines():
    """The sppcaffe options each action accepts beyond Caffe's flags."""
    caffe_names = {f.name for f in CAFFE_FLAGS}
    lines = []
    for action in TOOLS:
        names = [f"-{name}" + (f" {option.metavar or name.upper()}" if takes_value(option)
                               else "")
                 for name, option in tool_options(action).items() if name not in caffe_names]
        text = f"{action} ({TOOLS[action].PROG}): " + ", ".join(names)
        lines.append(textwrap.fill(text, width=80, initial_indent="    ",
                                   subsequent_indent="      "))
    return lines


def usage():
    commands = "\n".join(f"  {name:<16}{text}" for name, text in COMMANDS)
    return "\n".join(
        [f"{PROG}: command line brew", f"usage: {PROG} <command> <args>", "", "commands:",
         commands, "", "  Flags from tools/caffe.cpp:"] + flag_lines(CAFFE_FLAGS)
        + ["", "  Also accepted: the options of the sppcaffe tool behind each action "
               "(`<tool> --help`):"] + extra_option_lines()
        + ["", "  Flags from glog:"] + flag_lines(GLOG_FLAGS)) + "\n"


# ---------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------
def open_gpu(device_id):
    """Open GPU `device_id` (Caffe's SetDevice); a CliError saying why not."""
    try:
        backends.set_device(device_id)
        return backends.current_device()
    except (backends.GPUUnavailable, ValueError) as err:
        raise CliError(f"-gpu {device_id}: {err}") from None


def gpu_count():
    """How many GPUs `-gpu all` means (cudaGetDeviceCount)."""
    device = open_gpu(0)
    driver = getattr(device, "cuda", None)      # PyCUDA's driver on a CudaDevice
    return driver.Device.count() if driver is not None else 1


def gpu_ids(value):
    """Caffe's get_gpus: the device ids of a -gpu value ([] for none)."""
    if not value:
        return []
    if value == "all":
        return list(range(gpu_count()))
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise CliError(f"-gpu expects device ids separated by ',' (e.g. -gpu 0 or -gpu 0,1) "
                       f"or 'all', got '{value}'") from None


def single_gpu(value):
    """The one GPU id `test` and `time` run on: the first of -gpu's, as
    Caffe's single-GPU functions (None for the CPU)."""
    ids = gpu_ids(value)
    while len(ids) > 1:
        log.info("Not using GPU #%d for single-GPU function", ids.pop())
    return ids[0] if ids else None


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------
def tool_arguments(action, flags, gpu):
    """The parsed arguments of the sppcaffe tool behind `action` for the
    command line's flags (gpu: the device id chosen, or None)."""
    options = tool_options(action)
    caffe_names = {f.name for f in CAFFE_FLAGS}
    glog_names = {f.name for f in GLOG_FLAGS}
    argv = []
    for name, value in flags:
        if name in glog_names or name == "gpu":
            continue
        if name not in options:
            if name in caffe_names:
                continue        # Caffe ignores the flags an action does not read
            raise CliError(f"-{name} is not an option of `{PROG} {action}`")
        option_string = next(s for s in options[name].option_strings if s.startswith("--"))
        if not takes_value(options[name]):
            if value == "true":
                argv.append(option_string)
        elif name == "stage":
            argv += [x for stage in value.split(",") if stage for x in (option_string, stage)]
        elif value != "" or name not in caffe_names:    # Caffe's "" is its "not given"
            argv += [option_string, value]
    if gpu is not None:
        argv += ["--gpu", str(gpu)]
    parser = TOOLS[action].build_parser()
    parser.prog = f"{PROG} {action}"
    return parser.parse_args(argv)


def require(flags, name, message):
    if not last_value(flags, name):
        raise CliError(f"{message} (-{name})")


def train(flags):
    require(flags, "solver", "Need a solver definition to train")
    if last_value(flags, "snapshot") and last_value(flags, "weights"):
        raise CliError("Give a snapshot to resume training or weights to finetune but not both.")
    if parallel.world() is not None and last_value(flags, "gpu"):
        # One process per GPU under mpiexec: this rank's id of the list.
        args = tool_arguments("train", flags, last_value(flags, "gpu"))
        with device_for(args.gpu, "-gpu"):
            return train_net.train(args)
    ids = gpu_ids(last_value(flags, "gpu"))
    if len(ids) > 1:
        raise CliError(f"-gpu {last_value(flags, 'gpu')} names {len(ids)} GPUs: multi-GPU "
                       "training is not supported; give one, e.g. -gpu 0")
    args = tool_arguments("train", flags, ids[0] if ids else None)
    with device_for(args.gpu, "-gpu"):
        return train_net.train(args)


def test(flags):
    require(flags, "model", "Need a model definition to score")
    require(flags, "weights", "Need model weights to score")
    args = tool_arguments("test", flags, single_gpu(last_value(flags, "gpu")))
    with device_for(args.gpu, "-gpu"):
        return test_net.run(args)


def time(flags):
    require(flags, "model", "Need a model definition to time")
    gpu = single_gpu(last_value(flags, "gpu"))
    if gpu is not None:
        open_gpu(gpu)           # a missing GPU is reported with Caffe's flag name
    return time_net.run(tool_arguments("time", flags, gpu), log.info, prog=PROG)


def device_query(flags):
    value = last_value(flags, "gpu")
    log.info("Querying GPUs %s", value)
    if not value:
        log.info("No GPU given: -gpu 0 (or -gpu 0,1, or -gpu all) shows their properties")
    for device_id in gpu_ids(value):
        for label, text in device_properties(device_id, open_gpu(device_id)):
            log.info("%s%s", f"{label}:".ljust(31), text)
    return 0


def device_properties(device_id, device):
    """[(label, value)] of Caffe::DeviceQuery for an open device."""
    gpu = getattr(device, "gpu", None)          # PyCUDA's Device on a CudaDevice
    if gpu is None:
        return [("Device id", device_id), ("Name", device.name),
                ("Note", "not a GPU: SPPCAFFE_GPU=host runs the CUDA kernels on the CPU")]
    attribute = device.cuda.device_attribute
    values = gpu.get_attributes()
    major, minor = gpu.compute_capability()

    def dims(prefix):
        return ", ".join(str(values[getattr(attribute, f"{prefix}_{axis}")]) for axis in "XYZ")

    def yes_no(name):
        return "Yes" if values[getattr(attribute, name)] else "No"

    return [("Device id", device_id), ("Major revision number", major),
            ("Minor revision number", minor), ("Name", gpu.name()),
            ("Total global memory", gpu.total_memory()),
            ("Total shared memory per block", values[attribute.MAX_SHARED_MEMORY_PER_BLOCK]),
            ("Total registers per block", values[attribute.MAX_REGISTERS_PER_BLOCK]),
            ("Warp size", values[attribute.WARP_SIZE]),
            ("Maximum memory pitch", values[attribute.MAX_PITCH]),
            ("Maximum threads per block", values[attribute.MAX_THREADS_PER_BLOCK]),
            ("Maximum dimension of block", dims("MAX_BLOCK_DIM")),
            ("Maximum dimension of grid", dims("MAX_GRID_DIM")),
            ("Clock rate", values[attribute.CLOCK_RATE]),
            ("Total constant memory", values[attribute.TOTAL_CONSTANT_MEMORY]),
            ("Texture alignment", values[attribute.TEXTURE_ALIGNMENT]),
            ("Concurrent copy and execution", yes_no("GPU_OVERLAP")),
            ("Number of multiprocessors", values[attribute.MULTIPROCESSOR_COUNT]),
            ("Kernel execution timeout", yes_no("KERNEL_EXEC_TIMEOUT"))]


ACTIONS = {"train": train, "test": test, "time": time, "device_query": device_query}


# ---------------------------------------------------------------------------
# glog's log file
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def log_file(log_dir):
    """Inside the block, the log also goes to a file in `log_dir` named as
    glog names it (caffe.HOST.USER.log.INFO.YYYYMMDD-HHMMSS.PID, with its
    header), and DIR/caffe.INFO links to it."""
    if not log_dir:
        yield None
        return
    try:
        os.makedirs(log_dir, exist_ok=True)
        now = datetime.datetime.now()
        host = socket.gethostname()
        name = f"{PROG}.{host}.{getpass.getuser()}.log.INFO.{now:%Y%m%d-%H%M%S}.{os.getpid()}"
        path = os.path.join(log_dir, name)
        with open(path, "w") as f:
            f.write(f"Log file created at: {now:%Y/%m/%d %H:%M:%S}\nRunning on machine: {host}\n"
                    "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
        link = os.path.join(log_dir, f"{PROG}.INFO")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(name, link)
    except OSError as err:
        raise CliError(f"-log_dir {log_dir}: cannot write the log file there: {err}") from None
    handler = logging.FileHandler(path)
    handler.setFormatter(progress.CaffeLogFormatter())
    loggers = [logging.getLogger(name) for name in progress.LOGGER_NAMES]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def log_level(flags):
    value = glog_setting(flags, "minloglevel", "0")
    try:
        return LOG_LEVELS[min(max(int(value), 0), len(LOG_LEVELS) - 1)]
    except ValueError:
        raise CliError(f"-minloglevel expects 0 (INFO) to 3 (FATAL), got '{value}'") from None


@parallel.end_all_on_failure      # under mpiexec: a failing rank stops them all
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        flags, positional = parse_command_line(argv)
        names = {name for name, value in flags if value != "false"}
        if names & {"help", "helpfull", "helpshort", "h"}:
            print(usage(), end="")
            return 0
        if "version" in names:
            from importlib.metadata import version
            print(f"{PROG} version {CAFFE_VERSION} (sppcaffe {version('sppcaffe')})")
            return 0
        if not positional:      # as Caffe: the usage, exit status 0
            print(usage(), end="")
            return 0
        if len(positional) > 1:
            raise CliError(f"one action expected, got {len(positional)}: "
                           f"{' '.join(positional)}\n{usage()}".rstrip())
        action = positional[0]
        if action not in ACTIONS:
            raise CliError(f"Unknown action: {action}; available caffe actions: "
                           f"{', '.join(sorted(ACTIONS))}")
        level = log_level(flags)
    except CliError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    use_file = glog_setting(flags, "logtostderr", "false").lower() not in TRUE

    def run(flags):
        with log_file(glog_setting(flags, "log_dir", "") if use_file else ""):
            return ACTIONS[action](flags)
    return progress.run_main(PROG, run, flags, level=level,
                             is_user_error=train_net.is_user_error)


if __name__ == "__main__":
    sys.exit(main())
