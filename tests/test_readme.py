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
