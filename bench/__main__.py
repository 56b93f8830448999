from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bench import Figure, export, ingest, labeling, loop, machine_speed_ms, prelabel, quality, queue, startup

SCENARIOS: dict[str, Callable[[str], list[Figure]]] = {
    "startup": startup.run,
    "ingest": ingest.run,
    "annotations": labeling.run,
    "queue": queue.run,
    "prelabel": prelabel.run,
    "quality": quality.run,
    "export": export.run,
    "loop": loop.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run one benchmark scenario.")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--scale", choices=("small", "full"), default="small", help="small: quick check; full: repeated runs"
    )
    options = parser.parse_args(argv)
    before = machine_speed_ms()
    for figure in SCENARIOS[options.scenario](options.scale):
        print(figure.line(), flush=True)
    # Before and after: a figure taken while the machine slowed down shows it here.
    print(Figure("machine_loop_ms", max(before, machine_speed_ms()), "ms").line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
