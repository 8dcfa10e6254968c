"""The key table (kvfs/meta/keys.py) against its documentation and against itself.

* Every key kind's encoding is pinned with literal bytes: existing volumes hold these keys,
  so a change here is a format change, never a refactoring.
* ``keys.KEY_KINDS`` and the table in docs/keys.md list the same layouts, and each kind's
  layout, read mechanically, encodes exactly what its builder in keys.py builds.
* No two kinds' keys can be confused: no prefix is a prefix of another, except the ``A``
  family, whose kinds share ``A`` and differ by their type letter at byte 9.
* The parsers invert the builders, and refuse keys of other kinds.
* Outside the key table, modules above the engines neither slice key bytes nor read
  integers out of keys: they call keys.py.
"""

from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

import pytest

from kvfs.meta import keys
from kvfs.objstore.kvblob import KVBlobStore

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "keys.md"

# -- today's encodings, byte for byte --------------------------------------------------

PINNED: list[tuple[bytes, bytes]] = [
    (keys.SETTING, b"setting"),
    (keys.NEXT_INODE, b"Cnextinode"),
    (keys.NEXT_SLICE, b"Cnextslice"),
    (keys.NEXT_SESSION, b"Cnextsession"),
    (keys.USED_SPACE, b"Cusedspace"),
    (keys.USED_INODES, b"Cusedinodes"),
    (keys.COMPACTOR, b"Ccompactor"),
    (keys.TRASH_PURGER, b"Ctrashpurger"),
    (keys.inode_all(0x0102), b"A\0\0\0\0\0\0\x01\x02"),
    (keys.attr(7), b"A\0\0\0\0\0\0\0\x07I"),
    (keys.dentry(1, b"etc"), b"A\0\0\0\0\0\0\0\x01Detc"),
    (keys.dentry_prefix(1), b"A\0\0\0\0\0\0\0\x01D"),
    (keys.chunk(7, 0x0a0b), b"A\0\0\0\0\0\0\0\x07C\0\0\x0a\x0b"),
    (keys.chunk_prefix(7), b"A\0\0\0\0\0\0\0\x07C"),
    (keys.symlink(9), b"A\0\0\0\0\0\0\0\x09S"),
    (keys.xattr(9, b"user.a"), b"A\0\0\0\0\0\0\0\x09Xuser.a"),
    (keys.xattr_prefix(9), b"A\0\0\0\0\0\0\0\x09X"),
    (keys.link_parent(9, 2), b"A\0\0\0\0\0\0\0\x09P\0\0\0\0\0\0\0\x02"),
    (keys.link_parent_prefix(9), b"A\0\0\0\0\0\0\0\x09P"),
    (keys.delfile(0x1234), b"D\0\0\0\0\0\0\x12\x34"),
    (keys.slice_gc(5), b"G\0\0\0\0\0\0\0\x05"),
    (keys.retained(0x61000000, 5), b"R\0\0\0\0\x61\0\0\0\0\0\0\0\0\0\0\x05"),
    (keys.history(b"/etc/x", 0x0100, 2),
     b"H/etc/x\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\x02"),
    (keys.history_versions(b"/etc/x"), b"H/etc/x\0"),
    (keys.history_tree(b"/etc/"), b"H/etc/"),
    (keys.history_tree(b"/"), b"H/"),
    (keys.session(3), b"SE\0\0\0\0\0\0\0\x03"),
    (keys.sustained(3, 9), b"SS\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\0\x09"),
    (keys.block("chunks/0/0/5_0_4096"), b"Bchunks/0/0/5_0_4096"),
    (keys.block("chunks/0/0/5_0_4096", b"vol2/B"), b"vol2/Bchunks/0/0/5_0_4096"),
    (keys.watcher("h1", "/etc/nginx"), b"Wh1\0/etc/nginx"),
    (keys.u64(1), b"\0\0\0\0\0\0\0\x01"),
]


