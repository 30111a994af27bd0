"""The control plane's SkillService (workers' skill tools), its policy, and the bundled skills."""
from __future__ import annotations

import json

import pytest

from hiclaw.config import SkillsConfig
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError
from hiclaw.host import ComponentContext
from hiclaw.registry.client import RegistryClient
from hiclaw.registry.errors import SkillNotFoundError, SkillPolicyError, UnsafeSkillError
from hiclaw.registry.frontmatter import parse_skill_md
from hiclaw.registry.installer import check
from hiclaw.registry.scopes import dir_scope
from hiclaw.registry.service import SkillService, render_catalog
from hiclaw.registry.tools import skill_tool_specs
from hiclaw.skills import SKILLS_ROOT, bundled_skill, bundled_skills

CONTRACT_TOOLS = {  # agent tools of docs: contracts — bundled skills may only name these
    "list_files", "read_file", "write_file", "run_command", "skills_find", "skills_add", "skills_read", "progress_note",
    "report_result", "memory_append", "create_worker", "list_workers", "remove_worker", "set_worker_model",
    "create_project", "propose_plan", "confirm_plan", "assign_task", "read_result", "accept_task", "request_revision",
    "block_task", "cancel_task", "send_message", "schedule_add", "schedule_list", "schedule_remove", "usage_report",
    "memory_read", "remind_admin", "schedule_report", "revise_plan", "pause_project", "resume_project", "cancel_project",
    "complete_project",
}


@pytest.fixture
def registry(skills_registry):
    skills_registry.publish("acme", "tools", "pdf-tools", description="Extract tables from PDF files.",
                            files={"scripts/extract.py": "print(1)\n"})
    skills_registry.publish("acme", "tools", "pdf-forms", description="Fill PDF forms.")
    skills_registry.publish("evil", "kit", "pdf-pwn", description="Totally safe PDF helper.")
    return skills_registry


def service(url: str, **policy: object) -> SkillService:
    return SkillService(SkillsConfig(api_url=url, **policy))


async def test_find_add_read_catalog(registry, tmp_path):
    svc = service(registry.url)
    target = tmp_path / "agents" / "alice" / "skills"
    hits = await svc.find("alice", "pdf tables")
    assert hits[0] == {"source": "acme/tools@pdf-tools", "name": "pdf-tools", "description": "Extract tables from PDF files.",
                       "installs": 0}
    added = await svc.add("alice", hits[0]["source"], None, target)
    assert added["name"] == "pdf-tools" and added["files"] == 2
    assert svc.catalog(target) == [{"name": "pdf-tools", "description": "Extract tables from PDF files."}]
    read = svc.read(target, "pdf-tools")
    assert read["body"] == "# pdf-tools" and read["files"] == ["scripts/extract.py"]
    assert [r.status for r in check(dir_scope(target))] == ["ok"]
    assert "- pdf-tools: Extract tables" in render_catalog(svc.catalog(target))
    with pytest.raises(SkillNotFoundError):
        svc.read(target, "pdf-forms")
    with pytest.raises(InvalidInputError):
        svc.read(target, "../../etc")
    await svc.aclose()


async def test_policy_allowed_sources_filters_find_and_refuses_add(registry, tmp_path):
    svc = service(registry.url, allowed_sources=["acme/*"])
    assert {h["source"] for h in await svc.find("alice", "pdf")} == {"acme/tools@pdf-tools", "acme/tools@pdf-forms"}
    with pytest.raises(SkillPolicyError, match="'evil/kit' is not allowed by \\[skills\\] allowed_sources"):
        await svc.add("alice", "evil/kit@pdf-pwn", None, tmp_path / "s")
    with pytest.raises(SkillPolicyError, match="not allowed"):
        await svc.add("alice", registry.url, "pdf-pwn", tmp_path / "s")  # a URL is matched as URL and host
    url_policy = service(registry.url, allowed_sources=[f"{registry.url}*"])
    assert (await url_policy.add("alice", registry.url, "pdf-forms", tmp_path / "s"))["name"] == "pdf-forms"
    assert not (tmp_path / "s" / "pdf-pwn").exists()


@pytest.mark.parametrize("source", ["./skills", "/etc", "~/secrets", "file:///srv/repo.git", "git@github.com:a/b.git",
                                    "ssh://host/repo.git"])
async def test_workers_may_not_use_local_or_credentialed_sources(tmp_path, source):
    with pytest.raises(SkillPolicyError):
        await service("http://127.0.0.1:9").add("alice", source, None, tmp_path)


