"""Command-line tools (the scripts in tools/ are thin wrappers around these
modules' ``main`` functions)."""


class CliError(ValueError):
    """A user-facing error: printed without a traceback."""


def add_net_state_arguments(parser, default_phase):
    """--phase, --level and --stage: the NetState a tool builds its net in."""
    parser.add_argument("--phase", type=str.upper, choices=["TEST", "TRAIN"], default=default_phase,
                        help="network phase (default: %(default)s)")
    parser.add_argument("--level", type=int, default=0, help="network level (default: 0)")
    parser.add_argument("--stage", action="append", default=[],
                        help="network stage; repeat for several")
