r"""Checksummed lines of ``metrics.jsonl``: each record carries its SHA-256 and the one of the record before it.

A record is written as one line of strict JSON whose last two members are::

    {"kind": "measurement", "step": 3, ..., "previous_sha256": "<p>", "record_sha256": "<h>"}

where ``h`` is the SHA-256 (64 hex digits) of the UTF-8 bytes of the line up to and including ``p``, closed
with ``}`` (``{"kind": ..., "step": 3, ..., "previous_sha256": "<p>"}``, exactly as written), and ``p`` is the
``record_sha256`` of the line before (``""`` on the first line). So

* a line is *intact* when ``h`` matches its bytes: a changed value, a flipped bit or a foreign byte is named
  at its line, and only that record is lost;
* a line is *in place* when ``p`` is the previous line's ``h``: a line removed, repeated or moved is named at
  the line after it, whose record is still intact.

Appending needs only the last ``h`` (one write per record, no second file to keep in step). Every single-bit
flip of a line is detected: inside the covered bytes or the digest by ``h``, in the name ``record_sha256`` by
:func:`_near_member`, anywhere else because the line stops being JSON.

A line without ``record_sha256`` has the problem :data:`NO_DIGEST` (its record kept, unverified); in a file
where any line carries a digest (``Scan.checked``) its record is dropped too. A file in which no line does is
of run-directory format 0, read by :func:`sharpscope.io.migrations.records_v0`.

>>> line, digest = encode({"step": 0, "x": 1.5})
>>> line[:62]
'{"step": 0, "x": 1.5, "previous_sha256": "", "record_sha256": '
>>> scan((line + "\n").encode()).lines[0].record
{'step': 0, 'x': 1.5}
>>> bad = scan((line.replace("1.5", "2.5") + "\n").encode()).lines[0]
>>> bad.record is None, bad.problem
(True, 'checksum mismatch: the record differs from the one written')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sharpscope.io import jsonsafe

MEMBER = "record_sha256"
PREVIOUS = "previous_sha256"
RESERVED = (MEMBER, PREVIOUS)
_TAIL = re.compile(r', "previous_sha256": "((?:[0-9a-f]{64})?)", "record_sha256": "([0-9a-f]{64})"\}$')
MISMATCH = "checksum mismatch: the record differs from the one written"
NO_DIGEST = f"no {MEMBER!r} member"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode(record: Mapping[str, Any], previous: str = "") -> tuple[str, str]:
    """The line (without its newline) that stores ``record`` after a line whose digest is ``previous``
    (``""`` for the first line), and the new line's digest."""
    if not record:
        raise ValueError("a record is a non-empty JSON object")
    body = jsonsafe.dumps(dict(record))
    covered = f'{body[:-1]}, "{PREVIOUS}": "{previous}"}}'
    digest = _sha256(covered)
    return f'{covered[:-1]}, "{MEMBER}": "{digest}"}}', digest


def encode_all(records: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The text (lines with newlines) of ``records`` as a fresh chain, and the last digest (``""`` if none)."""
    lines, digest = [], ""
    for record in records:
        line, digest = encode(record, digest)
        lines.append(line + "\n")
    return "".join(lines), digest


@dataclass(frozen=True)
class Line:
    """One non-blank line: its 1-based ``number``; the record when it is readable and intact (unverified with
    the problem :data:`NO_DIGEST`), else None; the digest it stores (when its tail is readable); the
    ``problem`` (None when the line is intact and in place)."""

    number: int
    record: dict[str, Any] | None
    digest: str | None
    problem: str | None


@dataclass(frozen=True)
class Scan:
    """Every non-blank line of a file, checked. ``torn`` is a last line without its newline (a write cut off
    by a kill), kept apart from ``lines``; ``checked`` whether the file carries digests; ``sha256`` the digest
    of the whole file."""

    lines: list[Line]
    torn: Line | None
    checked: bool
    sha256: str

    @property
    def problems(self) -> list[Line]:
        """The lines with a problem, in order (the torn line not among them)."""
        return [line for line in self.lines if line.problem is not None]

    @property
    def last_digest(self) -> str:
        """The digest of the last line (``""`` for an empty or unchecksummed file)."""
        return next((line.digest or "" for line in reversed(self.lines)), "")


def _near_member(key: str) -> bool:
    """A key that is ``record_sha256`` with one character changed (a damaged name)."""
    return len(key) == len(MEMBER) and sum(a != b for a, b in zip(key, MEMBER)) == 1


def _parse(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        record = jsonsafe.loads(text)
    except ValueError as e:
        return None, f"not a JSON record ({e})"
    if not isinstance(record, dict):
        return None, f"not a JSON record (a {type(record).__name__})"
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return None, f"not a run record (no integer 'step', got {step!r})"
    return record, None


def _check(number: int, raw: bytes, previous: str | None) -> tuple[Line, bool]:
    """The line and whether it carries a digest (or a damaged one). ``previous`` is the digest of the line
    before (``""`` at the start; None when that line's digest cannot be read)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Line(number, None, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"), False
    record, problem = _parse(text)
    tail = _TAIL.search(text)
    stored = tail.group(2) if tail else None
    if record is None:
        return Line(number, None, stored, problem), stored is not None
    if MEMBER not in record:
        if any(_near_member(k) for k in record):
            return Line(number, None, None, f"damaged checksum (no {MEMBER!r} member)"), True
        return Line(number, record, None, NO_DIGEST), False
    if tail is None:
        return Line(number, None, None, f"the {PREVIOUS!r} and {MEMBER!r} members are not in their written "
                                        "form"), True
    if _sha256(text[:tail.start(2) - len(f', "{MEMBER}": "')] + "}") != stored:
        return Line(number, None, stored, MISMATCH), True
    del record[MEMBER], record[PREVIOUS]
    if previous is not None and tail.group(1) != previous:  # None: the line before is unreadable
        where = "at the start of the file" if previous == "" else f"after line {number - 1}"
        return Line(number, record, stored, f"out of place: it was not written {where} (a record before it "
                                            "was removed, repeated or moved)"), True
    return Line(number, record, stored, None), True


def scan(data: bytes) -> Scan:
    """Check every line of a ``metrics.jsonl`` file's bytes (see the module docstring)."""
    pieces = data.split(b"\n")
    last = pieces.pop()  # after the final newline: b"" unless the last write was cut short
    lines: list[Line] = []
    checked = False
    previous: str | None = ""
    for i, raw in enumerate(pieces):
        if not raw.strip():
            continue
        line, has = _check(i + 1, raw, previous)
        checked = checked or has
        lines.append(line)
        previous = line.digest
    torn = None
    if last.strip():  # no newline after the last line
        number = len(pieces) + 1
        whole, has = _check(number, last, previous)
        cut, cut_has = _check(number, last[:-1], previous)
        if whole.problem in (None, NO_DIGEST):  # complete but for its newline
            lines.append(whole)
            checked = checked or has
        elif cut.problem is None and cut_has:  # a complete line whose newline byte was damaged
            lines.append(Line(number, None, cut.digest, "damaged end of line (the byte after the record is not "
                                                        "a newline)"))
        else:
            torn = Line(number, None, None, "cut short (no newline at its end): a write interrupted by a kill")
    if checked:  # a line without a digest in a checksummed file is a damaged one
        lines = [Line(ln.number, None, None, f"{NO_DIGEST}, though the other records carry one")
                 if ln.problem == NO_DIGEST else ln for ln in lines]
    return Scan(lines, torn, checked, hashlib.sha256(data).hexdigest())
