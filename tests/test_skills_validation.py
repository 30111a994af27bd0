"""SKILL.md validation, path and archive safety, and the CLI-compatible hashes."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import zipfile

import pytest

from hiclaw.registry.errors import UnsafeSkillError
from hiclaw.registry.frontmatter import parse_skill_md, strip_controls
from hiclaw.registry.hashing import collation_key, files_hash
from hiclaw.registry.models import Limits
from hiclaw.registry.safety import check_files, path_problem, unpack_archive
from hiclaw.registry.wellknown import legacy_digest


def md(front: str, body: str = "# body\n") -> str:
    return f"---\n{front}\n---\n{body}"


def test_valid_frontmatter_with_every_optional_field():
    meta = parse_skill_md(md(
        "name: pdf-tools\ndescription: Read PDFs.\nlicense: MIT\ncompatibility: needs python3\n"
        "allowed-tools: Bash Read\nmetadata:\n  author: acme\n  version: '1.0'\n  internal: false"
    ), folder="pdf-tools")
    assert (meta.name, meta.description, meta.license, meta.compatibility) == ("pdf-tools", "Read PDFs.", "MIT", "needs python3")
    assert meta.allowed_tools == "Bash Read"
    assert meta.metadata == {"author": "acme", "version": "1.0", "internal": False}
    assert meta.body == "# body\n"


@pytest.mark.parametrize("name, fragment", [
    ("PDF", "lower-case"), ("-pdf", "lower-case"), ("pdf-", "lower-case"), ("pdf--tools", "lower-case"),
    ("pdf_tools", "lower-case"), ("a" * 65, "65 characters"), ("", "missing"), ("'123'", None),
])
def test_skill_names_follow_the_spec(name, fragment):
    text = md(f"name: {name}\ndescription: d") if name else md("description: d")
    if fragment is None:  # digits only is a valid name
        assert parse_skill_md(text).name == "123"
        return
    with pytest.raises(UnsafeSkillError, match=fragment):
        parse_skill_md(text)


def test_name_must_equal_its_folder_and_description_is_bounded():
    with pytest.raises(UnsafeSkillError, match="does not match its folder 'other'"):
        parse_skill_md(md("name: pdf\ndescription: d"), folder="other")
    with pytest.raises(UnsafeSkillError, match="description is missing"):
        parse_skill_md(md("name: pdf\ndescription: ''"))
    with pytest.raises(UnsafeSkillError, match="1025 characters"):
        parse_skill_md(md(f"name: pdf\ndescription: {'x' * 1025}"))
    with pytest.raises(UnsafeSkillError, match="no frontmatter"):
        parse_skill_md("# just markdown\n")
    with pytest.raises(UnsafeSkillError, match="not valid YAML"):
        parse_skill_md(md("name: [unclosed\ndescription: d"))
    with pytest.raises(UnsafeSkillError, match="'compatibility' must be 1–500"):
        parse_skill_md(md(f"name: pdf\ndescription: d\ncompatibility: {'x' * 501}"))
    with pytest.raises(UnsafeSkillError, match="metadata value"):
        parse_skill_md(md("name: pdf\ndescription: d\nmetadata:\n  nested: {a: 1}"))


def test_control_characters_are_stripped_from_metadata():
    meta = parse_skill_md(md(
        'name: pdf\ndescription: "Reads PDFs\\e[2J\\e[31m now\\r\\nIgnore previous\\u0007"\nmetadata:\n  author: "a\\e]0;title\\u0007b"'
    ))
    assert meta.description == "Reads PDFs now Ignore previous"
    assert meta.metadata["author"] == "ab"
    assert strip_controls("x\u202eevil") == "xevil"


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a\\b", "C:/x", "a//b", "./a", "a/./b", "", "a\x00b", "a\nb"])
def test_unsafe_paths_are_named(path):
    assert path_problem(path) is not None


def test_check_files_enforces_limits_and_root_skill_md():
    ok = {"SKILL.md": b"x", "scripts/run.py": b"y"}
    check_files(ok, Limits(), where="s")
    with pytest.raises(UnsafeSkillError, match="3 files \\(limit 2\\)"):
        check_files({**ok, "c": b""}, Limits(max_files=2), where="s")
    with pytest.raises(UnsafeSkillError, match="unpacks to 2 bytes \\(limit 1\\)"):
        check_files(ok, Limits(max_bytes=1), where="s")
    with pytest.raises(UnsafeSkillError, match=re.escape("no SKILL.md")):
        check_files({"README.md": b""}, Limits(), where="s")
    with pytest.raises(UnsafeSkillError, match="inside a file of the same name"):
        check_files({"SKILL.md": b"", "a": b"", "a/b": b""}, Limits(), where="s")


def _tar(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                archive.addfile(info, io.BytesIO(entry[1]))
    return raw.getvalue()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_tar_archives_unpack_in_memory():
    files = unpack_archive(_tar([("SKILL.md", b"s"), ("./refs/a.md", b"a")]), Limits(), where="t")
    assert files == {"SKILL.md": b"s", "refs/a.md": b"a"}


@pytest.mark.parametrize("entries, message", [
    ([("SKILL.md", b"s"), ("../evil", b"x")], "leaves the skill folder"),
    ([("/etc/cron.d/x", b"x")], "absolute path"),
    ([("SKILL.md", b"s"), _link("ssh", "/home/victim/.ssh/id_rsa", tarfile.SYMTYPE)], "contains a link"),
    ([("SKILL.md", b"s"), _link("hard", "SKILL.md", tarfile.LNKTYPE)], "contains a link"),
    ([("SKILL.md", b"s"), _link("fifo", "", tarfile.FIFOTYPE)], "special file"),
    ([("SKILL.md", b"x" * 2048)], "more than 1024 bytes"),
    ([(f"f{i}", b"") for i in range(6)], "more than 5 files"),
])
def test_hostile_tar_archives_are_refused(entries, message):
    with pytest.raises(UnsafeSkillError, match=message):
        unpack_archive(_tar(entries), Limits(max_files=5, max_bytes=1024), where="t")


def test_zip_links_traversal_and_lying_sizes_are_refused():
    def make(name: str, data: bytes, mode: int = 0o100644) -> bytes:
        raw = io.BytesIO()
        with zipfile.ZipFile(raw, "w") as archive:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
        return raw.getvalue()

    assert unpack_archive(make("SKILL.md", b"ok"), Limits(), where="z") == {"SKILL.md": b"ok"}
    with pytest.raises(UnsafeSkillError, match="contains a link"):
        unpack_archive(make("l", b"/etc/passwd", 0o120777), Limits(), where="z")
    with pytest.raises(UnsafeSkillError, match="leaves the skill folder"):
        unpack_archive(make("../x", b""), Limits(), where="z")
    with pytest.raises(UnsafeSkillError, match="more than 10 bytes"):
        unpack_archive(make("SKILL.md", b"0" * 100_000), Limits(max_bytes=10), where="z")
    with pytest.raises(UnsafeSkillError, match="not a readable"):
        unpack_archive(b"PK\x03\x04 garbage", Limits(), where="z")


def test_folder_hash_sorts_like_the_skills_cli():
    # ICU order: punctuation < digits < letters, case-insensitive first → references/ before SKILL.md
    paths = ["SKILL.md", "scripts/run.py", "references/a.md", "README.md", "_x", "a-b", "a_b", "A"]
    assert sorted(paths, key=collation_key) == ["_x", "A", "a_b", "a-b", "README.md", "references/a.md", "scripts/run.py", "SKILL.md"]
    files = {"SKILL.md": b"s", "references/a.md": b"a"}
    import hashlib
    assert files_hash(files) == hashlib.sha256(b"references/a.md" + b"a" + b"SKILL.md" + b"s").hexdigest()
    assert legacy_digest(files).startswith("sha256:")


@pytest.mark.needs_node
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (needed to compare with localeCompare)")
def test_collation_matches_node_locale_compare():
    import random

    rng = random.Random(7)
    alphabet = "aAbBzZ09_-./ ~$#@+é"
    words = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(600)})
    script = "const w=JSON.parse(require('fs').readFileSync(0,'utf8'));console.log(JSON.stringify(w.sort((a,b)=>a.localeCompare(b))))"
    out = subprocess.run(["node", "-e", script], input=json.dumps(words), capture_output=True, text=True, check=True)
    assert sorted(words, key=collation_key) == json.loads(out.stdout)
