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
``POST /{repo}.git/info/lfs/objects/batch``           ``create_commit`` (LFS upload plan)
``POST /{repo}.git/info/lfs/objects/verify``          ``create_commit`` (LFS verify)
``PUT  <storage>/upload/{oid}``                       LFS upload (``lfs.py``, basic transfer)
``GET  <storage>/objects/{oid}``                      LFS download (the CDN redirect target)
====================================================  =================================

Files are stored the way the Hub stores them. Preupload answers ``uploadMode: lfs`` for paths
that ``.gitattributes`` sends to LFS (``*.safetensors``), for binary samples (a NUL byte in the
first 512 bytes) and for files of 10 MiB or more; everything else (JSON, the card) is
``regular`` and travels base64 in the commit. An LFS file takes the git-lfs batch API: the
batch endpoint answers an ``upload`` action pointing to a separate storage server (another
origin, as S3 is) and a ``verify`` action; the client PUTs the bytes there, the verify call
checks size and sha256, and only a verified object may be named by an ``lfsFile`` line of the
commit. On download, ``resolve`` answers an LFS file with a 302 to the storage server carrying
``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, as the Hub's CDN redirect does.
``lfs_calls`` counts batch, upload, verify and storage download requests, so tests can assert
that the LFS path was taken. (huggingface_hub uses Xet instead when ``hf_xet`` is installed;
the tests set ``HF_HUB_DISABLE_XET``.) Repos keep real commit
history (each commit a full snapshot), tags are immutable (409 on a second create), a commit
whose ``parentCommit`` is not the branch head is refused (412), and the error headers
(``X-Error-Code``, ``X-Error-Message``) are the ones `hf_raise_for_status` maps to typed errors.

