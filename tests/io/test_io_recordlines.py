"""Checksummed record lines: every single-bit flip detected, damage named at its line, order checked,
files from before checksums read unverified, a torn last line told apart from a damaged one."""

from __future__ import annotations

import hashlib
import json

import pytest

from sharpscope.io import recordlines
from sharpscope.io.migrations import records_v0
from sharpscope.io.recordlines import encode, encode_all, scan

RECORDS = [{"kind": "measurement", "step": 0, "eigenvalues": [12.5, "NaN"], "train_loss": 0.25},
           {"kind": "alignment", "step": 0, "update_norm": 1.0},
           {"kind": "measurement", "step": 3, "eigenvalues": [13.75], "note": "é"}]


def text() -> bytes:
    return encode_all(RECORDS)[0].encode()


def test_a_line_is_its_json_with_the_previous_and_own_digest_of_the_bytes_written() -> None:
    data = text()
    lines = data.decode().splitlines()
    previous = ""
    for line, record in zip(lines, RECORDS):
        stored = json.loads(line)
        assert stored.pop("previous_sha256") == previous
        digest = stored.pop("record_sha256")
        covered = line[:line.index(', "record_sha256"')] + "}"  # an independent reading of the format
        assert digest == hashlib.sha256(covered.encode()).hexdigest() and stored == record
        previous = digest
    result = scan(data)
    assert result.checked and result.torn is None and result.problems == []
    assert [ln.record for ln in result.lines] == RECORDS and result.last_digest == previous
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_every_single_bit_flip_is_detected() -> None:
    data = text()
    missed = []
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            result = scan(bytes(damaged))
            if not result.problems:  # a torn last line would be skipped by a reader: it must not look torn
                missed.append((i, bit, bytes(damaged[max(0, i - 8):i + 8])))
    assert missed == []


@pytest.mark.parametrize("damage", ["value", "latin-1", "no-digest"])
def test_damage_is_named_at_its_line_and_only_that_record_is_lost(damage: str) -> None:
    lines = text().decode().splitlines(keepends=True)
    if damage == "value":  # still valid JSON, one number different
        lines[1] = lines[1].replace('"update_norm": 1.0', '"update_norm": 1.5')
    elif damage == "no-digest":  # a record appended by a writer that knows nothing of checksums
        lines[1] = json.dumps({"kind": "alignment", "step": 0, "update_norm": 1.0}) + "\n"
    data = "".join(lines).encode()
    if damage == "latin-1":
        data = data.replace(b'"update_norm"', b'"update_n\xf6rm"')
    result = scan(data)
    assert [ln.number for ln in result.problems] == [2]
    assert [ln.record for ln in result.lines] == [RECORDS[0], None, RECORDS[2]]
    problem = result.problems[0].problem
    assert {"value": "checksum mismatch", "latin-1": "not UTF-8 (byte 0xf6",
            "no-digest": "no 'record_sha256'"}[damage] in problem


@pytest.mark.parametrize("change", ["remove-first", "remove-middle", "repeat", "swap"])
def test_a_removed_repeated_or_moved_line_is_named_at_the_line_after_it_whose_record_is_intact(change: str) -> None:
    a, b, c = text().decode().splitlines(keepends=True)
    lines, where, record = {"remove-first": ([b, c], 1, RECORDS[1]), "remove-middle": ([a, c], 2, RECORDS[2]),
                            "repeat": ([a, b, b, c], 3, RECORDS[1]), "swap": ([a, c, b], 2, RECORDS[2])}[change]
    result = scan("".join(lines).encode())
    first = result.problems[0]
    assert first.number == where and "out of place" in first.problem and first.record == record


def test_a_file_from_before_checksums_reads_unverified_and_a_torn_last_line_is_told_apart() -> None:
    legacy = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()
    raw = scan(legacy)  # the current format alone: no line is verified
    assert not raw.checked and [ln.problem for ln in raw.problems] == [recordlines.NO_DIGEST] * 3
    result = records_v0(raw)  # format 0: the records, unverified
    assert not result.checked and result.problems == [] and [ln.record for ln in result.lines] == RECORDS
    assert result.last_digest == ""
    unfinished = records_v0(scan(legacy[:-1]))  # format 0 too: a last line complete but for its newline
    assert unfinished.torn is None and [ln.record for ln in unfinished.lines] == RECORDS
    mixed = scan(text() + legacy)  # in a checksummed file a line without its digest is damaged, not read
    assert records_v0(mixed) == mixed and [ln.number for ln in mixed.problems] == [4, 5, 6]
    assert all(ln.record is None for ln in mixed.problems)
    full = text()
    cut = scan(full[:-30])  # a kill in the middle of the last append
    assert cut.problems == [] and cut.torn is not None and cut.torn.number == 3
    assert [ln.record for ln in cut.lines] == RECORDS[:2]
    whole = scan(full[:-1])  # everything written but the newline: the record is complete
    assert whole.torn is None and [ln.record for ln in whole.lines] == RECORDS


def test_encode_continues_a_chain_and_refuses_an_empty_record() -> None:
    _, last = encode_all(RECORDS[:2])
    line, _ = encode(RECORDS[2], last)
    assert scan(encode_all(RECORDS[:2])[0].encode() + line.encode() + b"\n").problems == []
    with pytest.raises(ValueError):
        encode({})
    assert recordlines.RESERVED == ("record_sha256", "previous_sha256")
