"""Map the repository's folders into the single import namespace ``hiclaw``.

DESIGN section 2 fixes the layout (``core/``, ``plugins/``, ``registry-client/``, ``sandbox/``,
``skills/``); setuptools' ``package_dir`` maps each folder to its import name. Packages are
discovered by walking the folders so a new sub-package needs no edit here.
"""
from pathlib import Path

from setuptools import setup

ROOTS = {
    "hiclaw": "core",
    "hiclaw.plugins": "plugins",
    "hiclaw.registry": "registry-client",
    "hiclaw.sandbox": "sandbox",
    "hiclaw.skills": "skills",
}
HERE = Path(__file__).parent


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        root = HERE / folder
        for init in sorted(root.rglob("__init__.py")):
            rel = init.parent.relative_to(root)
            if any(part.startswith((".", "__pycache__")) for part in rel.parts):
                continue
            pkg = ".".join([name, *rel.parts]) if rel.parts else name
            packages.append(pkg)
            package_dir[pkg] = str(Path(folder, *rel.parts))
    return packages, package_dir


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "": ["*.md", "**/*.md", "**/*.yaml", "**/*.yml", "**/*.json", "**/*.toml", "**/*.sh",
             "**/*.py", "Dockerfile", "**/Dockerfile", "py.typed", "**/scripts/*", "**/*.css", "**/*.js"],
    },
    include_package_data=True,
)
