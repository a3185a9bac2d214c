#!/usr/bin/env python3
"""Reproduces the Dockerfile's runtime stage without Docker, for scripts/check-deploy.sh.

Subcommands:
  plugin-crates   the crates the `plugins` stage builds (from its `plugins/build.sh` line)
  assemble        copy what the runtime stage's COPY steps would put in the image into a
                  directory tree, create its volumes, and write the run plan (ENV with paths
                  moved into the tree, entrypoint, healthcheck, working directory, user)
  size            the image size those files make, plus the base image and apt packages
  compose         docker-compose.yml is well-formed and agrees with the Dockerfile

Every COPY source must have a local equivalent listed in LOCAL_SOURCES: a COPY added to the
Dockerfile fails this check until it is mapped here, so the check can't silently skip it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

MB = 1_000_000  # docker reports image sizes in decimal megabytes


class CheckError(Exception):
    pass


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for k, args in self.instructions if k == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    logical: list[str] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        logical.append((current + line).strip())
        current = ""
    if current:
        raise CheckError(f"{path}: the last instruction ends with a line continuation")
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    if not stages:
        raise CheckError(f"{path}: no FROM")
    return stages


def stage(stages: list[Stage], name: str) -> Stage:
    for s in stages:
        if s.name == name:
            return s
    raise CheckError(f"the Dockerfile has no stage named {name!r}")


def parse_env(args_list: list[str]) -> dict[str, str]:
    """ENV KEY=VALUE ... (the `ENV KEY VALUE` form too), in order."""
    env: dict[str, str] = {}
    for args in args_list:
        words = shlex.split(args)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for w in words:
            key, sep, value = w.partition("=")
            if not sep:
                raise CheckError(f"ENV {args!r}: {w!r} is not KEY=VALUE")
            env[key] = value
    return env


def exec_form(args: str, what: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError as e:
        raise CheckError(f"{what} must use the exec form [\"...\"] (signals reach the server): {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckError(f"{what} must be a JSON array of strings")
    return value


def healthcheck_command(args: str) -> list[str]:
    words = args.split()
    while words and words[0].startswith("--"):
        words.pop(0)
    if not words or words[0] != "CMD":
        raise CheckError(f"HEALTHCHECK {args!r} has no CMD")
    return exec_form(args[args.index("CMD") + 3 :].strip(), "HEALTHCHECK CMD")


@dataclass
class Copy:
    source_stage: str | None  # None: the build context
    sources: list[str]
    dest: str
    chmod: int | None = None


def parse_copy(args: str) -> Copy:
    words = shlex.split(args)
    source_stage = None
    chmod = None
    flags = [w for w in words if w.startswith("--")]
    for f in flags:
        if f.startswith("--from="):
            source_stage = f.split("=", 1)[1]
        elif f.startswith("--chmod=") and f[8:].isdigit():
            chmod = int(f[8:], 8)
        else:
            raise CheckError(f"COPY {args!r}: flag {f} is not reproduced by this check (and Modal's builder rejects most)")
    rest = [w for w in words if not w.startswith("--")]
    if len(rest) < 2:
        raise CheckError(f"COPY {args!r} needs a source and a destination")
    for s in rest[:-1]:
        if "$" in s or "*" in s:
            raise CheckError(f"COPY source {s!r}: no variables or globs (Modal's builder uploads by literal path)")
    return Copy(source_stage, rest[:-1], rest[-1], chmod)


def local_source(copy: Copy, source: str, repo: Path, binary: Path, plugins_out: Path) -> Path:
    """Where this machine has what `COPY [--from=stage] source` reads."""
    if copy.source_stage is None:
        return repo / source
    table = {
        # The release binary is too slow to build here; the debug build is the same program.
        ("build", "/src/target/release/switchboard"): binary,
        # The build image's CA bundle: Debian's ca-certificates, as on this machine.
        ("build", "/etc/ssl/certs/ca-certificates.crt"): Path("/etc/ssl/certs/ca-certificates.crt"),
        ("plugins", "/src/plugins/target/personas/"): plugins_out,
    }
    if (copy.source_stage, source) in table:
        return table[(copy.source_stage, source)]
    if copy.source_stage == "models" and source.startswith("/models/"):
        return repo / "models" / source.removeprefix("/models/")
    raise CheckError(
        f"COPY --from={copy.source_stage} {source}: no local equivalent; map it in deploy/check/runtime_tree.py"
    )


def inside(tree: Path, image_path: str) -> Path:
    return tree / image_path.lstrip("/")


def copy_into(src: Path, dest: Path, dest_is_dir: bool) -> list[Path]:
    if not src.exists():
        raise CheckError(f"COPY source {src} does not exist")
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        copied = []
        for child in sorted(src.iterdir()):
            copied += copy_into(child, dest / child.name, child.is_dir())
        return copied
    target = dest / src.name if dest_is_dir else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)
    return [target]


def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def cmd_plugin_crates(args: argparse.Namespace) -> None:
    stages = parse_dockerfile(args.dockerfile)
    for run in stage(stages, "plugins").all("RUN"):
        words = shlex.split(run)
        if "plugins/build.sh" in words:
            crates = words[words.index("plugins/build.sh") + 1 :]
            if not crates:
                raise CheckError("the plugins stage builds every crate (test plugins too): name the example personas")
            print(" ".join(crates))
            return
    raise CheckError("the plugins stage does not run plugins/build.sh")


def cmd_assemble(args: argparse.Namespace) -> None:
    stages = parse_dockerfile(args.dockerfile)
    rt = runtime(stages)
    tree: Path = args.tree
    files: list[Path] = []
    for c in (parse_copy(a) for a in rt.all("COPY")):
        dest_is_dir = c.dest.endswith("/") or len(c.sources) > 1
        for s in c.sources:
            src = local_source(c, s, args.repo, args.binary, args.plugins_out)
            copied = copy_into(src, inside(tree, c.dest), dest_is_dir)
            if c.chmod is not None:
                for f in copied:
                    f.chmod(c.chmod)
            files += copied

    env = parse_env(rt.all("ENV"))
    volumes = exec_form(rt.last("VOLUME") or "[]", "VOLUME")
    workdir = rt.last("WORKDIR") or "/"
    user = rt.last("USER") or "0"
    if not user.split(":")[0].isdigit() or user.split(":")[0] == "0":
        raise CheckError(f"USER {user!r}: must be a numeric, non-root uid")
    entrypoint = exec_form(rt.last("ENTRYPOINT") or "[]", "ENTRYPOINT")
    cmd = exec_form(rt.last("CMD") or "[]", "CMD")
    health = healthcheck_command(rt.last("HEALTHCHECK") or "")
    if not entrypoint:
        raise CheckError("the runtime stage has no ENTRYPOINT")

    # The image's RUN creates the volume directories and hands them to the user.
    for d in [*volumes, workdir]:
        inside(tree, d).mkdir(parents=True, exist_ok=True)

    problems = []
    for argv0, what in ((entrypoint[0], "ENTRYPOINT"), (health[0], "HEALTHCHECK")):
        p = inside(tree, argv0)
        if not (p.is_file() and os.access(p, os.X_OK)):
            problems.append(f"{what} {argv0} is not an executable file in the image")
    for key, value in env.items():
        if not value.startswith("/"):
            continue
        p = inside(tree, value)
        # A file the server creates itself (the database) needs its directory.
        if not (p.exists() or (key == "DATABASE_PATH" and p.parent.is_dir())):
            problems.append(f"ENV {key}={value}: nothing at that path in the image")
        if key.endswith("_DIR") and p.exists() and not p.is_dir():
            problems.append(f"ENV {key}={value} is not a directory")
    for v in volumes:
        if not any(env_value == v or env_value.startswith(v + "/") for env_value in env.values()):
            problems.append(f"VOLUME {v}: no ENV points into it")
    if problems:
        raise CheckError("; ".join(problems))

    # Paths move into the tree; the server listens on loopback (tests never bind elsewhere).
    run_env = {k: (str(inside(tree, v)) if v.startswith("/") else v) for k, v in env.items()}
    run_env["HOST"] = "127.0.0.1"
    run_env["PORT"] = str(args.port)
    plan = {
        "env": run_env,
        "argv": [str(inside(tree, entrypoint[0])), *entrypoint[1:], *cmd],
        "healthcheck": [str(inside(tree, health[0])), *health[1:]],
        "workdir": str(inside(tree, workdir)),
        "user": user if ":" in user else f"{user}:{user}",
        "volumes": [str(inside(tree, v)) for v in volumes],
    }
    (tree.parent / "plan.json").write_text(json.dumps(plan, indent=2), encoding="utf-8")
    with open(tree.parent / "run.env", "w", encoding="utf-8") as f:
        for k, v in run_env.items():
            f.write(f"{k}={v}\n")
    print(f"assembled {len(files)} files from {len(rt.all('COPY'))} COPY steps; ENV: {', '.join(env)}")


def cmd_plan(args: argparse.Namespace) -> None:
    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    value = plan[args.field]
    if isinstance(value, list):
        print("\n".join(value))
    elif isinstance(value, dict):
        print("\n".join(f"{k}={v}" for k, v in value.items()))
    else:
        print(value)


def tree_bytes(tree: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink():
            sizes[str(p.relative_to(tree))] = p.stat().st_size
    return sizes


def cmd_size(args: argparse.Namespace) -> None:
    sizes = tree_bytes(args.tree)
    binary_rel = "usr/local/bin/switchboard"
    if binary_rel not in sizes:
        raise CheckError(f"no {binary_rel} in the tree")
    sizes[binary_rel] = args.binary_for_size.stat().st_size
    groups: dict[str, int] = {}
    for rel, n in sizes.items():
        key = f"{binary_rel} (release build)" if rel == binary_rel else str(Path(rel).parent) + "/"
        groups[key] = groups.get(key, 0) + n
    files = sum(sizes.values())
    apt = args.apt_kib * 1024
    total = args.base_mb * MB + apt + files
    for key, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {n / MB:8.2f} MB  {key}")
    print(f"  {apt / MB:8.2f} MB  apt packages added to the base ({args.apt_packages})")
    print(f"  {args.base_mb:8.2f} MB  {args.base_image} (base image, not measured here)")
    print(f"  {total / MB:8.2f} MB  would-be image (limit {args.limit_mb} MB; binary: {args.binary_label})")
    budget = args.limit_mb * MB - args.base_mb * MB
    if files + apt > budget:
        raise CheckError(
            f"the image's own files take {(files + apt) / MB:.2f} MB, over the {budget / MB:.2f} MB left "
            f"after the base image"
        )


def cmd_compose(args: argparse.Namespace) -> None:
    import yaml  # the check's venv has PyYAML

    try:
        doc = yaml.safe_load(args.compose.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CheckError(f"{args.compose}: not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise CheckError(f"{args.compose}: no services mapping")
    services = doc["services"]
    app = services.get("switchboard")
    if not isinstance(app, dict):
        raise CheckError("no switchboard service")
    rt = runtime(parse_dockerfile(args.dockerfile))
    env = parse_env(rt.all("ENV"))
    volumes = exec_form(rt.last("VOLUME") or "[]", "VOLUME")
    problems = []
    if app.get("build") not in (".", {"context": "."}):
        problems.append("the switchboard service must build the repository's Dockerfile")
    # .env (env_file) carries paths for running without Docker: the image's paths must win.
    app_env = app.get("environment") or {}
    for key in ("PERSONAS_DIR", "RECORDINGS_DIR", "DATABASE_PATH"):
        if app_env.get(key) != env.get(key):
            problems.append(f"environment {key}={app_env.get(key)!r}, the image has {env.get(key)!r}")
    mounted = {str(v).split(":")[1] for v in app.get("volumes") or [] if ":" in str(v)}
    for v in volumes:
        if v not in mounted:
            problems.append(f"the image's VOLUME {v} is not mounted")
    named = set((doc.get("volumes") or {}).keys())
    for v in app.get("volumes") or []:
        src = str(v).split(":")[0]
        if not src.startswith((".", "/")) and src not in named:
            problems.append(f"volume {src!r} is not declared under volumes:")
    port = env.get("PORT")
    if not any(str(p).endswith(f":{port}") for p in app.get("ports") or []):
        problems.append(f"port {port} is not published")
    grace = str(app.get("stop_grace_period", ""))
    if not grace.endswith("s") or not grace[:-1].isdigit() or int(grace[:-1]) <= 60:
        problems.append("stop_grace_period must exceed the 60 s drain timeout")
    tunnels = [name for name in services if name != "switchboard"]
    if not tunnels:
        problems.append("no tunnel service")
    for name in tunnels:
        svc = services[name]
        if not svc.get("profiles"):
            problems.append(f"tunnel {name} has no profile, so it would always start")
        if "switchboard:" + str(port) not in json.dumps(svc.get("command")):
            problems.append(f"tunnel {name} does not point at switchboard:{port}")
    if problems:
        raise CheckError(f"{args.compose}: " + "; ".join(problems))
    print(f"{args.compose}: valid; services {', '.join(services)}; tunnels behind profiles: {', '.join(tunnels)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("plugin-crates")
    c.add_argument("--dockerfile", type=Path, required=True)
    c.set_defaults(run=cmd_plugin_crates)
    a = sub.add_parser("assemble")
    a.add_argument("--dockerfile", type=Path, required=True)
    a.add_argument("--repo", type=Path, required=True)
    a.add_argument("--tree", type=Path, required=True)
    a.add_argument("--binary", type=Path, required=True)
    a.add_argument("--plugins-out", type=Path, required=True)
    a.add_argument("--port", type=int, required=True)
    a.set_defaults(run=cmd_assemble)
    q = sub.add_parser("plan")
    q.add_argument("plan")
    q.add_argument("field")
    q.set_defaults(run=cmd_plan)
    s = sub.add_parser("size")
    s.add_argument("--tree", type=Path, required=True)
    s.add_argument("--binary-for-size", type=Path, required=True)
    s.add_argument("--binary-label", required=True)
    s.add_argument("--apt-kib", type=int, required=True)
    s.add_argument("--apt-packages", default="")
    s.add_argument("--base-image", required=True)
    s.add_argument("--base-mb", type=float, required=True)
    s.add_argument("--limit-mb", type=float, required=True)
    s.set_defaults(run=cmd_size)
    k = sub.add_parser("compose")
    k.add_argument("--compose", type=Path, required=True)
    k.add_argument("--dockerfile", type=Path, required=True)
    k.set_defaults(run=cmd_compose)
    args = p.parse_args()
    try:
        args.run(args)
    except CheckError as e:
        print(f"check-deploy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