@pytest.mark.parametrize("built,expected", PINNED, ids=[repr(e) for _, e in PINNED])
def test_encoding_is_pinned(built: bytes, expected: bytes) -> None:
    assert built == expected


# -- the parsers -----------------------------------------------------------------------


def test_parsers_invert_the_builders() -> None:
    assert keys.parse_inode_key(keys.attr(7)) == (7, keys.ATTR_TAG, b"")
    assert keys.parse_inode_key(keys.dentry(2, b"a\xffb")) == (2, keys.DENTRY_TAG, b"a\xffb")
    assert keys.parse_inode_key(keys.chunk(7, 3))[:2] == (7, keys.CHUNK_TAG)
    assert keys.key_ino(keys.chunk(2**64 - 1, 0)) == 2**64 - 1
    assert keys.key_ino(keys.delfile(12)) == 12
    assert keys.chunk_index(keys.chunk(7, 2**32 - 1)) == 2**32 - 1
    assert keys.dentry_name(keys.dentry(2, b"name")) == b"name"
    assert keys.xattr_name(keys.xattr(2, b"user.x")) == b"user.x"
    assert keys.link_parent_of(keys.link_parent(9, 44)) == 44
    assert keys.session_id(keys.session(2**40)) == 2**40
    assert keys.sustained_parts(keys.sustained(3, 2**63)) == (3, 2**63)
    assert keys.retained_freed(keys.retained(1_700_000_000, 5)) == 1_700_000_000
    assert keys.parse_history(keys.history(b"/a/b", 5, 6)) == (b"/a/b", 5, 6)
    assert keys.parse_watcher(keys.watcher("host", "/p\0q")) == ("host", "/p\0q")
    assert keys.block_name(keys.block("chunks/1/2/3_0_9")) == "chunks/1/2/3_0_9"
    assert keys.block_name(keys.block("x", b"blk:"), b"blk:") == "x"


def test_listing_groups() -> None:
    assert keys.listing_group(keys.dentry(5, b"n")) == keys.dentry_prefix(5)
    assert keys.listing_group(keys.dentry_prefix(5)) == keys.dentry_prefix(5)
    assert keys.listing_group(keys.xattr(5, b"user.a")) == keys.xattr_prefix(5)
    for other in (keys.attr(5), keys.chunk(5, 0), keys.symlink(5), keys.inode_all(5),
                  keys.delfile(5), keys.link_parent(5, 1)):
        assert keys.listing_group(other) is None


@pytest.mark.parametrize("bad", [
    lambda: keys.parse_inode_key(keys.delfile(1)),
    lambda: keys.parse_inode_key(keys.inode_all(1)),  # no type letter
    lambda: keys.dentry_name(keys.xattr(1, b"n")),
    lambda: keys.xattr_name(keys.dentry(1, b"n")),
    lambda: keys.link_parent_of(keys.attr(1)),
    lambda: keys.block_name(b"Xchunks/1", keys.BLOCK_PREFIX),
    lambda: keys.parse_history(keys.watcher("h", "/p")),
    lambda: keys.parse_watcher(keys.history(b"/p", 1, 1)),
], ids=["delfile-as-inode", "inode-prefix", "xattr-as-dentry", "dentry-as-xattr",
        "attr-as-link", "foreign-block", "watch-as-history", "history-as-watch"])
def test_parsers_refuse_other_kinds(bad: object) -> None:
    assert callable(bad)
    with pytest.raises(ValueError):
        bad()


async def test_block_store_keys_follow_the_table() -> None:
    """KVBlobStore writes, lists and deletes blocks at keys.block's keys, under any prefix."""
    from kvfs.kv.local import MemoryEngine

    engine = MemoryEngine()
    for prefix in (keys.BLOCK_PREFIX, b"other/B"):
        store = KVBlobStore(engine, prefix)
        await store.put("chunks/0/0/5_0_3", b"abc")
        got = await engine.get(keys.block("chunks/0/0/5_0_3", prefix))
        assert got is not None and got.value == b"abc"
        assert [n async for n in store.list("chunks/0/")] == ["chunks/0/0/5_0_3"]
        await store.delete("chunks/0/0/5_0_3")
        assert await engine.get(keys.block("chunks/0/0/5_0_3", prefix)) is None


