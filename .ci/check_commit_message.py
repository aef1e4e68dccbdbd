"""commit-msg hook: a subject of at most 72 characters, then a blank line and a body that says why.

python .ci/check_commit_message.py .git/COMMIT_EDITMSG
"""

import sys
from pathlib import Path

SUBJECT_LIMIT = 72


def problems(message: str) -> list[str]:
    """What is wrong with a commit message (Git's comment lines ignored); empty when nothing is."""
    lines = [line for line in message.splitlines() if not line.startswith("#")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or not lines[0].strip():
        return ["the message has no subject line"]
    found = []
    if len(lines[0]) > SUBJECT_LIMIT:
        found.append(f"the subject is {len(lines[0])} characters; at most {SUBJECT_LIMIT}")
    if len(lines) > 1 and lines[1].strip():
        found.append("the subject must be followed by a blank line")
    if not any(line.strip() for line in lines[2:]):
        found.append("the message has no body: say why the change is made")
    return found


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    found = problems(path.read_text(encoding="utf-8"))
    for problem in found:
        print(f"{path}: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
