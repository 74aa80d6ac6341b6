"""What a pull request wants now, from GitHub's REST API (GET /repos/{owner}/{repo}/pulls/{number}).

The reaper asks this for every pr-<n> whose TTL is still ahead: a destroy that review-env.yml queued when
the PR was closed or unlabelled can be lost (a newer pending run in its concurrency group cancels the
pending one), and the TTL alone would then keep the GPU for up to a week.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from tools.ci import LABEL, _log

# pr number -> why it wants no endpoint ("closed", "not labelled deploy-preview"), or None when it wants one.
PullLookup = Callable[[int], str | None]
TIMEOUT_SECONDS = 15


def lookup_from_env(environ: Mapping[str, str] = os.environ) -> PullLookup | None:
    """A lookup with the workflow's token (GITHUB_TOKEN, GITHUB_REPOSITORY, GITHUB_API_URL), or None when the
    environment has no token: then only the TTL counts, as before."""
    token, repository = environ.get("GITHUB_TOKEN", ""), environ.get("GITHUB_REPOSITORY", "")
    if not token or not repository:
        return None
    api = environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    if not api.startswith(("https://", "http://127.0.0.1:")):  # GitHub's API, or a test's loopback fake
        raise ValueError(f"GITHUB_API_URL {api!r}: expected an https URL")

    def unwanted(number: int) -> str | None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            f"{api}/repos/{repository}/pulls/{number}", headers={
                "Accept": "application/vnd.github+json", "Authorization": f"Bearer {token}",
                "X-GitHub-Api-Version": "2022-11-28"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            pull = json.load(response)
        if pull.get("state") != "open":
            return "its pull request is closed"
        if LABEL not in {label.get("name") for label in pull.get("labels") or []}:
            return f"its pull request is no longer labelled {LABEL}"
        return None

    return unwanted


def why_unwanted(lookup: PullLookup | None, number: int) -> str | None:
    """The lookup's answer; an API error is logged and counts as "still wanted", so only the TTL decides."""
    if lookup is None:
        return None
    try:
        return lookup(number)
    except (OSError, ValueError) as err:  # URLError is an OSError
        _log(f"pull request #{number}: could not read its state ({err}); its TTL decides")
        return None