# -- KEY_KINDS against docs/keys.md ----------------------------------------------------


def doc_layouts() -> list[str]:
    """First column of every row of the table under ``## Keys`` in docs/keys.md."""
    text = DOC.read_text()
    section = text.split("\n## Keys\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(rows) > 2, "docs/keys.md has no key table"
    return [row.split("|")[1].strip() for row in rows[1:]]  # rows[0] is the header


def test_doc_table_and_key_kinds_list_the_same_layouts() -> None:
    documented = doc_layouts()
    listed = [k.layout for k in keys.KEY_KINDS]
    assert len(set(documented)) == len(documented), "a layout is documented twice"
    assert len(set(listed)) == len(listed), "a layout is listed twice in KEY_KINDS"
    missing = [lay for lay in listed if lay not in documented]
    unknown = [lay for lay in documented if lay not in listed]
    assert not missing, f"in keys.KEY_KINDS but not in docs/keys.md: {missing}"
    assert not unknown, f"in docs/keys.md but not in keys.KEY_KINDS: {unknown}"


_PART = re.compile(r"`([^`]*)`|u64 (\w+)|u32 (\w+)|NUL|([\w ]+?)(?: \(UTF-8\))?$")


def encode_layout(layout: str, values: dict[str, int | bytes | str]) -> bytes:
    """A key built by reading ``layout`` as docs/keys.md writes it: backquoted literals,
    ``u64 x``/``u32 x`` big-endian integers, ``NUL``, and variable parts named by a word
    (``(UTF-8)``: a string, encoded)."""
    out = b""
    for part in layout.split(" ‖ "):
        m = _PART.fullmatch(part)
        assert m is not None, f"cannot read layout part {part!r} of {layout!r}"
        literal, u64_name, u32_name, var = m.groups()
        if literal is not None:
            out += literal.encode()
        elif u64_name:
            out += struct.pack(">Q", values[u64_name])
        elif u32_name:
            out += struct.pack(">I", values[u32_name])
        elif part == "NUL":
            out += b"\0"
        else:
            v = values[var]
            assert isinstance(v, str | bytes), f"{var} of {layout!r} is a string or bytes"
            out += v.encode() if isinstance(v, str) else v
    return out


def leading_literal(layout: str) -> bytes:
    """The constant bytes a layout starts with: its leading backquoted parts."""
    out = b""
    for part in layout.split(" ‖ "):
        if not (part.startswith("`") and part.endswith("`")):
            break
        out += part[1:-1].encode()
    return out


# A key built by each kind's builder, with the values its layout names.
BUILT: dict[str, tuple[bytes, dict[str, int | bytes | str]]] = {
    "setting": (keys.SETTING, {}),
    "next inode": (keys.NEXT_INODE, {}),
    "next slice": (keys.NEXT_SLICE, {}),
    "next session": (keys.NEXT_SESSION, {}),
    "used space": (keys.USED_SPACE, {}),
    "used inodes": (keys.USED_INODES, {}),
    "compactor": (keys.COMPACTOR, {}),
    "trash purger": (keys.TRASH_PURGER, {}),
    "attr": (keys.attr(0x1122), {"ino": 0x1122}),
    "dentry": (keys.dentry(3, b"f\xe9"), {"dir": 3, "name": b"f\xe9"}),
    "chunk": (keys.chunk(4, 70000), {"ino": 4, "index": 70000}),
    "symlink": (keys.symlink(5), {"ino": 5}),
    "xattr": (keys.xattr(6, b"user.k"), {"ino": 6, "name": b"user.k"}),
    "link parent": (keys.link_parent(7, 8), {"ino": 7, "parent": 8}),
    "delfile": (keys.delfile(9), {"ino": 9}),
    "slice gc": (keys.slice_gc(10), {"id": 10}),
    "retained": (keys.retained(11, 12), {"freed": 11, "id": 12}),
    "history": (keys.history(b"/a b", 13, 14), {"path": b"/a b", "time": 13, "seq": 14}),
    "session": (keys.session(15), {"sid": 15}),
    "sustained": (keys.sustained(16, 17), {"sid": 16, "ino": 17}),
    "block": (keys.block("chunks/0/0/18_0_4"), {"block name": "chunks/0/0/18_0_4"}),
    "watcher": (keys.watcher("hé", "/é"), {"host": "hé", "path": "/é"}),
}


def test_every_kind_has_a_builder_sample() -> None:
    assert sorted(BUILT) == sorted(k.name for k in keys.KEY_KINDS)


@pytest.mark.parametrize("kind", keys.KEY_KINDS, ids=lambda k: k.name)
def test_layout_encodes_what_the_builder_builds(kind: keys.KeyKind) -> None:
    built, values = BUILT[kind.name]
    assert encode_layout(kind.layout, values) == built
    assert built.startswith(kind.prefix)
    assert kind.prefix == leading_literal(kind.layout)
    if kind.tag:
        assert built[9:10] == kind.tag  # the A family's type letter sits at byte 9
        assert keys.parse_inode_key(built)[1] == kind.tag


def test_no_prefix_is_a_prefix_of_another() -> None:
    """Distinct prefixes never nest, so a range scan of one kind meets no other; kinds that
    share a prefix are exactly the ``A`` family, told apart by distinct type letters."""
    by_prefix: dict[bytes, list[keys.KeyKind]] = {}
    for k in keys.KEY_KINDS:
        by_prefix.setdefault(k.prefix, []).append(k)
    for p in by_prefix:
        for q in by_prefix:
            assert p == q or not q.startswith(p), f"prefix {p!r} is a prefix of {q!r}"
    for p, kinds in by_prefix.items():
        if len(kinds) > 1 or p == keys.INODE_PREFIX:
            assert p == keys.INODE_PREFIX, f"{[k.name for k in kinds]} share prefix {p!r}"
            tags = [k.tag for k in kinds]
            assert all(len(t) == 1 for t in tags) and len(set(tags)) == len(tags), tags
        else:
            assert not kinds[0].tag


# -- no key handling outside keys.py ---------------------------------------------------

# Packages above the engines: their keys are the table's.  The engines (kvfs/kv,
# kvfs/raftkv) strip their own per-volume prefixes below the table, and the pure packages
# have keys of their own.
KEY_USERS = ["meta", "chunk", "vfs", "fuse", "history", "watch", "cli", "objstore",
             "deploy.py", "volume.py"]


def _is_key(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name == "key" or name.endswith("_key")


def key_handling(tree: ast.AST) -> list[int]:
    """Lines that index or slice a key, or read an integer out of one."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_key(node.value):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("read_u64", "unpack_from") and any(_is_key(a) for a in node.args):
                lines.append(node.lineno)
    return lines


def test_the_checker_finds_key_slicing() -> None:
    src = "a = kv.key[9:10]\nb = key[10:]\nc = keys.read_u64(item.key, 10)\nd = kv.value[3:]\n"
    assert key_handling(ast.parse(src)) == [1, 2, 3]


def test_only_the_key_table_takes_keys_apart() -> None:
    problems = []
    for entry in KEY_USERS:
        path = ROOT / "kvfs" / entry
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for f in files:
            if f == ROOT / "kvfs" / "meta" / "keys.py":
                continue
            for line in key_handling(ast.parse(f.read_text(), filename=str(f))):
                problems.append(f"{f.relative_to(ROOT)}:{line}")
    assert not problems, "key bytes handled outside kvfs/meta/keys.py:\n" + "\n".join(problems)
