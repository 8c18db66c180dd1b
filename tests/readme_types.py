"""The README's typed ``yield from`` holds for a user who installs replaygen as the README says.

    python -m tests.readme_types        # from the repository root, with mypy installed

In a fresh virtual environment it runs the README's install for type-checking (the
``pip install -e . --config-settings editable_mode=...`` it names), writes the README's
``yield from Do(...)`` example with a ``reveal_type(txn)`` after that line, and runs
``mypy --strict`` from an empty directory against that environment. It fails unless mypy
finds replaygen there and infers the step's return type (``str``), not ``Any``. CI runs it
(``.ci/run``); it takes about 20 seconds.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = re.compile(r'Revealed type is "(builtins\.)?str"')  # newer mypy drops builtins.


def readme_install() -> list[str]:
    """The README's ``pip install`` for type-checking, as arguments after ``pip``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"`(pip install -e \. --config-settings editable_mode=\w+)`", text)
    if len(found) != 1:
        raise SystemExit(f"README.md: expected one `pip install -e . --config-settings "
                         f"editable_mode=...` for type-checking, found {found}")
    return shlex.split(found[0])[1:]


def readme_typed_example() -> str:
    """The README's ``yield from Do(...)`` block with ``reveal_type(txn)`` after that line."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
              if "yield from Do(" in b]
    if len(blocks) != 1:
        raise SystemExit(f"README.md: expected one python block with `yield from Do(`, "
                         f"found {len(blocks)}")
    lines = []
    for line in blocks[0].splitlines():
        lines.append(line)
        if "txn = yield from Do(" in line:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(f"{indent}reveal_type(txn)")
    if not any("reveal_type" in line for line in lines):
        raise SystemExit("README.md: the `yield from Do(` block no longer assigns `txn`")
    return "\n".join(lines) + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="replaygen-types-") as tmp:
        venv = Path(tmp) / "venv"
        python = venv / "bin" / "python"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *readme_install()],
                       cwd=ROOT, check=True)
        work = Path(tmp) / "user"  # not the repository: mypy must find replaygen installed
        work.mkdir()
        (work / "typed.py").write_text(readme_typed_example(), encoding="utf-8")
        mypy = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
             "--python-executable", str(python), "typed.py"],
            cwd=work, capture_output=True, text=True)
    print(mypy.stdout, end="")
    print(mypy.stderr, end="", file=sys.stderr)
    if mypy.returncode != 0 or not EXPECTED.search(mypy.stdout):
        print("readme_types: with the README's install, mypy did not infer the step's type "
              "through `yield from Do(...)` (expected it to reveal \"str\")", file=sys.stderr)
        return 1
    print("readme_types: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
