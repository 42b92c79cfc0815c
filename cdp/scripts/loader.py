"""Reading ``lua/``: a script's text with its includes pasted in, its key count checked.

A line ``--@include name`` pastes ``lua/includes/name.lua`` in place, the first time
only (includes may include others: ``profile`` needs ``bytes``).

The ``-N`` of a file name is the number of keys the script takes (``apply_batch-5.lua``:
5), ``-n`` a number that varies per call (``publish-n.lua``: one stream per event). Its
name is what Redis Cluster and the reader rely on, so it is checked when the script is
loaded: the header lists exactly ``KEYS[1]`` .. ``KEYS[N]``, and the script reads no
``KEYS[i]`` beyond N (a 0-key script builds its keys from the prefix in ARGV and
reads no KEYS at all). The typed call of a script passes exactly N keys
(``cdp.scripts.typed``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from cdp.errors import CdpError

_INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)
_HEADER = re.compile(r"\A--\[(=*)\[(.*?)\]\1\]", re.DOTALL)
_HEADER_KEY = re.compile(r"^\s*KEYS\[(\d+)\]\s", re.MULTILINE)
_KEY_USE = re.compile(r"KEYS\[(\d+)\]")


class ScriptError(CdpError):
    """A script of ``lua/`` does not match its name or its typed call (a bug of ours)."""


def lua_dir() -> Path:
    """``lua/`` of a source checkout, else the copy an installed wheel carries."""
    package = Path(__file__).resolve().parent.parent  # cdp/
    for candidate in (package.parent / "lua", package / "_lua"):
        if candidate.is_dir():
            return candidate
    raise ScriptError("the lua/ scripts are missing from this installation")


def _path(name: str) -> Path:
    found = [p for p in lua_dir().glob("*.lua") if p.stem.rsplit("-", 1)[0] == name]
    if len(found) != 1:
        raise ScriptError(f"lua/{name}-N.lua: {len(found)} files for script {name!r}")
    return found[0]


def key_count(name: str) -> int | None:
    """The N of ``lua/<name>-N.lua``: how many keys the script takes; None for ``-n``."""
    suffix = _path(name).stem.rsplit("-", 1)[1]
    if suffix == "n":
        return None
    if not suffix.isdigit():
        raise ScriptError(f"lua/{name}-{suffix}.lua: the suffix is not a key count")
    return int(suffix)


def check_keys(name: str, text: str, expanded: str) -> None:
    """The header of a fixed-count script (``text``) lists KEYS[1..N], and its code with
    the includes pasted in (``expanded``) reads none past N."""
    count = key_count(name)
    if count is None:
        return
    header = _HEADER.match(text)
    listed = sorted(int(i) for i in _HEADER_KEY.findall(header.group(2) if header else ""))
    used = {int(i) for i in _KEY_USE.findall(expanded)}
    expected = list(range(1, count + 1))
    if listed != expected or not used <= set(expected):
        raise ScriptError(
            f"{_path(name).name} takes {count} keys, but its header lists "
            f"KEYS{listed} and its code reads KEYS{sorted(used)}"
        )


@cache
def source(name: str) -> str:
    """The text of script ``name`` with its includes pasted in, each once; its key count
    checked against its header and code."""
    directory = lua_dir()
    pasted: set[str] = set()

    def expand(text: str) -> str:
        def paste(match: re.Match[str]) -> str:
            include = match.group(1)
            if include in pasted:
                return ""
            pasted.add(include)
            return expand((directory / "includes" / f"{include}.lua").read_text())

        return _INCLUDE.sub(paste, text)

    text = _path(name).read_text()
    expanded = expand(text)
    check_keys(name, text, expanded)
    return expanded


def script_names() -> list[str]:
    return sorted(p.stem.rsplit("-", 1)[0] for p in lua_dir().glob("*.lua"))
