"""Per-worker scoped S3 credentials against moto in enforced-auth mode (real IAM users, keys and
policies checked on every request): own home and granted task work, everything else is
AccessDenied, and revoked keys get nothing."""
from __future__ import annotations

import pytest

from hiclaw.errors import NotFoundError, PluginError
from hiclaw.storage import AccessDeniedError, layout


@pytest.fixture
async def team(s3_server_auth):
    """The control plane's storage with bob's home and two tasks already written."""
    control = s3_server_auth.make_storage(admin_api="iam")
    await control.put(layout.agent_file("bob", "MEMORY.md"), b"bob's memory")
    await control.put(layout.task_spec("t1"), b"# task one")
    await control.put(layout.task_spec("t2"), b"# task two (not alice's)")
    yield control
    await control.stop()


async def test_scoped_credentials_reach_only_what_was_granted(team, s3_server_auth):
    access = await team.grant("alice", rw=[layout.task_dir("t1")], ro=[layout.task_spec("t1")])
    settings = access.settings
    assert settings["access_key"] != s3_server_auth.access_key and settings["secret_key"] != s3_server_auth.secret_key
    assert settings["admin_api"] == "none" and access.mounts == []
    alice = s3_server_auth.worker_storage(settings)

    await alice.put(layout.agent_file("alice", "notes.md"), b"mine")
    assert await alice.get(layout.agent_file("alice", "notes.md")) == b"mine"
    await alice.put(layout.task_result("t1"), b"done")
    assert await alice.get(layout.task_spec("t1")) == b"# task one"
    assert [e["key"] for e in await alice.list(layout.agent_home("alice"))] == ["agents/alice/notes.md"]
    await alice.delete(layout.agent_file("alice", "notes.md"))
    with pytest.raises(NotFoundError):  # allowed to look, nothing there
        await alice.get(layout.agent_file("alice", "notes.md"))

    denied = [
        alice.get(layout.agent_file("bob", "MEMORY.md")),
        alice.put(layout.agent_file("bob", "MEMORY.md"), b"overwritten by alice"),
        alice.delete(layout.agent_file("bob", "MEMORY.md")),
        alice.get(layout.task_spec("t2")),
        alice.put(layout.task_result("t2"), b"not mine"),
        alice.put(layout.task_spec("t1"), b"rewriting my own spec"),  # read-only inside the read-write task
        alice.copy(layout.task_spec("t1"), layout.agent_file("bob", "stolen.md")),
    ]
    for operation in denied:
        with pytest.raises(AccessDeniedError, match="access denied: alice may not"):
            await operation
    assert await team.get(layout.agent_file("bob", "MEMORY.md")) == b"bob's memory"
    assert await team.get(layout.task_spec("t1")) == b"# task one"
    with pytest.raises(PluginError, match="control-plane operations"):
        await alice.grant("alice", rw=["shared/"])
    await alice.stop()


async def test_a_changed_grant_keeps_the_keys_and_applies_to_the_running_worker(s3_server_auth, tmp_path):
    """Each new task changes a worker's grant; the worker must not lose its keys mid-task. The new
    grant applies at once to the keys it already holds — also after a restart of the control plane."""
    control = s3_server_auth.make_storage(admin_api="iam", home=tmp_path)
    await control.put(layout.task_spec("t2"), b"# task two")
    first = await control.grant("erin", rw=[layout.task_dir("t1")])
    erin = s3_server_auth.worker_storage(first.settings)  # the running worker
    await erin.put(layout.task_result("t1"), b"one")
    with pytest.raises(AccessDeniedError):
        await erin.get(layout.task_spec("t2"))

    second = await control.grant("erin", rw=[layout.task_dir("t1"), layout.task_dir("t2")])
    assert second.settings == first.settings
    assert await erin.get(layout.task_spec("t2")) == b"# task two"  # granted to the keys it holds
    await erin.put(layout.task_result("t2"), b"two")
    assert await erin.get(layout.task_result("t1")) == b"one"
    await control.stop()

    restarted = s3_server_auth.make_storage(first.settings["bucket"], admin_api="iam", home=tmp_path)
    third = await restarted.grant("erin", rw=[layout.task_dir("t2")])
    assert third.settings == first.settings
    with pytest.raises(AccessDeniedError):  # narrowed: t1 is no longer erin's
        await erin.get(layout.task_result("t1"))
    assert await erin.get(layout.task_result("t2")) == b"two"
    assert oct((tmp_path / "run" / "storage-keys.json").stat().st_mode & 0o777) == "0o600"
    await restarted.stop()
    await erin.stop()


async def test_revoked_or_lost_keys_get_nothing(s3_server_auth, tmp_path):
    control = s3_server_auth.make_storage(admin_api="iam", home=tmp_path)
    first = await control.grant("carol", rw=[layout.task_dir("t1")])
    carol = s3_server_auth.worker_storage(first.settings)
    await carol.put(layout.agent_file("carol", "a.md"), b"a")

    (tmp_path / "run" / "storage-keys.json").unlink()  # the issued keys are forgotten: fresh ones
    second = await control.grant("carol", rw=[layout.task_dir("t1")])
    assert second.settings["access_key"] != first.settings["access_key"]
    with pytest.raises(AccessDeniedError, match="rejected the credentials of carol"):
        await carol.get(layout.agent_file("carol", "a.md"))
    renewed = s3_server_auth.worker_storage(second.settings)
    assert await renewed.get(layout.agent_file("carol", "a.md")) == b"a"

    await control.revoke("carol")
    for operation in (renewed.get(layout.agent_file("carol", "a.md")), renewed.put(layout.agent_file("carol", "b.md"), b"b"),
                      renewed.list(layout.agent_home("carol")), renewed.get(layout.task_spec("t1"))):
        with pytest.raises(AccessDeniedError, match="rejected the credentials"):
            await operation
    await control.revoke("carol")  # idempotent
    third = await control.grant("carol")  # after a revoke: new keys
    assert third.settings["access_key"] not in (first.settings["access_key"], second.settings["access_key"])
    await control.stop()
    await carol.stop()
    await renewed.stop()


async def test_a_granted_worker_cannot_mint_or_see_other_credentials(team, s3_server_auth):
    from hiclaw.plugins.storage.minio.iam import IamClient, IamError

    access = await team.grant("dave")
    client = IamClient(s3_server_auth.url, access_key=access.settings["access_key"], secret_key=access.settings["secret_key"])
    try:
        for action, params in (("CreateAccessKey", {"UserName": "hiclaw-root"}), ("ListUsers", {})):
            with pytest.raises(IamError, match="AccessDenied"):
                await client.call(action, **params)
    finally:
        await client.aclose()
    await team.revoke("dave")
