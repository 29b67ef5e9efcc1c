"""Reading YAML settings files (tool configs), naming the file on error."""
import yaml


def read_yaml(path, error=ValueError):
    """The parsed content of YAML file `path`; problems raise `error` with
    a message naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as err:
        raise error(f"cannot read config '{path}': {err.strerror}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
