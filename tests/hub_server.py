"""A local stand-in for the Hugging Face Hub's HTTP API, for tests of `intent_ci.hub`.

It implements only the endpoints that the real `huggingface_hub` client calls when intent-ci
pushes and pulls, with the request and response shapes that client expects (read from
`huggingface_hub/hf_api.py`, `_commit_api.py`, `file_download.py` and `utils/_http.py`):

====================================================  =================================
``POST /api/repos/create``                            ``HfApi.create_repo``
``GET  /api/models/{repo}/refs``                      ``HfApi.list_repo_refs``
``POST /api/validate-yaml``                           ``create_commit`` with a README.md
``POST /api/models/{repo}/preupload/{rev}``           ``create_commit`` (upload modes)
``POST /api/models/{repo}/commit/{rev}``              ``create_commit`` (NDJSON payload)
``POST /api/models/{repo}/tag/{rev}``                 ``HfApi.create_tag``
``DELETE /api/models/{repo}/tag/{tag}``               ``HfApi.delete_tag``
``HEAD|GET /{repo}/resolve/{rev}/{path}``             ``hf_hub_download``
====================================================  =================================

Every file is stored as a regular git blob: preupload answers ``uploadMode: regular`` and the
commit carries base64 content, so no LFS or Xet storage is involved. Repos keep real commit
history (each commit a full snapshot), tags are immutable (409 on a second create), a commit
whose ``parentCommit`` is not the branch head is refused (412), and the error headers
(``X-Error-Code``, ``X-Error-Message``) are the ones `hf_raise_for_status` maps to typed errors.

Tests can require a write token, make every request fail with a status, alter a stored file
behind the client's back (`tamper`), and read the request log. Any other endpoint answers 404
and is recorded in `unhandled`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

REPO = r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("GET", re.compile(rf"^/api/models/{REPO}/refs$"), "refs"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{REPO}/tag/(?P<rev>[^/]+)$"), "tag"),
    ("DELETE", re.compile(rf"^/api/models/{REPO}/tag/(?P<tag>[^/]+)$"), "delete_tag"),
    ("HEAD", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, as `git hash-object` computes it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev in self.commits:
            return rev
        return None


class HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        commit: str | None = None,
        body: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.body = body or {}


class StandInHub:
    """The Hub's state, the HTTP server and the knobs tests turn.

    Attributes:
        write_token: if set, writes need ``Authorization: Bearer <write_token>``; a request
            carrying any other token is refused with 401, as the Hub does.
        fail_status: if set, every request is answered with this status.
        echo_auth: put the request's Authorization header into error bodies, to check that
            the client side never repeats server text that could carry the token.
        requests: ``(method, path)`` of every request, in order.
        unhandled: requests no route matched.
    """

    def __init__(self, write_token: str | None = None) -> None:
        self.write_token = write_token
        self.fail_status: int | None = None
        self.echo_auth = False
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandInHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- test helpers ---------------------------------------------------------------------
    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(rev)].files)

    def tamper(self, repo_id: str, path: str, data: bytes) -> None:
        """Replace `path` in every commit that has it, as storage corrupted or altered would."""
        with self._lock:
            for commit in self.repos[repo_id].commits.values():
                if path in commit.files:
                    commit.files[path] = data

    def remove(self, repo_id: str, path: str) -> None:
        """Drop `path` from every commit, as a half-finished upload would leave it."""
        with self._lock:
            for commit in self.repos[repo_id].commits.values():
                commit.files.pop(path, None)

    # ---- request handling -----------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, dict, bytes]:
        path = urlsplit(raw_path).path
        with self._lock:
            self.requests.append((method, path))
        auth = headers.get("Authorization")
        try:
            if self.fail_status is not None:
                raise HubError(self.fail_status, f"stand-in failure {self.fail_status}")
            if auth is not None and (
                self.write_token is None or auth != f"Bearer {self.write_token}"
            ):
                raise HubError(401, "Invalid credentials in Authorization header")
            for verb, pattern, name in ROUTES:
                match = pattern.match(path)
                if match and verb == method:
                    with self._lock:
                        return getattr(self, f"_{name}")(match.groupdict(), auth, body, method)
            with self._lock:
                self.unhandled.append((method, path))
            raise HubError(404, "Not Found")
        except HubError as err:
            message = err.message + (f" (got {auth})" if self.echo_auth and auth else "")
            extra = {"X-Error-Message": message}
            if err.code:
                extra["X-Error-Code"] = err.code
            if err.commit:
                extra["X-Repo-Commit"] = err.commit
            return err.status, extra, json.dumps({"error": message, **err.body}).encode()

    def _can_write(self, auth: str | None) -> None:
        if self.write_token is not None and auth != f"Bearer {self.write_token}":
            raise HubError(401, "You must be authenticated to write to this repo")

    def _repo(self, repo_id: str, auth: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and auth is None):
            raise HubError(404 if auth else 401, "Repository not found", code="RepoNotFound")
        return repo

    def _new_commit(self, repo: Repo, parent: str | None, message: str, files: dict) -> str:
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(repo.commits)}".encode())
        for name in sorted(files):
            digest.update(f"{name}\0{git_blob_sha1(files[name])}\n".encode())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, parent, message, files)
        return oid

    def _create_repo(self, groups, auth, body, method):
        self._can_write(auth)
        payload = json.loads(body)
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "the stand-in only hosts model repos")
        if not payload.get("organization"):
            raise HubError(400, "the stand-in needs an explicit namespace")
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            # The Hub's 409 carries the url too: create_repo(exist_ok=True) reads it from there.
            raise HubError(409, "You already created this model repo", body={"url": url})
        repo = Repo(private=payload.get("visibility") == "private")
        repo.branches["main"] = self._new_commit(
            repo, None, "initial commit", {".gitattributes": GITATTRIBUTES}
        )
        self.repos[repo_id] = repo
        return 200, {}, json.dumps({"url": url, "name": repo_id}).encode()

    def _refs(self, groups, auth, body, method):
        repo = self._repo(groups["repo"], auth)

        def refs(kind: str, names: dict[str, str]) -> list[dict]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid}
                for n, oid in sorted(names.items())
            ]

        payload = {
            "branches": refs("heads", repo.branches),
            "converts": [],
            "tags": refs("tags", repo.tags),
        }
        return 200, {}, json.dumps(payload).encode()

    def _validate_yaml(self, groups, auth, body, method):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        errors = []
        if match is None:
            errors.append({"message": "no YAML metadata block"})
        else:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as err:
                meta, errors = None, [{"message": f"YAML: {err}"}]
            if not isinstance(meta, dict):
                errors.append({"message": "metadata must be a mapping"})
            else:
                if meta.get("pipeline_tag") not in (None, "text-classification"):
                    errors.append({"message": f"unknown pipeline_tag {meta.get('pipeline_tag')}"})
                base = meta.get("base_model")
                if base is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(base)):
                    errors.append({"message": f"base_model {base!r} is not a model id"})
        status = 400 if errors else 200
        return status, {}, json.dumps({"errors": errors, "warnings": []}).encode()

    def _preupload(self, groups, auth, body, method):
        self._can_write(auth)
        repo = self._repo(groups["repo"], auth)
        head = repo.resolve(unquote(groups["rev"]))
        existing = repo.commits[head].files if head else {}
        files = []
        for item in json.loads(body)["files"]:
            old = existing.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(old) if old is not None else None,
                }
            )
        return 200, {}, json.dumps({"files": files}).encode()

    def _commit(self, groups, auth, body, method):
        self._can_write(auth)
        repo_id = groups["repo"]
        repo = self._repo(repo_id, auth)
        branch = unquote(groups["rev"])
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        head = repo.branches[branch]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "regular files must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise HubError(400, f"the stand-in stores regular files only, got {key}")
        oid = self._new_commit(repo, head, header["summary"], files)
        repo.branches[branch] = oid
        payload = {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}
        return 200, {}, json.dumps(payload).encode()

    def _tag(self, groups, auth, body, method):
        self._can_write(auth)
        repo = self._repo(groups["repo"], auth)
        oid = repo.resolve(unquote(groups["rev"]))
        if oid is None:
            raise HubError(404, f"Invalid rev id: {groups['rev']}", code="RevisionNotFound")
        tag = json.loads(body)["tag"]
        if tag in repo.tags or tag in repo.branches:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = oid
        return 200, {}, b"{}"

    def _delete_tag(self, groups, auth, body, method):
        self._can_write(auth)
        repo = self._repo(groups["repo"], auth)
        tag = unquote(groups["tag"])
        if tag not in repo.tags:
            raise HubError(404, f"Tag {tag} not found", code="RevisionNotFound")
        del repo.tags[tag]
        return 200, {}, b"{}"

    def _resolve(self, groups, auth, body, method):
        repo = self._repo(groups["repo"], auth)
        rev = unquote(groups["rev"])
        oid = repo.resolve(rev)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        path = unquote(groups["path"])
        data = repo.commits[oid].files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", code="EntryNotFound", commit=oid)
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        }
        return 200, headers, data if method == "GET" else b""


def _make_handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = hub.handle(self.command, self.path, self.headers, body)
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean; `hub.requests` records every request

    return Handler
