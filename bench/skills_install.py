"""Skill search + install from a local private registry: hiclaw vs the official `skills` CLI.

One `hiclaw registry serve` over a folder of 60 skills; each round searches for a word and
installs one multi-file skill into a fresh folder, with:

* hiclaw, in process — the control plane's path for a worker's `skills_find` + `skills_add`
  (SkillService: HTTP search, download, verification, atomic install, lock file);
* hiclaw, CLI — `hiclaw skills find WORD --json` then `hiclaw skills add owner/repo@skill --dir D`
  (two fresh Python processes);
* the official CLI — `skills find WORD` then `skills add URL --skill NAME -g -y` (two Node
  processes, npm package `skills`, pinned; it reaches a private registry through well-known
  discovery).

Prints the median of each beside the bar (≤ 0.5 s) and the official CLI's figure.
Run: .venv/bin/python bench/skills_install.py [--rounds N]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKILLS_CLI_VERSION = "1.5.26"
BAR_SECONDS = 0.5
WORD, OWNER_REPO, SKILL = "invoice", "acme/finance", "invoice-parser"


def make_registry(root: Path) -> None:
    topics = ["pdf", "csv", "charts", "terraform", "kubernetes", "email", "slides", "sql", "scraping", "translation"]
    for i in range(60):
        topic = topics[i % len(topics)]
        name = f"{topic}-helper-{i}"
        folder = root / f"team{i % 6}" / f"repo{i % 3}" / "skills" / name
        folder.mkdir(parents=True)
        (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: Helps with {topic} work, variant {i}.\n---\n# {name}\n")
    target = root / "acme" / "finance" / "skills" / SKILL
    (target / "scripts").mkdir(parents=True)
    (target / "references").mkdir()
    (target / "SKILL.md").write_text(f"---\nname: {SKILL}\ndescription: Parse {WORD} PDFs into structured JSON.\n---\n"
                                     "# Invoice parser\nRun `python scripts/parse.py FILE`.\n" + "Details.\n" * 200)
    (target / "scripts" / "parse.py").write_text("import sys\nprint(sys.argv)\n" * 50)
    (target / "references" / "fields.md").write_text("| field | meaning |\n" * 100)


def start_server(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "hiclaw", "registry", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("serving"):
        proc.kill()
        raise SystemExit(f"registry did not start: {line!r}")
    return proc, line.rsplit(" at ", 1)[1].strip()


def official_cli() -> Path | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    cache = Path.home() / ".cache" / "hiclaw-tests" / f"skills-cli-{SKILLS_CLI_VERSION}"
    entry = cache / "node_modules" / "skills" / "bin" / "cli.mjs"
    if not entry.is_file():
        subprocess.run(["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
                        f"skills@{SKILLS_CLI_VERSION}"], capture_output=True, timeout=300, check=False)
    return entry if entry.is_file() else None


def run(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}… failed: {result.stderr[-400:] or result.stdout[-400:]}")


async def in_process_round(url: str, target: Path) -> None:
    from hiclaw.config import SkillsConfig
    from hiclaw.registry.service import SkillService

    service = SkillService(SkillsConfig(api_url=url))
    try:
        hits = await service.find("bench", WORD)
        await service.add("bench", hits[0]["source"], None, target)
    finally:
        await service.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hiclaw-bench-skills-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKILLS_", "XDG_"))}
    env.update(HICLAW_HOME=str(work / "hiclaw-home"), DISABLE_TELEMETRY="1", NO_COLOR="1")
    make_registry(work / "registry")
    server, url = start_server(work / "registry", env)
    env["SKILLS_API_URL"] = url
    cli = official_cli()
    timings: dict[str, list[float]] = {"hiclaw (in process)": [], "hiclaw CLI": [], "official skills CLI": []}
    try:
        asyncio.run(in_process_round(url, work / "warm-up"))  # the control plane has its imports done
        for i in range(args.rounds):
            started = time.perf_counter()
            asyncio.run(in_process_round(url, work / f"inproc-{i}"))
            timings["hiclaw (in process)"].append(time.perf_counter() - started)

            started = time.perf_counter()
            run([sys.executable, "-m", "hiclaw", "skills", "find", WORD, "--json"], env, work)
            run([sys.executable, "-m", "hiclaw", "skills", "add", f"{OWNER_REPO}@{SKILL}", "--dir", str(work / f"cli-{i}")], env, work)
            timings["hiclaw CLI"].append(time.perf_counter() - started)

            if cli is not None:
                home = work / f"home-{i}"
                home.mkdir()
                node_env = {**env, "HOME": str(home)}
                started = time.perf_counter()
                run(["node", str(cli), "find", WORD], node_env, work)
                run(["node", str(cli), "add", url, "--skill", SKILL, "-g", "-y"], node_env, work)
                timings["official skills CLI"].append(time.perf_counter() - started)
        installed = json.loads((work / "cli-0" / "skills-lock.json").read_text())["skills"]
        assert SKILL in installed, "the CLI round did not install the skill"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    official = statistics.median(timings["official skills CLI"]) if timings["official skills CLI"] else None
    print(f"skill search + install from a local registry (median of {args.rounds}; bar ≤ {BAR_SECONDS:.1f} s)")
    print(f"{'path':<24} {'median':>9} {'min':>9}   vs official CLI")
    for label, values in timings.items():
        if not values:
            print(f"{label:<24} {'n/a':>9} {'':>9}   (node/npm or the npm registry unavailable)")
            continue
        median = statistics.median(values)
        ratio = f"{official / median:.1f}× faster" if official and label != "official skills CLI" else "baseline"
        mark = "within bar" if median <= BAR_SECONDS else "over bar"
        print(f"{label:<24} {median:>8.3f}s {min(values):>8.3f}s   {ratio} ({mark})")


if __name__ == "__main__":
    main()
