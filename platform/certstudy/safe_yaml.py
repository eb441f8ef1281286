"""Reading YAML that a user (or anyone who can write the study folder) hands to certstudy.

``yaml.safe_load`` builds no objects, but it still accepts input that a study file never needs and
that can hurt: a key given twice (the last one silently wins), an alias bomb ("billion laughs": a
few hundred bytes that expand to 10^9 nodes once anything walks the result, as pydantic does), a
document nested thousands of levels deep (a RecursionError traceback), a FIFO or device (a read
that never returns), a huge file, or bytes that are not UTF-8. Each of these is refused here with
a ``SpecError``: one line naming the file and what is wrong, nothing else read.

PyYAML offers no option for any of these, so the checks are written here: a SafeLoader subclass
that refuses duplicate keys, and a bound on the expanded size and depth of the composed node graph
(aliases counted every time they are used), checked before any Python object is built.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from certstudy.errors import SpecError

MAX_BYTES = 1_000_000
MAX_NODES = 100_000  # expanded: an alias counts as many nodes as it stands for
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping giving one key twice (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                break
            if duplicate:
                raise _Refused(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """A reason to refuse the document, turned into a SpecError with the file's name."""


def _expanded(node: yaml.Node) -> tuple[int, int]:
    """(nodes, depth) of ``node`` with every alias expanded, computed once per distinct node;
    raises _Refused as soon as either bound is passed."""
    memo: dict[int, tuple[int, int]] = {}

    def walk(n: yaml.Node, level: int) -> tuple[int, int]:
        if level > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep")
        if id(n) in memo:
            return memo[id(n)]
        memo[id(n)] = (1, 1)  # a recursive alias (a node containing itself) counts once, then stops
        children: list[yaml.Node] = []
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [part for pair in n.value for part in pair]
        count, depth = 1, 1
        for child in children:
            c, d = walk(child, level + 1)
            count += c
            depth = max(depth, d + 1)
            if count > MAX_NODES:
                raise _Refused(f"expands to more than {MAX_NODES:,} nodes (aliases included)")
        memo[id(n)] = (count, depth)
        return count, depth

    return walk(node, 0)


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most MAX_BYTES, else a one-line SpecError. The file is
    opened non-blocking and checked on its descriptor, so a FIFO swapped in never hangs the reader,
    and no more than MAX_BYTES + 1 bytes are ever read."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SpecError(source, "", source, f"cannot read the {what} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(source, "", source, f"the {what} is not a regular file (a FIFO, device or folder)")
        if info.st_size > MAX_BYTES:
            raise SpecError(source, "", f"{info.st_size:,} bytes", f"a {what} is at most {MAX_BYTES:,} bytes")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise SpecError(source, "", source, f"cannot read the {what} ({exc.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_BYTES:
        raise SpecError(source, "", f"over {MAX_BYTES:,} bytes", f"a {what} is at most {MAX_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(source, "", f"byte {exc.start}", f"the {what} is not UTF-8 text") from None


def load_all(text: str, source: str) -> list[Any]:
    """Every YAML document of ``text`` as plain data (empty documents dropped), refusing duplicate
    keys, alias bombs and deep nesting with a SpecError naming ``source``."""
    try:
        loader = _UniqueKeyLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML never allows (NUL, other controls)
        raise SpecError(
            source, "", f"character {exc.position + 1}", f"not valid YAML: control character #x{exc.character:04x}"
        ) from None
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _expanded(node)
            docs.append(loader.construct_document(node))
    except _Refused as exc:
        raise SpecError(source, "", "<document>", str(exc)) from None
    except RecursionError:
        raise SpecError(source, "", "<document>", f"nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(source, "", where, f"not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    return [d for d in docs if d is not None]


def load_file(path: str | Path, what: str = "file") -> list[Any]:
    """``load_all`` of a file checked by ``read_text``."""
    path = Path(path)
    return load_all(read_text(path, what), str(path))
