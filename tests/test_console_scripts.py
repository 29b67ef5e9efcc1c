"""Every program in tools/ is installed on PATH as a console script that
runs the same function (setup.cfg's entry points)."""
import configparser
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_scripts():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines if line.strip())


def test_every_tool_has_a_console_script_running_its_function():
    scripts = declared_scripts()
    tools = sorted(os.listdir(os.path.join(ROOT, "tools")))
    assert sorted(scripts) == tools
    for tool in tools:
        with open(os.path.join(ROOT, "tools", tool)) as f:
            module, function = re.search(r"from (sppcaffe\.[\w.]+) import (\w+)", f.read()).groups()
        assert scripts[tool] == f"{module}:{function}"
        imported = __import__(module, fromlist=[function])
        assert callable(getattr(imported, function))
