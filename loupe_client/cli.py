"""`loupe pull`: a released dataset into a folder, in the format your training code reads.

    loupe pull "Street scenes" --format coco --out data/street          # the latest ready release
    loupe pull 12@3 --format yolo --out data/street-yolo --media        # project 12, release 3
    loupe pull "Street scenes" --list                                   # its releases

Exit codes: 0 done (or already up to date), 1 error (one line on stderr), 2 usage,
130 interrupted (run the same command again: it resumes).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

import requests

from loupe_client.api import FORMATS, Client, Pulled
from loupe_client.errors import ApiError, LoupeError

PROG = "loupe pull"
_VERSION = re.compile(r"^(?P<project>.+)@(?P<release>\d+|latest)$")


def split_reference(text: str) -> tuple[str, str]:
    """`PROJECT[@RELEASE]` → (project, release); a name may itself contain "@"."""
    match = _VERSION.match(text)
    if match is None:
        return text, "latest"
    return match.group("project"), match.group("release")


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="PROJECT[@RELEASE]",
        help="project id or exact name; RELEASE is a version number or 'latest' (the default)",
    )
    parser.add_argument("--format", "-f", choices=FORMATS, help="annotation format (required unless --list)")
    parser.add_argument("--out", "-o", metavar="DIR", help="output folder (required unless --list)")
    parser.add_argument(
        "--media",
        action="store_true",
        help="also download every item's file to DIR/media/ (DIR/images/ for yolo)",
    )
    parser.add_argument("--split", help="with --media: only the items of this split (e.g. train)")
    parser.add_argument("--server", metavar="URL", help="Loupe server (default $LOUPE_URL)")
    parser.add_argument("--token", help="API token (default $LOUPE_TOKEN)")
    parser.add_argument("--workers", type=int, default=8, help="parallel media downloads (default 8)")
    parser.add_argument("--no-extract", action="store_true", help="keep zip exports (YOLO, VOC…) zipped")
    parser.add_argument("--force", action="store_true", help="pull again even if DIR/release.json matches")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list the project's releases and exit")


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `loupe` parser with its `pull` subcommand, and that subcommand's parser."""
    parser = argparse.ArgumentParser(prog="loupe", description="Loupe's client for released datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pull = commands.add_parser(
        "pull",
        help="download a release in a training format",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pull_arguments(pull)
    return parser, pull


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """`loupe pull …` (argv starts with "pull"); returns the exit code."""
    parser, pull_parser = build_parser()
    try:
        options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        server = options.server or os.environ.get("LOUPE_URL")
        token = options.token or os.environ.get("LOUPE_TOKEN")
        if not server:
            pull_parser.error("no server: pass --server URL or set LOUPE_URL")
        if not token:
            pull_parser.error("no token: pass --token or set LOUPE_TOKEN")
        if not options.list and (not options.format or not options.out):
            pull_parser.error("--format and --out are required")
        if options.workers < 1:
            pull_parser.error("--workers must be at least 1")
        if options.split and not options.media:
            pull_parser.error("--split chooses media files; use it with --media")
    except SystemExit as exit:  # argparse: 2 for usage errors, 0 for --help
        return exit.code if isinstance(exit.code, int) else 2

    try:
        client = Client(server, token)
        project_ref, version = split_reference(options.target)
        if options.list:
            return _list(client, project_ref)
        project = client.project(project_ref)
        release = client.release(project, version)
        pulled = client.download(
            release,
            options.format,
            options.out,
            media=options.media,
            split=options.split,
            workers=options.workers,
            extract=not options.no_extract,
            force=options.force,
            progress=not options.quiet,
        )
    except ApiError as error:
        return _fail(f"{error.code}: {error.message}")
    except LoupeError as error:
        return _fail(str(error))
    except requests.RequestException as error:
        return _fail(f"cannot talk to {server}: {type(error).__name__}: {error}")
    except OSError as error:
        return _fail(f"{error.filename or ''}: {error.strerror or error}".lstrip(": "))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(_summary(pulled, project.get("name", project["id"])))
    return 0


def _summary(pulled: Pulled, project_name: object) -> str:
    what = f"release {pulled.release['version']} of {project_name!r} ({pulled.format})"
    if pulled.up_to_date:
        return f"up to date: {what} in {pulled.out_dir}"
    media = f", {len(pulled.media)} media files" if pulled.media else ""
    return f"pulled {what}: {pulled.annotations}{media}"


def _list(client: Client, project_ref: str) -> int:
    project = client.project(project_ref)
    releases = client.releases(project["id"])
    if not releases:
        print(f"project {project['name']!r} has no releases")
        return 0
    print(f"{'version':>7}  {'state':<8}  {'items':>7}  {'regions':>8}  {'created':<20}  name")
    for release in releases:
        counts = release.get("counts") or {}
        print(
            f"{release['version']:>7}  {release['state']:<8}  {counts.get('items', ''):>7}  "
            f"{counts.get('regions', ''):>8}  {str(release.get('created_at', ''))[:19]:<20}  "
            f"{release.get('name') or ''}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
