"""An append-only journal of JSON records on a local disk or an object store (the delivery queue's files).

On a local disk an append adds lines to the last segment file and syncs them; an object store cannot
append, so there each append is a new segment object holding the new lines only. Either way nothing
written is written again, except by `replace`, the compaction its owner runs now and then.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Iterator

import pyarrow.fs

from trainable import storage

log = logging.getLogger(__name__)

READ_CHUNK = 2**20

Cursor = tuple[int, int]  # (segment number, byte offset): where reading goes on


class Journal:
    """JSON records in a folder of segments (000000.jsonl, 000001.jsonl, ...), read back in order.

    `replace` writes a new segment NNNNNN.base.jsonl and then deletes the older ones; the newest base
    segment starts the journal, so a crash between the two leaves it whole.
    appendable: whether appends go to the last segment (default: on a local disk).
    """

    def __init__(self, folder: storage.Folder, appendable: bool | None = None):
        self.folder = folder
        self.local = isinstance(folder.fs, pyarrow.fs.LocalFileSystem)
        self.appendable = self.local if appendable is None else appendable
        names = sorted((int(n.split(".")[0]), n) for n in folder.names()
                       if n.endswith(".jsonl") and n.split(".")[0].isdigit())
        bases = [i for i, (_, n) in enumerate(names) if n.endswith(".base.jsonl")]
        self._segments = names[bases[-1]:] if bases else names  # (number, name), oldest first

    def exists(self) -> bool:
        return bool(self._segments)

    def start(self) -> Cursor:
        return (self._segments[0][0], 0) if self._segments else (0, 0)

    def append(self, lines: list[str]) -> Cursor:
        """Lines (JSON records) added at the end, durably; returns where they begin."""
        data = "".join(line + "\n" for line in lines).encode()
        if self.appendable and self._segments:
            number, name = self._segments[-1]
            with open(self.folder.path(name), "ab") as f:
                start = f.tell()
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return number, start
        number = self._segments[-1][0] + 1 if self._segments else 0
        self.folder.write_bytes(f"{number:06d}.jsonl", data)
        self._segments.append((number, f"{number:06d}.jsonl"))
        return number, 0

    def read(self, cursor: Cursor = (0, 0)) -> Iterator[tuple[dict, Cursor]]:
        """Each record from `cursor` on, with the cursor after it. A last line without its newline (a crash
        during an append) is not a record."""
        for number, name in self._segments:
            if number < cursor[0]:
                continue
            offset = cursor[1] if number == cursor[0] else 0
            with self.folder.fs.open_input_file(self.folder.path(name)) as f:
                f.seek(offset)
                rest = b""
                while chunk := f.read(READ_CHUNK):
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        offset += len(line) + 1
                        if record := _record(line, name):
                            yield record, (number, offset)

    def replace(self, lines: Iterable[str]) -> int:
        """Compaction: the journal becomes `lines` (read lazily, so they may come from this journal);
        returns how many. None: the journal is deleted."""
        old = list(self._segments)
        number = old[-1][0] + 1 if old else 0
        name = f"{number:06d}.base.jsonl"
        count = self._write(name, lines)
        for _, n in old:
            self.folder.delete(n)
        self._segments = [(number, name)]
        if not count:
            self.delete()
        return count

    def _write(self, name: str, lines: Iterable[str]) -> int:
        """A new segment, whole or not at all: locally to a temporary name, then renamed (an object store's
        upload appears whole when it ends)."""
        fs, path = self.folder.fs, self.folder.path(name)
        fs.create_dir(self.folder.root, recursive=True)
        count = 0
        with open(path + ".tmp", "wb") if self.local else fs.open_output_stream(path) as f:
            for line in lines:
                f.write((line + "\n").encode())
                count += 1
            if self.local:
                f.flush()
                os.fsync(f.fileno())
        if self.local:
            os.replace(path + ".tmp", path)
        return count

    def delete(self) -> None:
        try:
            self.folder.fs.delete_dir(self.folder.root)  # with its contents
        except FileNotFoundError:
            pass
        self._segments = []


def _record(line: bytes, segment: str) -> dict | None:
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # never written so by an append; a damaged file: what can be read goes on
        log.warning("skipped a damaged line in journal segment %s: %.80r", segment, line)
        return None