async def test_limits_and_ambiguous_sources(registry, tmp_path):
    registry.publish("acme", "big", "huge", description="Large.", files={"blob.txt": "x" * 4000})
    svc = service(registry.url, max_bytes=2048)
    with pytest.raises(UnsafeSkillError, match="limit 2048"):
        await svc.add("alice", "acme/big@huge", None, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(InvalidInputError, match="has 2 skills"):
        await service(registry.url).add("alice", "acme/tools", None, tmp_path / "s")
    with pytest.raises(InvalidInputError, match="invalid worker name"):
        await svc.find("Bad Name", "pdf")


async def test_tools_call_the_backend_and_return_errors_as_data(registry, tmp_path):
    svc = service(registry.url, allowed_sources=["acme/*"])
    tools = {t.name: t for t in skill_tool_specs(svc.for_worker("alice", tmp_path))}
    assert set(tools) == {"skills_find", "skills_add", "skills_read"}
    assert tools["skills_add"].openai_schema()["function"]["parameters"]["required"] == ["source"]
    found = await tools["skills_find"].handler({"query": "pdf forms"})
    assert found["results"][0]["source"] == "acme/tools@pdf-forms"
    assert (await tools["skills_add"].handler({"source": "acme/tools@pdf-forms"}))["installed"]["name"] == "pdf-forms"
    assert (await tools["skills_read"].handler({"name": "pdf-forms"}))["name"] == "pdf-forms"
    refused = await tools["skills_add"].handler({"source": "evil/kit@pdf-pwn"})
    assert "not allowed" in refused["error"]


async def test_service_uses_a_worker_folder_resolver(registry, tmp_path):
    svc = SkillService(SkillsConfig(api_url=registry.url), worker_skills_dir=lambda name: tmp_path / name / "skills")
    await svc.add("bob", "acme/tools@pdf-forms")
    assert (tmp_path / "bob" / "skills" / "pdf-forms" / "SKILL.md").is_file()
    assert await svc.seed("bob", ["task-reporting"]) == ["task-reporting"]
    assert [s["name"] for s in svc.catalog(tmp_path / "bob" / "skills")] == ["pdf-forms", "task-reporting"]


def test_registry_plugin_creates_the_client_from_config(plugin_host, tmp_path):
    from hiclaw.registry import plugin

    host = plugin_host(("skills-sh", plugin))
    config = SkillsConfig(api_url="http://127.0.0.1:1", max_files=7)
    made = host.create("skill_registry", "skills-sh", config.model_dump(), ComponentContext(home=tmp_path), section="skills")
    assert isinstance(made, RegistryClient) and made.api_url == "http://127.0.0.1:1" and made.limits.max_files == 7


# ---------------------------------------------------------------------- bundled skills


def test_bundled_skills_pass_our_validator_and_name_contract_tools_only():
    skills = bundled_skills()
    assert {s.name for s in skills} == {"find-skills", "task-reporting", "project-work", "team-management", "project-management"}
    assert [s.name for s in bundled_skills("worker")] == ["find-skills", "project-work", "task-reporting"]
    assert [s.name for s in bundled_skills("manager")] == ["project-management", "team-management"]
    for skill in skills:
        meta = parse_skill_md(skill.skill_md.read_bytes(), folder=skill.path.name)
        called = set(__import__("re").findall(r"`([a-z_]+)\(", meta.body))
        assert called and called <= CONTRACT_TOOLS, f"{skill.name} names unknown tools: {called - CONTRACT_TOOLS}"
    assert sorted(p.name for p in SKILLS_ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")) == sorted(s.name for s in skills)
    with pytest.raises(NotFoundError, match="available: find-skills"):
        bundled_skill("nope")


async def test_install_bundled_is_idempotent(tmp_path):
    svc = SkillService()
    names = [s.name for s in bundled_skills("worker")]
    assert await svc.install_bundled(tmp_path, names) == names
    lock_before = (tmp_path / "skills-lock.json").read_text()
    await svc.install_bundled(tmp_path, names)
    assert (tmp_path / "skills-lock.json").read_text() == lock_before  # nothing rewritten
    assert all(r.status == "ok" for r in check(dir_scope(tmp_path)))
    assert json.loads(lock_before)["skills"]["find-skills"]["sourceType"] == "local"


async def test_internal_addresses_need_an_explicit_pattern(registry, tmp_path):
    svc = service("https://skills.example", allowed_sources=["*"])
    for url in (registry.url, "http://localhost:8080", "http://169.254.169.254/latest", "http://10.0.0.5", "http://[::1]:9"):
        with pytest.raises(HiclawError, match="not reachable from the team"):  # more: tests/test_hostile_skills_fetch.py
            await svc.add("alice", url, "pdf-forms", tmp_path / "s")
    # the configured registry itself is fine, by URL or by owner/repo
    own = service(registry.url)
    assert (await own.add("alice", registry.url, "pdf-forms", tmp_path / "s"))["name"] == "pdf-forms"
