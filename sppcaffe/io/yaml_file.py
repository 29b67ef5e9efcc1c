"""Reading YAML settings files (tool configs), naming the file on error."""
import yaml

from .files import read_text_file


def read_yaml(path, error=ValueError):
    """The parsed content of YAML file `path`; problems raise `error` with
    a message naming the file."""
    try:
        text = read_text_file(path, "config", error)
    except OSError as err:
        raise error(str(err)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise error(f"{path}: not valid YAML: nested too deeply") from None
