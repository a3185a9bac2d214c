"""Switchboard on Modal: the repository's Docker image, serving Twilio's voice webhook (`POST /`),
`/twiml`, `/dialout`, `/healthz` and the media WebSocket `/ws` on the app's modal.run URL.

    modal secret create switchboard --from-dotenv .env   # once: TWILIO_*, GROQ_API_KEY, ...
    modal serve deploy/modal/app.py                      # development: temporary -dev URL, live reload
    modal deploy deploy/modal/app.py                     # production: a stable URL

Step by step, with the Twilio console: docs/deploy.md.

Storage: recordings and the call history on the Volume `switchboard-data` (mounted at /data),
persona plugins on the Volume `switchboard-personas` (mounted at /personas, seeded with the
image's example personas on first start). Writes reach the Volume through Modal's background
commits and the commit when the container stops; this app also commits after every call, so a
recording can be fetched (`modal volume get switchboard-data recordings/...`) as soon as the
call has ended. Personas uploaded with `modal volume put switchboard-personas ...` are picked up
within PERSONAS_RELOAD_SECONDS by reloading that Volume.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import modal

APP_NAME = "switchboard"
PORT = 7860
DATA_DIR = "/data"
PERSONAS_DIR = "/personas"
# One container takes many calls at once. Keep one container: the SQLite call history has one
# writer, and two containers committing the same database file to a Volume lose each other's
# writes (docs/scale-out.md says what to change before raising this).
MAX_CONTAINERS = 1
CALLS_PER_CONTAINER = 50
# Longest call, seconds: a call's WebSocket is one request to this function.
MAX_CALL_SECONDS = 3600
# Calls in progress get this long to finish when the container is stopped (DRAIN_TIMEOUT_SECS).
DRAIN_SECONDS = 60
PERSONAS_RELOAD_SECONDS = 30

# This file's directory is deploy/modal/ of the repository: the build context is two levels up.
# (Inside the container this module is imported again, from another path; the image is then
# already built and these paths aren't read.)
REPO_ROOT = Path(__file__).resolve().parent.parent.parent

image = modal.Image.from_dockerfile(
    REPO_ROOT / "Dockerfile",
    context_dir=REPO_ROOT,
    # Modal runs its own Python in the container. 3.13's standalone build needs no RUN step, so
    # nothing is built after the Dockerfile's unprivileged USER.
    add_python="3.13",
)
data = modal.Volume.from_name("switchboard-data", create_if_missing=True)
personas = modal.Volume.from_name("switchboard-personas", create_if_missing=True)

app = modal.App(APP_NAME)


def server_env(public_url: str | None) -> dict[str, str]:
    """The image's environment with the Volumes' paths, the secret's values and the public URL."""
    env = dict(os.environ)
    env.update(
        PERSONAS_DIR=PERSONAS_DIR,
        RECORDINGS_DIR=f"{DATA_DIR}/recordings",
        DATABASE_PATH=f"{DATA_DIR}/db/switchboard.db",
        DRAIN_TIMEOUT_SECS=str(DRAIN_SECONDS),
        HOST="0.0.0.0",
        PORT=str(PORT),
    )
    # A PUBLIC_URL in the secret (a custom domain) wins; otherwise this function's own URL, which
    # Twilio signs requests against. Without either the server falls back to the proxy's headers.
    if public_url and not env.get("PUBLIC_URL"):
        env["PUBLIC_URL"] = public_url
    return env


def calls_ended(port: int) -> float | None:
    """Calls the server has finished so far (from its /metrics), or None if it can't be asked."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("switchboard_calls_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def keep_volumes_in_step(server: subprocess.Popen) -> None:
    """Commit the data Volume after each finished call; reload the personas Volume now and then."""
    seen = 0.0
    last_reload = time.monotonic()
    while server.poll() is None:
        time.sleep(2)
        ended = calls_ended(PORT)
        if ended is not None and ended > seen:
            seen = ended
            try:
                data.commit()
            except Exception as e:  # a failed commit is retried by the next call's or at exit
                print(f"switchboard-modal: committing {DATA_DIR} failed: {e}", flush=True)
        if time.monotonic() - last_reload >= PERSONAS_RELOAD_SECONDS:
            last_reload = time.monotonic()
            try:
                personas.reload()
            except Exception as e:  # open files (a persona being compiled): next round
                print(f"switchboard-modal: reloading {PERSONAS_DIR} skipped: {e}", flush=True)


@app.function(
    image=image,
    secrets=[modal.Secret.from_name("switchboard")],
    volumes={DATA_DIR: data, PERSONAS_DIR: personas},
    timeout=MAX_CALL_SECONDS,
    max_containers=MAX_CONTAINERS,
    scaledown_window=300,
)
@modal.concurrent(max_inputs=CALLS_PER_CONTAINER)
@modal.web_server(PORT, startup_timeout=60)
def serve() -> None:
    try:
        public_url = serve.get_web_url()
    except Exception as e:
        print(f"switchboard-modal: no web URL ({e}); the server will use the proxy's headers", flush=True)
        public_url = None
    # The image's entrypoint seeds an empty personas Volume and creates the data directories.
    server = subprocess.Popen(
        ["/usr/local/bin/switchboard-entrypoint", "serve"],
        env=server_env(public_url),
        cwd=DATA_DIR,
    )
    threading.Thread(target=keep_volumes_in_step, args=(server,), daemon=True).start()
