"""The README opens with the two commands that work on a fresh machine; CI runs the second one verbatim."""

import re

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert first_block, "README.md must start with a code block holding the two commands"
    lines = [ln.strip() for ln in first_block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def test_readme_opens_with_exactly_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("app.py") and "requirements.txt" in cmds[0]
    assert "pytest" in cmds[1]
    head = (REPO / "README.md").read_text().split("```")[0]
    assert len(head.splitlines()) <= 6, "the commands must come first, before any long introduction"


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    body = [ln.strip() for ln in ci if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert body == [readme_commands()[1]]
