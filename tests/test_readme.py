"""The README's example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    maps = namespace["maps"]
    assert maps.shape == namespace["data"].test_images.shape[:3]
    assert namespace["search"].best_params_["patchcore__coreset_ratio"] in (0.01, 0.1)
    assert "patchcore__coreset_ratio" in capsys.readouterr().out


def test_readme_set_up_is_two_commands_with_the_cpu_note():
    text = README.read_text()
    setup = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2, commands  # exactly two set-up commands
    assert all(c.strip().count("\n") == 0 for c in commands)  # one line each
    assert commands[0].strip().endswith("pip install . && skad benchmark")
    assert 'pip install -e ".[test]" && python -m pytest' in commands[1]
    assert len(re.findall(r"```bash", text)) == 2  # none elsewhere either
    # the CPU-only note: PyTorch's CPU index, and what the commands cost
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup
    assert "What they cost" in setup and re.search(r"\d+ min", setup)