Tests can require a write token, make every request fail with a status, alter a stored file
behind the client's back (`tamper`), and read the request log. Any other endpoint answers 404
and is recorded in `unhandled`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from collections import Counter
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
    ("POST", re.compile(rf"^/{REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("POST", re.compile(rf"^/{REPO}\.git/info/lfs/objects/verify$"), "lfs_verify"),
]
STORAGE_ROUTES = [
    ("PUT", re.compile(r"^/upload/(?P<oid>[0-9a-f]{64})$"), "storage_put"),
    ("GET", re.compile(r"^/objects/(?P<oid>[0-9a-f]{64})$"), "storage_get"),
]
LFS_MIN_BYTES = 10 * 1024 * 1024
"""The Hub stores files of this size or more in LFS whatever their type."""
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, as `git hash-object` computes it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)
    """Paths stored in LFS (their bytes live in `files` too, for the tests' convenience)."""


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
        requests: ``(method, path)`` of every request, in order (storage requests too).
        unhandled: requests no route matched.
        lfs_calls: how many LFS ``batch``, ``upload``, ``verify`` and ``download`` requests
            were served.
        corrupt_uploads: flip a byte of every LFS upload as it is stored (a damaged transfer),
            so the verify step must catch it.
    """

    def __init__(self, write_token: str | None = None) -> None:
        self.write_token = write_token
        self.fail_status: int | None = None
        self.echo_auth = False
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.lfs_calls: Counter[str] = Counter()
        self.corrupt_uploads = False
        self._uploaded: dict[str, bytes] = {}  # LFS objects PUT to storage, by sha256
        self._verified: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, self.handle))
        # LFS storage on another origin (another port), as the Hub's S3 and CDN are.
        self._storage = ThreadingHTTPServer(
            ("127.0.0.1", 0), _make_handler(self, self.handle_storage)
        )
        self._threads = []
        for server in (self._server, self._storage):
            server.daemon_threads = True
            self._threads.append(threading.Thread(target=server.serve_forever, daemon=True))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def storage_url(self) -> str:
        host, port = self._storage.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandInHub:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in (self._server, self._storage):
            server.shutdown()
            server.server_close()

    # ---- test helpers ---------------------------------------------------------------------
    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(rev)].files)

    def lfs_files(self, repo_id: str, rev: str = "main") -> set[str]:
        """The paths of `rev` stored in LFS."""
        repo = self.repos[repo_id]
        return set(repo.commits[repo.resolve(rev)].lfs)

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
        return self._dispatch(ROUTES, method, raw_path, headers, body, check_auth=True)

    def handle_storage(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, dict, bytes]:
        """The storage origin: pre-signed URLs, so no token is needed (or checked)."""
        return self._dispatch(STORAGE_ROUTES, method, raw_path, headers, body, check_auth=False)

    def _dispatch(
        self, routes: list, method: str, raw_path: str, headers: Any, body: bytes, check_auth: bool
    ) -> tuple[int, dict, bytes]:
        path = urlsplit(raw_path).path
        with self._lock:
            self.requests.append((method, path))
        auth = headers.get("Authorization") if check_auth else None
        try:
            if self.fail_status is not None:
                raise HubError(self.fail_status, f"stand-in failure {self.fail_status}")
            if auth is not None and (
                self.write_token is None or auth != f"Bearer {self.write_token}"
            ):
                raise HubError(401, "Invalid credentials in Authorization header")
            for verb, pattern, name in routes:
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

    def _new_commit(
        self, repo: Repo, parent: str | None, message: str, files: dict, lfs: set | None = None
    ) -> str:
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(repo.commits)}".encode())
        for name in sorted(files):
            digest.update(f"{name}\0{git_blob_sha1(files[name])}\n".encode())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, parent, message, files, set(lfs or ()))
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
        attributes = existing.get(".gitattributes", b"").decode("utf-8", "replace")
        lfs_patterns = [
            line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line.split()
        ]
        files = []
        for item in json.loads(body)["files"]:
            old = existing.get(item["path"])
            sample = base64.b64decode(item.get("sample", ""))
            name = item["path"].rsplit("/", 1)[-1]
            lfs = (
                any(fnmatch.fnmatch(name, pattern) for pattern in lfs_patterns)
                or b"\0" in sample[:512]
                or int(item.get("size", 0)) >= LFS_MIN_BYTES
            )
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(old) if old is not None else None,
                }
            )
        return 200, {}, json.dumps({"files": files}).encode()

    def _lfs_batch(self, groups, auth, body, method):
        self._can_write(auth)
        repo_id = groups["repo"]
        self._repo(repo_id, auth)
        self.lfs_calls["batch"] += 1
        payload = json.loads(body)
        if payload.get("operation") != "upload" or payload.get("hash_algo") != "sha256":
            raise HubError(422, "the stand-in's LFS batch API only takes sha256 uploads")
        if "basic" not in (payload.get("transfers") or ["basic"]):
            raise HubError(422, "the stand-in offers the basic transfer only")
        stored = {
            sha256(data)
            for repo in self.repos.values()
            for commit in repo.commits.values()
            for path, data in commit.files.items()
            if path in commit.lfs
        }
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if not re.fullmatch(r"[0-9a-f]{64}", str(oid)) or not isinstance(size, int):
                objects.append(
                    {"oid": str(oid), "size": 0, "error": {"code": 422, "message": "bad oid"}}
                )
                continue
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in stored:  # already stored objects get no actions: nothing to upload
                entry["actions"] = {
                    "upload": {"href": f"{self.storage_url}/upload/{oid}", "expires_in": 900},
                    "verify": {
                        "href": f"{self.url}/{repo_id}.git/info/lfs/objects/verify",
                        "header": {"Authorization": auth} if auth else {},
                    },
                }
            objects.append(entry)
        return 200, {}, json.dumps({"transfer": "basic", "objects": objects}).encode()

    def _storage_put(self, groups, auth, body, method):
        self.lfs_calls["upload"] += 1
        if self.corrupt_uploads and body:
            body = bytes([body[0] ^ 0x01]) + body[1:]
        self._uploaded[groups["oid"]] = body
        return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""

    def _lfs_verify(self, groups, auth, body, method):
        self._can_write(auth)
        self._repo(groups["repo"], auth)
        self.lfs_calls["verify"] += 1
        payload = json.loads(body)
        data = self._uploaded.get(payload.get("oid"))
        if data is None or sha256(data) != payload["oid"] or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded intact")
        self._verified.add(payload["oid"])
        return 200, {}, b"{}"

    def _storage_get(self, groups, auth, body, method):
        self.lfs_calls["download"] += 1
        oid = groups["oid"]
        for repo in self.repos.values():
            for commit in repo.commits.values():
                for path, data in commit.files.items():
                    if path in commit.lfs and sha256(data) == oid:
                        headers = {"Content-Type": "application/octet-stream"}
                        headers["Content-Length"] = str(len(data))
                        return 200, headers, data
        raise HubError(404, "NoSuchKey")

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
        lfs = set(repo.commits[head].lfs)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "regular files must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo") != "sha256" or oid not in self._verified:
                    raise HubError(
                        422,
                        f"LFS object {oid} for {value.get('path')} was never uploaded and verified",
                    )
                data = self._uploaded[oid]
                if len(data) != value.get("size"):
                    raise HubError(422, f"LFS object {oid} has another size")
                files[value["path"]] = data
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                lfs.discard(value["path"])
            else:
                raise HubError(400, f"the stand-in does not implement {key}")
        oid = self._new_commit(repo, head, header["summary"], files, lfs)
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
        if path in repo.commits[oid].lfs:
            # The Hub's answer for an LFS file: a redirect to storage, the file's size and sha256
            # in X-Linked-* headers, the pointer file's git oid as ETag.
            digest = sha256(data)
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\n"
                f"size {len(data)}\n"
            ).encode()
            headers = {
                "X-Repo-Commit": oid,
                "ETag": f'"{git_blob_sha1(pointer)}"',
                "X-Linked-Etag": f'"{digest}"',
                "X-Linked-Size": str(len(data)),
                "Location": f"{self.storage_url}/objects/{digest}",
            }
            return 302, headers, b""
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        }
        return 200, headers, data if method == "GET" else b""


def _make_handler(hub: StandInHub, handle: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
            status, headers, payload = handle(self.command, self.path, self.headers, body)
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _read_chunked(self) -> bytes:
            """A body sent with ``Transfer-Encoding: chunked`` (streamed uploads)."""
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the final CRLF
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean; `hub.requests` records every request

    return Handler
