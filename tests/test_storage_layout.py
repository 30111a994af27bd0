"""Key rules, layout helpers, grant normalisation, sync filters and the S3 policy document."""
from __future__ import annotations

import pytest

from hiclaw.errors import InvalidInputError
from hiclaw.storage import grants, layout
from hiclaw.storage.sync import PathFilter


def test_layout_helpers_build_the_documented_keys():
    assert layout.agent_home("alice") == "agents/alice/"
    assert layout.agent_file("alice", "memory/2024-06-01.md") == "agents/alice/memory/2024-06-01.md"
    assert layout.agent_memory("alice") == "agents/alice/MEMORY.md"
    assert layout.agent_skill("alice", "pdf-tools") == "agents/alice/skills/pdf-tools/SKILL.md"
    assert layout.task_spec("task-001") == "shared/tasks/task-001/spec.md"
    assert layout.task_result("task-001") == "shared/tasks/task-001/result.md"
    assert layout.task_progress_dir("task-001") == "shared/tasks/task-001/progress/"
    assert layout.task_workspace("task-001") == "shared/tasks/task-001/workspace/"
    assert layout.project_plan("p1") == "shared/projects/p1/plan.md"
    assert layout.project_meta("p1") == "shared/projects/p1/meta.json"
    assert layout.owner_of("agents/bob/x/y.md") == ("agent", "bob")
    assert layout.owner_of("shared/tasks/t9/spec.md") == ("task", "t9")
    assert layout.owner_of("README.md") is None


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("../etc/passwd", "'..' segment"),
        ("agents/alice/../bob/x", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("agents//x", "empty folder name"),
        ("agents/./x", "'.' segment"),
        ("agents/a\nb", "control character"),
        ("agents/a\x00b", "control character"),
        ("agents/a\x7fb", "control character"),
        ("agents\\alice", "backslash"),
        ("agents/alice/", "names a folder"),
        ("", "is empty"),
        ("x" * 1100, "longer than 1024 bytes"),
        ("agents/.hiclaw-tmp-abc", "reserved name prefix"),
    ],
)
def test_bad_keys_are_refused_with_a_clear_one_line_error(key, problem):
    with pytest.raises(InvalidInputError) as info:
        layout.validate_key(key)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert " — " in message  # names the fix


def test_unicode_and_ordinary_punctuation_are_fine():
    assert layout.validate_key("shared/tasks/t1/résumé (v2).md")
    assert layout.validate_prefix("agents/al") == "agents/al"
    assert layout.validate_folder("shared/tasks/t1") == "shared/tasks/t1/"


@pytest.mark.parametrize("name", ["Alice", "1abc", "a" * 32, "al ice", "../x", ""])
def test_bad_agent_names_are_refused(name):
    with pytest.raises(InvalidInputError, match="invalid agent name"):
        layout.agent_home(name)


@pytest.mark.parametrize("task_id", ["..", "a/b", "", ".hidden", "t" * 65])
def test_bad_task_ids_are_refused(task_id):
    with pytest.raises(InvalidInputError, match="invalid task id"):
        layout.task_dir(task_id)


def test_grant_always_includes_the_home_and_carves_read_only_out_of_read_write():
    grant = grants.normalize_grant("alice", rw=["shared/tasks/t1/"], ro=["shared/tasks/t1/spec.md"])
    assert grant.read_write == ("agents/alice/", "shared/tasks/t1/")
    assert grant.read_only == ("agents/alice/skills/", "shared/tasks/t1/spec.md")
    rw, ro = grant.read_write, grant.read_only
    assert grants.may_write("agents/alice/MEMORY.md", rw, ro)
    assert not grants.may_write("agents/alice/skills/evil/SKILL.md", rw, ro)  # the control plane installs skills
    assert grants.may_read("agents/alice/skills/pdf/SKILL.md", rw, ro)
    assert grants.may_write("shared/tasks/t1/result.md", rw, ro)
    assert not grants.may_write("shared/tasks/t1/spec.md", rw, ro)
    assert grants.may_read("shared/tasks/t1/spec.md", rw, ro)
    assert not grants.may_read("agents/bob/MEMORY.md", rw, ro)
    assert not grants.may_read("shared/tasks/t10/spec.md", rw, ro)  # a folder entry is not a string prefix


@pytest.mark.parametrize(
    ("rw", "ro", "problem"),
    [
        (["agents/bob/"], [], "only folders and files under shared/"),
        ([""], [], "whole storage"),
        (["shared/tasks/*"], [], "wildcards"),
        (["shared/tasks/t1/workspace/"], ["shared/tasks/t1/"], "inside the read-only"),
        ("shared/tasks/t1/", [], "lists of paths"),
    ],
)
def test_unsafe_grants_are_refused(rw, ro, problem):
    with pytest.raises(InvalidInputError, match=problem):
        grants.normalize_grant("alice", rw=rw, ro=ro)


def test_path_filter_patterns():
    keep = PathFilter(include=(), exclude=("*.log", "node_modules/", "build/out/*"))
    assert keep("src/a.py")
    assert not keep("deep/x/app.log")
    assert not keep("web/node_modules/pkg/index.js")
    assert not keep("build/out/a/b.o")
    assert keep("build/other.o")
    only_md = PathFilter(include=("*.md",))
    assert only_md("notes/x.md") and not only_md("notes/x.txt")
    with pytest.raises(InvalidInputError):
        PathFilter(exclude=("/abs",))


def test_worker_policy_scopes_objects_listing_and_denies_writes_to_read_only_keys():
    from hiclaw.plugins.storage.minio.policy import worker_policy

    grant = grants.normalize_grant("alice", rw=["shared/tasks/t1/"], ro=["shared/tasks/t1/spec.md", "shared/projects/p1/"])
    doc = worker_policy("team", grant)
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ReadWrite"]["Resource"] == ["arn:aws:s3:::team/agents/alice/*", "arn:aws:s3:::team/shared/tasks/t1/*"]
    assert by_sid["ReadOnly"]["Action"] == ["s3:GetObject"]
    assert by_sid["ReadOnlyInsideReadWrite"]["Effect"] == "Deny"
    assert by_sid["ReadOnlyInsideReadWrite"]["Resource"] == ["arn:aws:s3:::team/agents/alice/skills/*",
                                                             "arn:aws:s3:::team/shared/tasks/t1/spec.md"]
    assert by_sid["ListGranted"]["Condition"]["StringLike"]["s3:prefix"] == [
        "agents/alice/*", "shared/tasks/t1/*", "agents/alice/skills/*", "shared/tasks/t1/spec.md", "shared/projects/p1/*"]
