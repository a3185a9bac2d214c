#!/usr/bin/env python3
"""Imports deploy/modal/app.py with Modal's SDK (its decorators check their arguments) and runs
its helpers against a live server: usage: modal_app_check.py APP_PY PORT"""

import importlib.util
import sys


def main() -> int:
    path, port = sys.argv[1], int(sys.argv[2])
    spec = importlib.util.spec_from_file_location("switchboard_modal_app", path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    ended = app.calls_ended(port)
    if ended != 0.0:
        print(f"calls_ended read {ended!r} from a fresh server's /metrics", file=sys.stderr)
        return 1
    if app.calls_ended(1) is not None:
        print("calls_ended answered for a port nothing listens on", file=sys.stderr)
        return 1
    url = "https://workspace--switchboard-serve.modal.run"
    env = app.server_env(url)
    want = {"PUBLIC_URL": url, "PERSONAS_DIR": app.PERSONAS_DIR, "PORT": str(app.PORT)}
    wrong = {k: env.get(k) for k, v in want.items() if env.get(k) != v}
    if wrong:
        print(f"server_env: {wrong}, expected {want}", file=sys.stderr)
        return 1
    print(f"{path} imports with modal {app.modal.__version__} (app {app.app.name!r}); reads /metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
