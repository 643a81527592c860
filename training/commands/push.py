"""`entropy-asr push --model DIR --repo-id USER/NAME [--space-id USER/NAME] [--metric-id USER/NAME]`:
assemble the model, Space and metric folders (training/commands/release.py) under --out and upload them with
huggingface_hub (create_repo + upload_folder). `--dry-run` stops after writing the folders.

The token comes from HF_TOKEN or `hf auth login` and is never printed or logged. Any failure exits
non-zero with a message saying what to do; the assembled folders stay in --out for a retry.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EXIT_USAGE, EXIT_UPLOAD = 2, 1


class PushError(RuntimeError):
    """A failure with a message for the user (what happened and what to do)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder (saved by entropy-asr; a LoRA adapter is merged)"
    )
    parser.add_argument("--repo-id", required=True, help="model repo, USER/NAME")
    parser.add_argument(
        "--space-id", default=None, help="demo Space repo, USER/NAME (uploaded only if given)"
    )
    parser.add_argument(
        "--metric-id", default=None, help="metric Space repo, USER/NAME (uploaded only if given)"
    )
    parser.add_argument("--private", action="store_true", help="create the repos as private")
    parser.add_argument("--dry-run", action="store_true", help="write the folders, upload nothing")
    parser.add_argument(
        "--out", default="dist/hub", help="where the folders are assembled (default: ./dist/hub, git-ignored)"
    )
    parser.add_argument("--report", default=None, help="evaluation report JSON for the card's model-index")
    parser.add_argument("--report-recipe", default=None, help="recipe to read from a demo summary.json")
    parser.add_argument(
        "--dataset", action="append", default=None, help="dataset id for the card metadata (repeatable)"
    )
    parser.add_argument("--dataset-name", default=None, help="evaluation dataset's name in the model-index")
    parser.add_argument(
        "--examples", default=None, help="example clips for the Space (a folder, or a corpus folder)"
    )
    parser.add_argument(
        "--metric-dir", default=None, help="evaluate module folder (default: eval/entropy_allocation)"
    )


def run(args: argparse.Namespace) -> int:
    from training.commands.release import assemble_release  # lazy: --help stays fast

    for flag, value in (
        ("--repo-id", args.repo_id),
        ("--space-id", args.space_id),
        ("--metric-id", args.metric_id),
    ):
        if value is not None and not REPO_ID.match(value):
            logger.error("%s %r is not of the form USER/NAME.", flag, value)
            return EXIT_USAGE
    try:
        folders = assemble_release(
            args.model,
            args.out,
            args.repo_id,
            space_id=args.space_id,
            metric_id=args.metric_id,
            report=args.report,
            report_recipe=args.report_recipe,
            datasets=args.dataset,
            dataset_name=args.dataset_name,
            examples=args.examples,
            metric_dir=args.metric_dir,
        )
    except (FileNotFoundError, ValueError, KeyError) as err:
        logger.error("Could not assemble the release folders: %s", err)
        return EXIT_USAGE
    print(f"model folder:  {folders.model}")
    print(f"Space folder:  {folders.space}")
    print(f"metric folder: {folders.metric or 'skipped: ' + folders.skipped.get('metric', '')}")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    targets = [("model", args.repo_id, folders.model)]
    if args.space_id:
        targets.append(("space", args.space_id, folders.space))
    if args.metric_id:
        if folders.metric is None:
            logger.error("--metric-id given but the metric folder was skipped: %s", folders.skipped["metric"])
            return EXIT_USAGE
        targets.append(("metric", args.metric_id, folders.metric))
    try:
        urls = upload(targets, private=args.private)
    except PushError as err:
        logger.error("%s", err)
        logger.error(
            "Nothing else was changed; the assembled folders are kept in %s for a retry.", Path(args.out)
        )
        return EXIT_UPLOAD
    for kind, url in urls:
        print(f"uploaded {kind}: {url}")
    return 0


def upload(targets: list[tuple[str, str, Path]], private: bool = False) -> list[tuple[str, str]]:
    """Check the token and write access to every repo first, then create and upload each one."""

    if huggingface_hub.constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be uploaded: run again with HF_HUB_OFFLINE=0.")
    token = huggingface_hub.get_token()
    if not token:
        raise PushError(
            "No Hugging Face token found. Run `hf auth login` (or set HF_TOKEN) with a token that has write "
            "access (https://huggingface.co/settings/tokens), then run this command again."
        )
    api = HfApi(token=token)
    endpoint = huggingface_hub.constants.ENDPOINT
    with _explained(token, endpoint, "checking your token"):
        me = api.whoami()
    user = me.get("name", "?")
    writable = {user, *(org.get("name") for org in me.get("orgs") or [])}
    for _, repo_id, _ in targets:
        namespace = repo_id.split("/")[0]
        if namespace not in writable:
            raise PushError(
                f"{repo_id} is in the namespace {namespace!r}, which your account {user!r} cannot write to. "
                f"Use a repo id under {user!r} or one of your organisations (e.g. {user}/{repo_id.split('/')[1]})."
            )
    urls: list[tuple[str, str]] = []
    for kind, repo_id, folder in targets:
        repo_type = "model" if kind == "model" else "space"
        done = f" (already uploaded: {', '.join(url for _, url in urls)})" if urls else ""
        with _explained(token, endpoint, f"uploading the {kind} folder to {repo_id}{done}"):
            api.create_repo(
                repo_id,
                repo_type=repo_type,
                private=private,
                exist_ok=True,
                space_sdk="gradio" if repo_type == "space" else None,
            )
            api.upload_folder(
                repo_id=repo_id,
                repo_type=repo_type,
                folder_path=str(folder),
                commit_message=f"entropy-asr push: {kind}",
                ignore_patterns=["__pycache__/*", "*.pyc"],
            )
        prefix = "" if repo_type == "model" else "spaces/"
        urls.append((kind, f"{endpoint.rstrip('/')}/{prefix}{repo_id}"))
        logger.info("uploaded %s to %s", kind, repo_id)
    return urls


class _explained:
    """Turns Hub/network exceptions inside the block into a PushError that says what to do (no token)."""

    def __init__(self, token: str, endpoint: str, doing: str):
        self.token, self.endpoint, self.doing = token, endpoint, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, err, tb) -> bool:
        if err is None or not isinstance(err, Exception):
            return False

        status = getattr(getattr(err, "response", None), "status_code", None)
        detail = str(err).replace(self.token, "***").splitlines()[0][:300] if str(err) else type(err).__name__
        if isinstance(err, HfHubHTTPError) and status == 401:
            msg = "your token was rejected (expired or invalid): run `hf auth login` again or set a valid HF_TOKEN"
        elif isinstance(err, HfHubHTTPError) and status in (403, 409):
            msg = (
                "no write access: the repo exists and belongs to someone else, or your token is read-only; "
                "choose a repo id in your own namespace or use a token with write access"
            )
        elif isinstance(err, HfHubHTTPError):
            msg = f"the Hub answered HTTP {status}; try again later or check the repo id"
        elif _is_network_error(err):
            msg = (
                f"could not reach {self.endpoint}: check your network connection (and HF_ENDPOINT if you set it), "
                "then run the command again"
            )
        else:
            return False
        raise PushError(f"Upload failed while {self.doing}: {msg}. ({type(err).__name__}: {detail})") from err


def _is_network_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "NetworkError", "TimeoutException", "RequestError", "ConnectError"}
    )
