"""The installer: atomic installs, refusals that write nothing, lock files, check, remove."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hiclaw.registry.errors import SkillNotFoundError, UnsafeSkillError
from hiclaw.registry.hashing import files_hash, folder_hash
from hiclaw.registry.installer import check, install, installed, remove
from hiclaw.registry.models import FetchedSkill, Limits, Provenance
from hiclaw.registry.scopes import dir_scope, global_scope, project_scope, resolve_scope
from hiclaw.testing.registry import skill_md


def fetched(name: str = "pdf-tools", extra: dict[str, bytes] | None = None, **provenance: object) -> FetchedSkill:
    files = {"SKILL.md": skill_md(name, f"The {name} skill.").encode(), **(extra or {})}
    prov = Provenance(**{"source": "acme/tools", "source_type": "registry",
                         "source_url": f"http://127.0.0.1:1/api/download/acme/tools/{name}", **provenance})
    return FetchedSkill(name=name, description=f"The {name} skill.", files=files, provenance=prov)


def tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


def test_install_writes_the_folder_and_a_v1_lock_entry(tmp_path):
    scope = dir_scope(tmp_path / "skills")
    skill = fetched(extra={"scripts/run.py": b"print(1)\n", "references/api.md": b"# api\n"})
    result = install(skill, scope)
    folder = tmp_path / "skills" / "pdf-tools"
    assert result.path == str(folder) and result.files == 3
    assert tree(folder) == ["SKILL.md", "references", "references/api.md", "scripts", "scripts/run.py"]
    lock_text = (tmp_path / "skills" / "skills-lock.json").read_text()
    assert lock_text.endswith("}\n")
    lock = json.loads(lock_text)
    assert lock["version"] == 1
    entry = lock["skills"]["pdf-tools"]
    assert entry["source"] == "acme/tools" and entry["sourceType"] == "registry"
    assert entry["computedHash"] == folder_hash(folder) == files_hash(skill.files)
    assert set(entry["fileHashes"]) == {"SKILL.md", "scripts/run.py", "references/api.md"}
    assert [p.name for p in (tmp_path / "skills").iterdir() if p.name.startswith(".")] == []  # no staging left


def test_reinstall_replaces_atomically_and_keeps_other_entries(tmp_path):
    scope = dir_scope(tmp_path)
    install(fetched("a"), scope)
    install(fetched("b", extra={"old.txt": b"old"}), scope)
    install(fetched("b", extra={"new.txt": b"new"}), scope)
    assert tree(tmp_path / "b") == ["SKILL.md", "new.txt"]
    assert sorted(json.loads((tmp_path / "skills-lock.json").read_text())["skills"]) == ["a", "b"]


@pytest.mark.parametrize("bad, message", [
    ({"../escape": b"x"}, "leaves the skill folder"),
    ({"/abs": b"x"}, "absolute path"),
    ({"big": b"x" * 5000}, "limit 4096"),
])
def test_a_refused_install_writes_nothing(tmp_path, bad, message):
    target = tmp_path / "not-yet"
    with pytest.raises(UnsafeSkillError, match=message):
        install(fetched(extra=bad), dir_scope(target), limits=Limits(max_bytes=4096))
    assert not target.exists()


def test_invalid_skill_md_and_name_mismatch_are_refused(tmp_path):
    skill = fetched()
    skill.files["SKILL.md"] = b"---\nname: Bad Name\ndescription: x\n---\n"
    with pytest.raises(UnsafeSkillError, match="lower-case"):
        install(skill, dir_scope(tmp_path / "x"))
    other = fetched()
    other.name = "something-else"
    with pytest.raises(UnsafeSkillError, match="named 'pdf-tools'"):
        install(other, dir_scope(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_install_refuses_to_replace_a_symlink(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "skills").mkdir()
    (tmp_path / "skills" / "pdf-tools").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeSkillError, match="not a folder"):
        install(fetched(), dir_scope(tmp_path / "skills"))
    assert list((tmp_path / "outside").iterdir()) == []


def test_failed_lock_write_restores_the_previous_version(tmp_path, monkeypatch):
    scope = dir_scope(tmp_path)
    install(fetched(extra={"v1.txt": b"1"}), scope)
    from hiclaw.registry import lockfile

    def boom(self: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lockfile.LockFile, "save", boom)
    with pytest.raises(OSError):
        install(fetched(extra={"v2.txt": b"2"}), scope)
    assert tree(tmp_path / "pdf-tools") == ["SKILL.md", "v1.txt"]


def test_check_names_changed_added_and_missing_files(tmp_path):
    scope = dir_scope(tmp_path)
    install(fetched(extra={"scripts/run.py": b"1", "notes.md": b"n"}), scope)
    assert [(r.name, r.status) for r in check(scope)] == [("pdf-tools", "ok")]
    (tmp_path / "pdf-tools" / "scripts" / "run.py").write_text("rm -rf /")
    (tmp_path / "pdf-tools" / "notes.md").unlink()
    (tmp_path / "pdf-tools" / "extra.sh").write_text("curl evil")
    (result,) = check(scope)
    assert (result.status, result.changed, result.removed, result.added) == ("modified", ["scripts/run.py"], ["notes.md"], ["extra.sh"])
    assert result.failed


def test_check_uses_computed_hash_alone_for_entries_written_by_the_skills_cli(tmp_path):
    scope = dir_scope(tmp_path)
    install(fetched(), scope)
    lock = json.loads((tmp_path / "skills-lock.json").read_text())
    del lock["skills"]["pdf-tools"]["fileHashes"]
    (tmp_path / "skills-lock.json").write_text(json.dumps(lock))
    assert check(scope)[0].status == "ok"
    (tmp_path / "pdf-tools" / "SKILL.md").write_text(skill_md("pdf-tools", "changed"))
    result = check(scope)[0]
    assert result.status == "modified" and "locked hash" in result.detail


def test_check_reports_missing_and_untracked(tmp_path):
    scope = dir_scope(tmp_path)
    install(fetched("a"), scope)
    install(fetched("b"), scope)
    os.rename(tmp_path / "a", tmp_path / "c")
    statuses = {r.name: r.status for r in check(scope)}
    assert statuses == {"a": "missing", "b": "ok", "c": "untracked"}


def test_list_and_remove(tmp_path):
    scope = dir_scope(tmp_path)
    install(fetched("a"), scope)
    install(fetched("b"), scope)
    (tmp_path / "not-a-skill").mkdir()
    assert [s.name for s in installed(scope)] == ["a", "b"]
    remove(scope, "a")
    assert [s.name for s in installed(scope)] == ["b"]
    assert list(json.loads((tmp_path / "skills-lock.json").read_text())["skills"]) == ["b"]
    with pytest.raises(SkillNotFoundError, match="not installed"):
        remove(scope, "a")
    with pytest.raises(SkillNotFoundError, match="not a skill name"):
        remove(scope, "../etc")


def test_project_scope_matches_the_skills_cli_layout(tmp_path):
    scope = project_scope(tmp_path)
    install(fetched(), scope)
    assert (tmp_path / ".agents" / "skills" / "pdf-tools" / "SKILL.md").is_file()
    lock = json.loads((tmp_path / "skills-lock.json").read_text())
    assert lock["version"] == 1 and "pdf-tools" in lock["skills"]
    # The CLI links the skill into other agents' folders; remove cleans those links up.
    (tmp_path / ".claude" / "skills").mkdir(parents=True)
    (tmp_path / ".claude" / "skills" / "pdf-tools").symlink_to(tmp_path / ".agents" / "skills" / "pdf-tools")
    remove(scope, "pdf-tools")
    assert not (tmp_path / ".claude" / "skills" / "pdf-tools").is_symlink()


def test_global_scope_writes_a_v3_lock(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    scope = global_scope(tmp_path)
    install(fetched(well_known_digest="sha256:" + "0" * 64, source_type="well-known", base_url="http://h:1",
                    source="h"), scope)
    lock = json.loads((tmp_path / ".agents" / ".skill-lock.json").read_text())
    assert lock["version"] == 3 and lock["dismissed"] == {}
    entry = lock["skills"]["pdf-tools"]
    assert entry["sourceType"] == "well-known" and entry["sourceBaseUrl"] == "http://h:1"
    assert entry["skillFolderHash"] == "" and entry["installedAt"] == entry["updatedAt"]
    assert entry["computedHash"] == folder_hash(tmp_path / ".agents" / "skills" / "pdf-tools")
    first = entry["installedAt"]
    install(fetched(source_type="well-known", base_url="http://h:1", source="h"), scope)
    again = json.loads((tmp_path / ".agents" / ".skill-lock.json").read_text())["skills"]["pdf-tools"]
    assert again["installedAt"] == first
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert global_scope(tmp_path).lock_path == tmp_path / "state" / "skills" / ".skill-lock.json"


def test_lock_files_of_older_versions_or_garbage_are_handled(tmp_path):
    (tmp_path / "skills-lock.json").write_text(json.dumps({"version": 0, "skills": {"x": {}}}))
    assert dir_scope(tmp_path).lock().skills == {}
    (tmp_path / "skills-lock.json").write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON"):
        dir_scope(tmp_path).lock()


def test_scope_flags_are_exclusive(tmp_path):
    with pytest.raises(Exception, match="not both"):
        resolve_scope(global_=True, directory=tmp_path)
