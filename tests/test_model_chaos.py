"""The model-chaos suite: the seed scenario on a live team whose model misbehaves.

The demo's scenario (four workers, a five-task project with a revision) is played by the admin as
a person plays it (hiclaw.testing.seedplay) on real components — embedded Synapse, the embedded
gateway, local storage, sandboxed workers, a private skill registry — with the scripted model made
unruly (docs/scripted-model.md, "The unruly model"): each kind of misbehaviour alone, at 3 calls in
10, and seeded random mixes of all of them. Whatever the model does, these must hold:

- no silent stall: every task that waits on code or a worker and has not moved for two heartbeat
  intervals has been reported to the admin;
- bounded LLM calls per task (the clean run's, times a small factor);
- no assignment lost or posted twice (each "is yours" exactly once per dispatch), no event twice;
- nothing raw (tool-call markup, JSON tool calls) shown to the human;
- every admin message answered; no traceback in any log.

The project need not finish: a model that never calls a tool cannot plan it. One mix runs in the
slow suite; every kind and five seeds of the mix run in the long suite (``./dev.sh test --long``).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hiclaw.scripted.unruly import KINDS
from hiclaw.testing.seedplay import KIND_RATE, SeedPlay, kind_spec, play_seed, seeded_mix

#: LLM calls per dispatched task may grow this much over the clean run's under one kind at 3 in
#: 10 calls (each bad call costs a retry, a nudge, or the on-behalf report's turn); under the mix
#: the design's bar is 1.5× (bench/model_chaos.py measures it).
KIND_CALL_FACTOR = 3.0
MIX_CALL_FACTOR = 2.0


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> SeedPlay:
    import asyncio

    play = asyncio.run(play_seed(tmp_path_factory.mktemp("clean") / "home"))
    assert play.done and not play.broken(), play.line()
    return play


def check(play: SeedPlay, clean: SeedPlay, factor: float) -> None:
    print(play.line())
    assert not play.broken(), f"{play.line()}\n{play.broken()}"
    assert play.misbehaved > 0, "the mix never fired"
    assert play.calls_within(factor, clean), (play.line(), clean.line())


@pytest.mark.slow
async def test_the_seed_scenario_under_a_seeded_mix(tmp_path: Path, clean_run: SeedPlay) -> None:
    play = await play_seed(tmp_path / "home", mix=seeded_mix(1), label="mix seed 1")
    check(play, clean_run, MIX_CALL_FACTOR)
    assert len(play.kinds) >= 4, play.kinds  # a mix, not one kind


@pytest.mark.long
@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
async def test_the_seed_scenario_under_seeded_mixes(tmp_path: Path, clean_run: SeedPlay, seed: int) -> None:
    play = await play_seed(tmp_path / "home", mix=seeded_mix(seed), label=f"mix seed {seed}")
    check(play, clean_run, MIX_CALL_FACTOR)


@pytest.mark.long
@pytest.mark.parametrize("kind", KINDS)
async def test_the_seed_scenario_under_each_misbehaviour(tmp_path: Path, clean_run: SeedPlay, kind: str) -> None:
    # A seed per kind: the draws fall on other calls for each.
    mix = {"seed": KINDS.index(kind) + 1, "max_consecutive": 2,
           "agents": {"*": {"kinds": {kind: kind_spec(kind, KIND_RATE)}}}}
    play = await play_seed(tmp_path / "home", mix=mix, label=kind)
    check(play, clean_run, KIND_CALL_FACTOR)
    assert set(play.kinds) == {kind}
