"""What a gunicorn worker does when it loads the application."""

from __future__ import annotations

import json
import subprocess
import sys

from config.cli import child_env

PROBE = """
import gc, json, sys
import config.wsgi
print(json.dumps({"frozen": gc.get_freeze_count(), "views": "labeling.views" in sys.modules}))
"""


def test_a_worker_loads_every_view_and_freezes_what_it_loaded() -> None:
    """A worker's startup objects are moved out of the collector's sight once loaded (views
    included), so a full collection never walks them during a request."""
    argv = [sys.executable, "-c", PROBE]
    shown = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(shown.stdout.strip().splitlines()[-1])
    assert loaded["views"] is True
    assert loaded["frozen"] > 50_000
