"""Overriding fields of a protobuf message (a SolverParameter) by name:
from a YAML file (`--cfg file.yml`) and from `--set key=value` flags.

    base_lr: 0.005            # scalars are typed by the field: int, float, bool, string
    lr_policy: multistep
    stepvalue: [2000, 3000]   # a repeated field takes a list (it replaces the field)
    solver_mode: CPU          # enums by name (or number)
    train_state: {level: 1}   # a message field takes a mapping, merged field by field
    snapshot:                 # empty (null): back to the field's default

`--set` takes the same keys, dotted for nested fields
(`--set train_state.level=1`), and a YAML value (`--set stepvalue=[2000,3000]`).
Values are checked against the field's type, so `--set max_iter=1.5` or
`--set base_lr=fast` fail with a message naming the key; unknown keys fail
with the closest field names.
"""
import difflib

import yaml
from google.protobuf.descriptor import FieldDescriptor

from ..io.yaml_file import read_yaml

INT_TYPES = {FieldDescriptor.CPPTYPE_INT32: (-2**31, 2**31 - 1),
             FieldDescriptor.CPPTYPE_INT64: (-2**63, 2**63 - 1),
             FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
             FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1)}
FLOAT_TYPES = (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)
TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A bad override; the message names where it came from and the key."""


def load_cfg(path):
    """[(key, value)] of a YAML mapping file, in file order."""
    content = read_yaml(path, ConfigError)
    if content is None:
        return []
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of field names to values "
                          f"(e.g. 'base_lr: 0.01'), got a {type(content).__name__}")
    return list(content.items())


class Setting:
    """One `--set key=value`: the key and the value as YAML reads it, with
    its original text kept for string fields (so `--set snapshot_prefix=007`
    stays "007" rather than the number 7)."""

    def __init__(self, text):
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set '{text}': expected KEY=VALUE (e.g. --set base_lr=0.001)")
        self.key, self.raw = key, raw.strip()
        try:
            self.value = yaml.safe_load(self.raw) if self.raw else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: the value '{self.raw}' is not valid YAML: "
                              f"{err}") from None

    def __repr__(self):
        return f"Setting({self.key}={self.raw})"


def apply_cfg(message, items, origin):
    """Apply [(key, value)] (from load_cfg) to `message`."""
    for key, value in items:
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: keys must be field names, got {key!r}")
        set_path(message, key, value, origin)


def apply_settings(message, settings):
    """Apply `--set` Settings to `message`, in order."""
    for setting in settings:
        set_path(message, setting.key, setting.value, "--set", raw=setting.raw)


def set_path(message, key, value, origin, raw=None):
    """Set the field named by dotted `key` (e.g. "train_state.level") of
    `message` to `value`, typed by the field."""
    *parents, name = key.split(".")
    target, walked = message, []
    for part in parents:
        field = find_field(target, part, origin, ".".join(walked + [part]))
        if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE or _is_repeated(field):
            raise ConfigError(f"{origin}: '{'.'.join(walked + [part])}' is not a single "
                              f"message field, so '{key}' cannot name a field inside it")
        target = getattr(target, part)
        walked.append(part)
    field = find_field(target, name, origin, key)
    assign(target, field, value, origin, key, raw)


def find_field(message, name, origin, key):
    fields = message.DESCRIPTOR.fields_by_name
    if name in fields:
        return fields[name]
    close = difflib.get_close_matches(name, list(fields), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else \
        f" (see message {message.DESCRIPTOR.name} in protos/caffe.proto)"
    raise ConfigError(f"{origin}: unknown field '{key}' of {message.DESCRIPTOR.name}{hint}")


def _is_repeated(field):
    return field.is_repeated


def assign(message, field, value, origin, key, raw=None):
    name = field.name
    if value is None:                       # back to the default
        message.ClearField(name)
        return
    if _is_repeated(field):
        items = value if isinstance(value, list) else [value]
        container = getattr(message, name)
        del container[:]
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                fill_message(container.add(), item, origin, where)
            else:
                container.append(convert(field, item, origin, where))
        return
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        fill_message(getattr(message, name), value, origin, key)
        return
    # The raw text only matters for strings: YAML turned it into something else.
    if raw is not None and field.cpp_type == FieldDescriptor.CPPTYPE_STRING and \
            isinstance(value, (bool, int, float)):
        value = raw
    try:
        setattr(message, name, convert(field, value, origin, key))
    except ValueError as err:           # protobuf's own range checks
        raise ConfigError(f"{origin}: {key}: {err}") from None


def fill_message(message, value, origin, key):
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {key} is a {message.DESCRIPTOR.name} message: give a "
                          f"mapping of its fields (e.g. {{level: 1}}), got {value!r}")
    for sub_key, sub_value in value.items():
        path = f"{key}.{sub_key}"
        assign(message, find_field(message, str(sub_key), origin, path), sub_value, origin, path)


def convert(field, value, origin, key):
    """`value` (from YAML) as the Python value of a scalar `field`."""
    def bad(expected):
        return ConfigError(f"{origin}: {key} expects {expected}, got {value!r}")

    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise bad("true or false")
    if kind in INT_TYPES:
        number = _as_number(value)
        if number is None or number != int(number):
            raise bad("an integer")
        low, high = INT_TYPES[kind]
        if not low <= int(number) <= high:
            raise bad(f"an integer in [{low}, {high}]")
        return int(number)
    if kind in FLOAT_TYPES:
        number = _as_number(value)
        if number is None:
            raise bad("a number")
        return float(number)
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if isinstance(value, (dict, list)):
            raise bad("a string")
        return value if isinstance(value, str) else str(value)
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return enum_number(field, value, bad)
    raise bad(f"a value of protobuf type {kind}")


def _as_number(value):
    """An int or float from YAML's value: numbers as they are, and strings
    such as "1e-3" (YAML 1.1 reads exponents without a dot as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return None


def enum_number(field, value, bad):
    enum = field.enum_type
    names = [v.name for v in enum.values]
    if isinstance(value, int) and not isinstance(value, bool):
        if value in enum.values_by_number:
            return value
    elif isinstance(value, str):
        matches = [n for n in names if n.lower() == value.strip().lower()]
        if matches:
            return enum.values_by_name[matches[0]].number
    raise bad(f"one of {', '.join(names)}")
