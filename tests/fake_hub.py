"""A local stand-in for the Hugging Face Hub: the HTTP endpoints that huggingface_hub, transformers and
datasets call to push, list and download model and dataset repos.

Repos live on disk under `root` as git-like history: content-addressed blobs, one JSON file per commit
(parent, message, date and the full file table), and branch refs. Commit ids are the sha1 of the commit
record, so ids are real 40-hex ids and every revision stays loadable. Point the clients at it with
`HF_ENDPOINT=<FakeHub.url>`, any `HF_TOKEN` and `HF_HUB_DISABLE_XET=1` (this server speaks the plain LFS
protocol, not Xet), set before huggingface_hub is imported.

Only the behaviour the clients rely on is implemented (found by reading huggingface_hub's hf_api.py,
_commit_api.py, lfs.py and file_download.py): repo create/info, whoami, preupload, paths-info, tree,
refs, commits, branch creation, validate-yaml, the LFS batch API with upload and verify, the NDJSON
commit endpoint, and `resolve` (GET and HEAD, with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`,
`X-Linked-Size`, Range) with the `X-Error-Code` 404s the clients map to their exceptions.

`FakeHub.fail_next(kind)` makes the next request of a kind ("commit", "lfs_upload") fail, to test that an
interrupted push leaves the repo at its previous commit.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
ORGS = ("org",)
# Stored as LFS like the Hub's default .gitattributes: weights, data shards, pictures; or anything big/binary.
LFS_SUFFIXES = (".safetensors", ".parquet", ".arrow", ".png", ".jpg", ".bin", ".pt", ".pth", ".pkl", ".h5")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
REPO_TYPES = {"models": "model", "datasets": "dataset"}
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
SHA1 = re.compile(r"[0-9a-f]{40}")


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An error response: status, message and the `X-Error-Code` header huggingface_hub dispatches on."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


@dataclass(frozen=True)
class Repo:
    kind: str  # "model" or "dataset"
    repo_id: str

    @property
    def url_prefix(self) -> str:
        return "" if self.kind == "model" else "datasets/"


class FakeHub:
    """The repos on disk, and the HTTP server in front of them (started by `start()`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.failures: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.server_errors: list[str] = []
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ server
    def start(self) -> str:
        handler = type("Handler", (HubRequestHandler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def fail_next(self, kind: str, times: int = 1) -> None:
        """Fail the next `times` requests of `kind`: "commit" (HTTP 500) or "lfs_upload" (HTTP 403)."""
        if kind not in ("commit", "lfs_upload"):
            raise ValueError(f"unknown failure kind {kind!r}")
        self.failures[kind] = times

    def _should_fail(self, kind: str) -> bool:
        with self.lock:
            left = self.failures.get(kind, 0)
            if left:
                self.failures[kind] = left - 1
            return left > 0

    # ------------------------------------------------------------------ storage
    def _dir(self, repo: Repo) -> Path:
        return self.root / f"{repo.kind}s" / repo.repo_id

    def exists(self, repo: Repo) -> bool:
        return (self._dir(repo) / "refs.json").is_file()

    def _require(self, repo: Repo) -> Path:
        if not self.exists(repo):
            raise HubError(404, f"Repository not found: {repo.kind} {repo.repo_id}", "RepoNotFound")
        return self._dir(repo)

    def refs(self, repo: Repo) -> dict[str, str]:
        return json.loads((self._require(repo) / "refs.json").read_text())

    def _write_refs(self, repo: Repo, refs: dict[str, str]) -> None:
        (self._dir(repo) / "refs.json").write_text(json.dumps(refs, indent=1))

    def commit_record(self, repo: Repo, commit_id: str) -> dict[str, Any]:
        return json.loads((self._dir(repo) / "commits" / f"{commit_id}.json").read_text())

    def resolve(self, repo: Repo, revision: str) -> str:
        """A branch name or a (full) commit id -> the commit id."""
        refs = self.refs(repo)
        revision = unquote(revision)
        if revision in refs:
            return refs[revision]
        if SHA1.fullmatch(revision) and (self._dir(repo) / "commits" / f"{revision}.json").is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files(self, repo: Repo, revision: str = "main") -> dict[str, dict[str, Any]]:
        """path -> {"blob", "size", "oid", "lfs"} at a revision."""
        return self.commit_record(repo, self.resolve(repo, revision))["files"]

    def blob(self, repo: Repo, key: str) -> bytes:
        return (self._dir(repo) / "blobs" / key).read_bytes()

    def _store_blob(self, repo: Repo, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._dir(repo) / "blobs" / key
        if not path.exists():
            path.write_bytes(data)
        return key

    def create_repo(self, repo: Repo, private: bool) -> bool:
        """Create a repo with the Hub's initial commit (a .gitattributes); False if it already exists."""
        with self.lock:
            if self.exists(repo):
                return False
            base = self._dir(repo)
            for sub in ("blobs", "commits", "lfs"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            (base / "settings.json").write_text(json.dumps({"private": bool(private)}))
            self._write_refs(repo, {})
            files = {".gitattributes": self._file_entry(repo, GITATTRIBUTES.encode(), lfs=False)}
            commit_id = self._write_commit(repo, None, files, "initial commit", "")
            self._write_refs(repo, {"main": commit_id})
            return True

    def _file_entry(self, repo: Repo, data: bytes, lfs: bool) -> dict[str, Any]:
        key = self._store_blob(repo, data)
        entry: dict[str, Any] = {"blob": key, "size": len(data), "oid": git_blob_id(data), "lfs": None}
        if lfs:
            pointer = lfs_pointer(key, len(data))
            entry.update(
                oid=git_blob_id(pointer), lfs={"sha256": key, "size": len(data), "pointer_size": len(pointer)}
            )
        return entry

    def _write_commit(
        self, repo: Repo, parent: str | None, files: dict[str, Any], title: str, message: str
    ) -> str:
        record = {
            "parent": parent,
            "title": title,
            "message": message,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "author": USER,
            "files": dict(sorted(files.items())),
        }
        commit_id = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        (self._dir(repo) / "commits" / f"{commit_id}.json").write_text(json.dumps(record, indent=1))
        return commit_id

    # ------------------------------------------------------------------ test helpers
    def has_repo(self, repo_id: str, kind: str = "model") -> bool:
        return self.exists(Repo(kind, repo_id))

    def is_private(self, repo_id: str, kind: str = "model") -> bool:
        return json.loads((self._dir(Repo(kind, repo_id)) / "settings.json").read_text())["private"]

    def head(self, repo_id: str, kind: str = "model", branch: str = "main") -> str:
        return self.refs(Repo(kind, repo_id))[branch]

    def history(self, repo_id: str, kind: str = "model", revision: str = "main") -> list[str]:
        """Commit ids from `revision` back to the initial commit."""
        repo = Repo(kind, repo_id)
        commit_id: str | None = self.resolve(repo, revision)
        ids = []
        while commit_id is not None:
            ids.append(commit_id)
            commit_id = self.commit_record(repo, commit_id)["parent"]
        return ids

    def read(self, repo_id: str, path: str, kind: str = "model", revision: str = "main") -> bytes:
        repo = Repo(kind, repo_id)
        return self.blob(repo, self.files(repo, revision)[path]["blob"])

    def list_files(self, repo_id: str, kind: str = "model", revision: str = "main") -> list[str]:
        return sorted(self.files(Repo(kind, repo_id), revision))

    # ------------------------------------------------------------------ API operations
    def commit(self, repo: Repo, branch: str, lines: list[dict[str, Any]]) -> str:
        """Apply an NDJSON commit payload to a branch; the branch moves only if every operation is valid."""
        with self.lock:
            refs = self.refs(repo)
            branch = unquote(branch)
            if branch not in refs:
                if SHA1.fullmatch(branch):
                    raise HubError(400, f"Cannot commit to a commit id ({branch}); name a branch")
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = refs[branch]
            files = dict(self.commit_record(repo, parent)["files"])
            header = next((line["value"] for line in lines if line["key"] == "header"), None)
            if header is None or not header.get("summary"):
                raise HubError(400, "The commit has no header (summary)")
            expected = header.get("parentCommit")
            if expected is not None and not parent.startswith(expected):
                raise HubError(412, f"Parent commit {expected} is not the head of {branch} ({parent})")
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"Unsupported encoding for {value['path']}")
                    files[value["path"]] = self._file_entry(
                        repo, base64.b64decode(value["content"]), lfs=False
                    )
                elif key == "lfsFile":
                    stored = self._dir(repo) / "lfs" / value["oid"]
                    if not stored.is_file():
                        raise HubError(
                            422, f"LFS object {value['oid']} of {value['path']} was never uploaded"
                        )
                    files[value["path"]] = self._file_entry(repo, stored.read_bytes(), lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(
                            404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound"
                        )
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                elif key != "header":
                    raise HubError(400, f"Unknown commit operation {key!r}")
            commit_id = self._write_commit(
                repo, parent, files, header["summary"], header.get("description", "")
            )
            refs[branch] = commit_id
            self._write_refs(repo, refs)
            return commit_id

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        with self.lock:
            refs = self.refs(repo)
            if branch in refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            refs[branch] = self.resolve(repo, starting_point or "main")
            self._write_refs(repo, refs)

    def path_info(self, repo: Repo, revision: str, path: str, expand: bool = False) -> dict[str, Any] | None:
        """The Hub's JSON description of a file or folder at a revision, or None if it does not exist."""
        commit_id = self.resolve(repo, revision)
        files = self.commit_record(repo, commit_id)["files"]
        if path in files:
            entry = files[path]
            info: dict[str, Any] = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
            if entry["lfs"] is not None:
                lfs = entry["lfs"]
                info["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointer_size"]}
            if expand:
                info["lastCommit"] = self._last_commit(repo, commit_id)
            return info
        prefix = path.rstrip("/") + "/"
        if path == "" or any(p.startswith(prefix) for p in files):
            inner = sorted((p, files[p]["oid"]) for p in files if path == "" or p.startswith(prefix))
            return {
                "type": "directory",
                "path": path,
                "oid": hashlib.sha1(json.dumps(inner).encode()).hexdigest(),
            }
        return None

    def _last_commit(self, repo: Repo, commit_id: str) -> dict[str, Any]:
        record = self.commit_record(repo, commit_id)
        return {"id": commit_id, "title": record["title"], "date": record["date"]}

    def tree(
        self, repo: Repo, revision: str, path: str, recursive: bool, expand: bool
    ) -> list[dict[str, Any]]:
        files = self.files(repo, revision)
        prefix = path.rstrip("/") + "/" if path else ""
        if path and path not in files and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        children: set[str] = set()
        for file in files:
            if not file.startswith(prefix):
                continue
            parts = file[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, depth + 1):
                children.add(prefix + "/".join(parts[:i]))
        return [self.path_info(repo, revision, child, expand) for child in sorted(children)]  # type: ignore[misc]

    def repo_info(self, repo: Repo, revision: str) -> dict[str, Any]:
        commit_id = self.resolve(repo, revision)
        record = self.commit_record(repo, commit_id)
        settings = json.loads((self._dir(repo) / "settings.json").read_text())
        siblings = []
        for path, entry in record["files"].items():
            sibling: dict[str, Any] = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if entry["lfs"] is not None:
                lfs = entry["lfs"]
                sibling["lfs"] = {
                    "sha256": lfs["sha256"],
                    "size": lfs["size"],
                    "pointerSize": lfs["pointer_size"],
                }
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit_id,
            "lastModified": record["date"],
            "private": settings["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if "README.md" in record["files"]:
            card = self.blob(repo, record["files"]["README.md"]["blob"]).decode()
            metadata = front_matter(card)
            if metadata:
                info["cardData"] = metadata
        return info

    def commits(self, repo: Repo, revision: str) -> list[dict[str, Any]]:
        result = []
        for commit_id in self.history(repo.repo_id, repo.kind, revision):
            record = self.commit_record(repo, commit_id)
            result.append(
                {
                    "id": commit_id,
                    "title": record["title"],
                    "message": record["message"],
                    "authors": [{"user": record["author"]}],
                    "date": record["date"],
                }
            )
        return result

    def preupload(self, repo: Repo, revision: str, files: list[dict[str, Any]]) -> dict[str, Any]:
        commit_id = self.resolve(repo, revision)
        existing = self.commit_record(repo, commit_id)["files"]
        answer = []
        for file in files:
            sample = base64.b64decode(file["sample"])
            lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] >= LFS_MIN_SIZE or b"\0" in sample
            entry = existing.get(file["path"])
            oid = None
            if entry is not None:  # the client skips unchanged files by comparing this oid with its own
                oid = entry["lfs"]["sha256"] if entry["lfs"] is not None else entry["oid"]
            answer.append(
                {
                    "path": file["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return {"files": answer, "commitOid": commit_id}

    def lfs_batch(self, repo: Repo, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported")
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self._dir(repo) / "lfs" / obj["oid"]).is_file():
                target = f"{self.url}/_lfs/{repo.kind}/{repo.repo_id}/{obj['oid']}"
                entry["actions"] = {
                    "upload": {"href": target, "header": {}},
                    "verify": {"href": f"{target}/verify", "header": {}},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def lfs_store(self, repo: Repo, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its sha256 {oid}")
        (self._dir(repo) / "lfs" / oid).write_bytes(data)

    def lfs_verify(self, repo: Repo, oid: str, size: int) -> None:
        stored = self._dir(repo) / "lfs" / oid
        if not stored.is_file() or stored.stat().st_size != size:
            raise HubError(404, f"LFS object {oid} not found")


def front_matter(card: str) -> dict[str, Any] | None:
    """The YAML metadata block of a README.md (between the leading `---` lines), or None."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", card, flags=re.S)
    return yaml.safe_load(match.group(1)) if match else None


# ---------------------------------------------------------------------------- HTTP
REPO = rf"(?P<repo>{NAME}/{NAME})"
API_ROUTES = [
    ("GET", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}(/revision/(?P<rev>[^/]+))?$"), "info"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    (
        "GET",
        re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/tree/(?P<rev>[^/]+)(/(?P<path>.*))?$"),
        "tree",
    ),
    ("GET", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/commits/(?P<rev>[^/]+)$"), "commits"),
    ("GET", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/refs$"), "refs"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/branch/(?P<rev>[^/]+)$"), "branch"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets)/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/(?P<prefix>datasets/)?{REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(rf"^/_lfs/(?P<kind>model|dataset)/{REPO}/(?P<oid>[0-9a-f]{{64}})$"), "lfs_upload"),
    (
        "POST",
        re.compile(rf"^/_lfs/(?P<kind>model|dataset)/{REPO}/(?P<oid>[0-9a-f]{{64}})/verify$"),
        "lfs_verify",
    ),
    ("GET", re.compile(rf"^/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to `FakeHub`; `hub` is set on the subclass made by `FakeHub.start`."""

    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the per-request log lines, so test output stays clean."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -------------------------------------------------------------- plumbing
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.hub.requests.append((method, url.path))
        body = self._read_body()
        try:
            for route_method, pattern, name in API_ROUTES:
                match = pattern.match(url.path)
                if match and route_method == method:
                    getattr(self, f"route_{name}")(match.groupdict(), body, method)
                    return
            raise HubError(404, f"No route for {method} {url.path}")
        except HubError as err:
            self._error(err, method)
        except Exception as err:  # a bug of the fake: answer, and keep it for the test to report
            self.hub.server_errors.append(f"{method} {url.path}: {err!r}")
            self._error(HubError(500, f"FakeHub bug: {err!r}"), method)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, method: str = "GET"
    ) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, err: HubError, method: str) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers, method)

    @staticmethod
    def _repo(groups: dict[str, str]) -> Repo:
        if "type" in groups:
            kind = REPO_TYPES[groups["type"]]
        elif "kind" in groups:
            kind = groups["kind"]
        else:
            kind = "dataset" if groups.get("prefix") else "model"
        return Repo(kind, groups["repo"])

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    # -------------------------------------------------------------- routes
    def route_whoami(self, groups: dict, body: bytes, method: str) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"name": org, "type": "org", "roleInOrg": "write"} for org in ORGS]
        token = {"displayName": "fake", "role": "write"}
        self._json(
            {
                "type": "user",
                "name": USER,
                "fullname": "Test User",
                "orgs": orgs,
                "auth": {"accessToken": token},
            }
        )

    def route_create(self, groups: dict, body: bytes, method: str) -> None:
        payload = json.loads(body)
        kind = payload.get("type") or "model"
        repo = Repo(kind, f"{payload.get('organization') or USER}/{payload['name']}")
        private = payload.get("private", payload.get("visibility") == "private")
        created = self.hub.create_repo(repo, bool(private))
        url = f"{self.hub.url}/{repo.url_prefix}{repo.repo_id}"
        if not created:
            self._json({"error": "You already created this repo", "url": url}, status=409)
            return
        self._json({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    def route_info(self, groups: dict, body: bytes, method: str) -> None:
        self._json(self.hub.repo_info(self._repo(groups), groups.get("rev") or "main"))

    def route_preupload(self, groups: dict, body: bytes, method: str) -> None:
        self._json(self.hub.preupload(self._repo(groups), groups["rev"], json.loads(body)["files"]))

    def route_paths_info(self, groups: dict, body: bytes, method: str) -> None:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(body)
            paths, expand = form["paths"], bool(form.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[0].lower() == "true"
        repo = self._repo(groups)
        infos = [self.hub.path_info(repo, groups["rev"], path, expand) for path in paths]
        self._json([info for info in infos if info is not None])

    def route_tree(self, groups: dict, body: bytes, method: str) -> None:
        path = unquote(groups.get("path") or "")
        entries = self.hub.tree(
            self._repo(groups), groups["rev"], path, self._flag("recursive"), self._flag("expand")
        )
        self._json(entries)

    def route_commits(self, groups: dict, body: bytes, method: str) -> None:
        self._json(self.hub.commits(self._repo(groups), groups["rev"]))

    def route_refs(self, groups: dict, body: bytes, method: str) -> None:
        refs = self.hub.refs(self._repo(groups))
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in refs.items()
        ]
        self._json({"branches": branches, "tags": [], "converts": []})

    def route_branch(self, groups: dict, body: bytes, method: str) -> None:
        payload = json.loads(body) if body else {}
        self.hub.create_branch(self._repo(groups), unquote(groups["rev"]), payload.get("startingPoint"))
        self._json({})

    def route_validate_yaml(self, groups: dict, body: bytes, method: str) -> None:
        content = json.loads(body)["content"]
        try:
            metadata = front_matter(content)
        except yaml.YAMLError as err:
            self._json({"errors": [{"message": f"Invalid YAML: {err}"}]}, status=400)
            return
        if metadata is not None and not isinstance(metadata, dict):
            self._json({"errors": [{"message": "The metadata must be a mapping"}]}, status=400)
            return
        self._json({"warnings": [] if metadata else [{"message": "Empty metadata"}]})

    def route_commit(self, groups: dict, body: bytes, method: str) -> None:
        if self._flag("create_pr"):
            raise HubError(400, "Pull requests are not supported by the fake Hub")
        if self.hub._should_fail("commit"):
            raise HubError(500, "Internal Error (injected by FakeHub.fail_next('commit'))")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        repo = self._repo(groups)
        commit_id = self.hub.commit(repo, groups["rev"], lines)
        url = f"{self.hub.url}/{repo.url_prefix}{repo.repo_id}/commit/{commit_id}"
        self._json({"success": True, "commitOid": commit_id, "commitUrl": url, "pullRequestUrl": None})

    def route_lfs_batch(self, groups: dict, body: bytes, method: str) -> None:
        repo = self._repo(groups)
        self.hub._require(repo)
        answer = self.hub.lfs_batch(repo, json.loads(body))
        self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/vnd.git-lfs+json"})

    def route_lfs_upload(self, groups: dict, body: bytes, method: str) -> None:
        if self.hub._should_fail("lfs_upload"):
            raise HubError(403, "Request has expired (injected by FakeHub.fail_next('lfs_upload'))")
        self.hub.lfs_store(self._repo(groups), groups["oid"], body)
        self._send(200, headers={"ETag": f'"{groups["oid"]}"'})

    def route_lfs_verify(self, groups: dict, body: bytes, method: str) -> None:
        payload = json.loads(body)
        self.hub.lfs_verify(self._repo(groups), payload["oid"], payload["size"])
        self._json({})

    def route_resolve(self, groups: dict, body: bytes, method: str) -> None:
        repo = self._repo(groups)
        commit_id = self.hub.resolve(repo, groups["rev"])
        path = unquote(groups["path"])
        entry = self.hub.commit_record(repo, commit_id)["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit_id)
        data = self.hub.blob(repo, entry["blob"])
        headers = {
            "X-Repo-Commit": commit_id,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry["lfs"] is not None:
            headers.update(
                {"ETag": f'"{entry["lfs"]["sha256"]}"', "X-Linked-Etag": f'"{entry["lfs"]["sha256"]}"'}
            )
            headers["X-Linked-Size"] = str(entry["size"])
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        status = HTTPStatus.OK
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if byte_range and method == "GET":
            start_text, end_text = byte_range.groups()
            if start_text == "":  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(end_text)), len(data) - 1
            else:
                start, end = int(start_text), min(int(end_text or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], HTTPStatus.PARTIAL_CONTENT
        self._send(status, data, headers, method)
