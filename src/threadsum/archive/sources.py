"""Archive inputs: the paths on the command line -> read units, each read by ``read_source``.

No reader lives here. A path is dispatched by :func:`threadsum.data.readers.detect_format` and read
by :func:`threadsum.data.readers.read_source`, exactly as ``prepare`` reads ``data.source``, so a
format the readers learn is read here too. An archive folder may mix formats, which ``prepare``'s
folder rule does not read together: the folder is read as the readers see it (its detected format),
and each file the readers left unread (a ``unsupported_file`` reject) is read on its own when
``detect_format`` names a format for it. Files no reader takes stay file rejects with the readers'
reason and message.

An input may also be ``s3://bucket/prefix`` (the ``cloud`` extra, boto3): every object under the
prefix (ListObjectsV2, paginated; hidden keys and folder markers aside, as hidden files are in a
folder) is one read unit, read by :func:`threadsum.data.readers.read_jsonl_stream` as a stream
(``GetObject``, at most a chunk of it in memory at a time), so an object gets the same rejects and
warnings as the same bytes in a local ``.jsonl`` file. Only JSONL threads are read from S3: an object
whose key does not end in ``.jsonl`` is an ``unsupported_file`` reject. The prefix names a folder:
``s3://b/mail`` and ``s3://b/mail/`` both read the objects under ``mail/``; a prefix that is one
object's whole key reads that object. Region and credentials come from boto3's usual chain
(environment, ``~/.aws``, an instance or task role); ``AWS_ENDPOINT_URL`` points it at another
S3-compatible store.
"""
from __future__ import annotations

import hashlib
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterator, Optional, Union

from threadsum.cloud.sagemaker import parse_s3_uri
from threadsum.data.readers import (
    R_UNSUPPORTED_FILE,
    DataError,
    ReadResult,
    detect_format,
    read_jsonl_stream,
    read_source,
)
from threadsum.deps import require
from threadsum.errors import UserError

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing an input file
S3_SCHEME = "s3://"
S3_EXTRA = "cloud"
"""The extra that installs boto3 for ``s3://`` inputs (``pip install 'threadsum[cloud]'``)."""


class ArchiveError(UserError):
    """An archive job cannot start or go on as asked; the message names the problem and the fix (exit 2)."""


@dataclass(frozen=True)
class ReadUnit:
    """One call of ``read_source``: a file or folder and the format ``detect_format`` named for it."""

    path: Path
    fmt: str

    @property
    def source(self) -> str:
        """The unit's absolute path: the ``source`` of each of its threads in results and rejects."""
        return str(self.path.resolve())


@dataclass(frozen=True)
class S3Object:
    """One object listed under an ``s3://`` input: a read unit of its own.

    Its content is identified by ``etag`` and ``size`` (from the listing), not by a sha256 of its
    bytes: S3 gives every write of an object a new ETag (the MD5 of the bytes for a plain upload, an
    opaque id for multipart or KMS-encrypted ones), so a changed object always shows on a rerun, at
    no cost beyond the listing, where a sha256 would need the object read once more. A rewrite with the
    same bytes may show as changed too (a multipart ETag depends on the part size): the job then asks
    for ``--restart`` rather than miss a change. Each read sends ``IfMatch`` with this ETag, so the bytes
    read are the ones the manifest records (an object overwritten since the listing is refused).
    """

    bucket: str
    key: str
    size: int
    """Bytes, from the listing."""
    etag: str
    """The ETag from the listing, quotes included, as S3 sends it."""

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @property
    def source(self) -> str:
        """The object's URI: the ``source`` of each of its threads in results and rejects."""
        return self.uri

    @property
    def name(self) -> str:
        """The last part of the key (what messages call the file)."""
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class S3Input:
    """An ``s3://bucket/prefix`` input and the objects listed under it (:func:`list_s3`)."""

    uri: str
    """``s3://bucket/prefix`` without a trailing slash (what the manifest records)."""
    objects: tuple[S3Object, ...]


Input = Union[Path, S3Input]
"""One input of an archive job: a local file or folder, or a listed S3 prefix."""


@dataclass
class ReadArchive:
    """What reading the inputs gave: each unit with its ``ReadResult``, the file rejects of paths no
    reader takes, and every input file and S3 object (what the manifest records)."""

    units: list[tuple[Union[ReadUnit, S3Object], ReadResult]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    objects: list[S3Object] = field(default_factory=list)

    @property
    def n_inputs(self) -> int:
        """Input files and S3 objects."""
        return len(self.files) + len(self.objects)


def _visible_files(folder: Path) -> list[Path]:
    """Files under ``folder``, hidden files and folders aside (the readers' rule for leftovers)."""
    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def _file_reject(path: Union[Path, str], detail: str) -> dict[str, Any]:
    source = str(path.resolve()) if isinstance(path, Path) else path
    return {"level": "file", "reason": R_UNSUPPORTED_FILE, "detail": detail, "source": source, "line": None,
            "thread_id": None}


def _unit_or_reject(path: Path) -> tuple[Optional[ReadUnit], Optional[dict[str, Any]]]:
    try:
        return ReadUnit(path, detect_format(path)), None
    except DataError as exc:
        return None, _file_reject(path, str(exc))


def is_s3(raw: str) -> bool:
    """Whether an input names an S3 prefix (``s3://``)."""
    return raw.startswith(S3_SCHEME)


def input_name(raw: str) -> str:
    """What the manifest records for an input: the absolute path, or the ``s3://`` URI without a
    trailing slash (raises what :func:`threadsum.cloud.sagemaker.parse_s3_uri` raises for a bad URI)."""
    if is_s3(raw):
        bucket, prefix = parse_s3_uri(raw, "INPUT")
        return f"{S3_SCHEME}{bucket}/{prefix}" if prefix else f"{S3_SCHEME}{bucket}"
    return str(Path(raw).expanduser().resolve())


def check_inputs(inputs: list[str], s3_client: Any = None) -> list[Input]:
    """The inputs as paths and listed S3 prefixes (:func:`list_s3`); raises ArchiveError naming the
    first path that does not exist or the first S3 prefix that cannot be listed or holds no object.

    ``s3_client``: a boto3 S3 client (default: :func:`make_s3_client` when an input is ``s3://``).
    Raises:
        ArchiveError: as above. MissingExtraError: an ``s3://`` input without boto3 (exit 2).
        LaunchValidationError: an ``s3://`` input that is not a valid S3 URI (exit 2).
    """
    paths: list[Input] = []
    for raw in inputs:
        if is_s3(raw):
            s3_client = s3_client or make_s3_client()
            paths.append(list_s3(raw, s3_client))
            continue
        p = Path(raw).expanduser()
        if not p.exists():
            raise ArchiveError(f"input '{raw}' does not exist; pass .mbox/.eml/.jsonl files, Kaggle CSV/JSON "
                               f"files, folders holding them or s3://bucket/prefix of .jsonl objects")
        paths.append(p)
    return paths


def read_archive(inputs: list[Input], max_body_chars: int, s3_client: Any = None) -> ReadArchive:
    """Read every input (see the module docstring); never raises for bad content.

    Args:
        inputs: existing files and folders and listed S3 prefixes (:func:`check_inputs`).
        max_body_chars: ``data.max_body_chars`` of the model's config (bodies are cut as in training).
        s3_client: a boto3 S3 client (default: :func:`make_s3_client` when an input is an S3 prefix).
    Raises:
        ArchiveError: an S3 object cannot be read (access denied, changed since it was listed, the
            connection failed); the message names the object and the fix.
    """
    out = ReadArchive()
    seen: set[Path] = set()
    seen_objects: set[str] = set()

    def read(unit: ReadUnit) -> ReadResult:
        result = read_source(unit.path, unit.fmt, max_body_chars=max_body_chars, require_summary=False)
        out.units.append((unit, result))
        return result

    for p in inputs:
        if isinstance(p, S3Input):
            s3_client = s3_client or make_s3_client()
            for obj in p.objects:
                if obj.uri not in seen_objects:
                    seen_objects.add(obj.uri)
                    out.objects.append(obj)
                    _read_object(obj, s3_client, max_body_chars, out)
            continue
        out.files.extend(f for f in ([p] if p.is_file() else _visible_files(p)) if f.resolve() not in seen)
        seen.update(f.resolve() for f in out.files)
        unit, reject = _unit_or_reject(p)
        if unit is None and p.is_file():
            out.rejects.append(reject)
            continue
        if unit is None:  # a folder with no format of its own: each file is judged alone
            leftovers = _visible_files(p)
        else:
            result = read(unit)
            out.files.extend(f for f in result.files if f.resolve() not in seen)  # a Kaggle file's sibling
            seen.update(f.resolve() for f in result.files)
            leftovers = [Path(r["source"]) for r in result.rejects
                         if r["level"] == "file" and r["reason"] == R_UNSUPPORTED_FILE and r.get("source")]
            if leftovers:  # read on their own below, or rejected again there with their own reason
                drop = {str(f) for f in leftovers}
                result.rejects[:] = [r for r in result.rejects
                                     if not (r["level"] == "file" and r["reason"] == R_UNSUPPORTED_FILE
                                             and r.get("source") in drop)]
                files = result.counts["files"]
                files["by_reason"][R_UNSUPPORTED_FILE] = files["by_reason"].get(R_UNSUPPORTED_FILE, 0) - len(drop)
                if not files["by_reason"][R_UNSUPPORTED_FILE]:
                    del files["by_reason"][R_UNSUPPORTED_FILE]
                files["rejected"] -= len(drop)
        for f in leftovers:
            sub, reject = _unit_or_reject(f)
            if sub is None:
                out.rejects.append(reject)
            else:
                read(sub)
    return out


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def input_hashes(files: list[Path], objects: list[S3Object] = ()) -> list[dict[str, Any]]:
    """The manifest's record of the inputs, sorted by ``path``: ``{path, bytes, sha256}`` per local file
    (absolute path) and ``{path, bytes, etag}`` per S3 object (its URI; see :class:`S3Object` for why
    the ETag). Two records of one path differ exactly when the input changed."""
    rows = [{"path": str(f.resolve()), "bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    rows += [{"path": o.uri, "bytes": o.size, "etag": o.etag} for o in objects]
    return sorted(rows, key=lambda r: r["path"])


# ------------------------------------------------------------------------------------------- S3
# permissions each S3 call needs, named in the message when S3 refuses it
_PERMISSION = {"list": "s3:ListBucket", "read": "s3:GetObject"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "TokenRefreshRequired"}


def make_s3_client() -> Any:
    """A boto3 S3 client from boto3's usual chain (region, credentials, ``AWS_ENDPOINT_URL``).

    Raises:
        MissingExtraError: boto3 is not installed (``pip install 'threadsum[cloud]'``).
    """
    require("boto3", S3_EXTRA)
    import boto3

    return boto3.session.Session().client("s3")


@contextmanager
def _s3_errors(action: str, uri: str, bucket: str) -> Iterator[None]:
    """Turn what boto3 raises for ``action`` (``list`` or ``read``) on ``uri`` into a one-line
    ArchiveError that names the fix; messages never hold credentials."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise ArchiveError(f"no AWS credentials found to {action} {uri}; configure them with `aws configure`, "
                           f"AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance role") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code, msg = str(err.get("Code", "error")), err.get("Message") or str(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            fix = f"bucket '{bucket}' does not exist; check the name in {uri}"
        elif code in _CREDENTIAL_CODES:
            fix = f"S3 refused the AWS credentials ({code}: {msg}); refresh them (`aws configure`, `aws sso login`)"
        elif code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            fix = (f"access denied to {action} {uri}: the credentials need {_PERMISSION[action]} on "
                   f"arn:aws:s3:::{bucket}" + ("" if action == "list" else "/*") + " (docs/archive.md)")
        elif code in ("PreconditionFailed", "412"):
            fix = f"{uri} changed while the job was reading it; run the command again"
        elif code in ("NoSuchKey", "404"):
            fix = f"{uri} was deleted while the job was reading it; run the command again"
        else:
            fix = f"cannot {action} {uri}: {code}: {msg}"
        raise ArchiveError(fix) from None
    except BotoCoreError as exc:  # no connection, a read timeout, a broken stream
        raise ArchiveError(f"cannot {action} {uri}: {exc}; check the network and AWS_ENDPOINT_URL, then run the "
                           f"command again (finished shards are kept)") from None


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_s3(raw: str, client: Any) -> S3Input:
    """The objects under ``s3://bucket/prefix`` (see the module docstring), in key order.

    Raises:
        LaunchValidationError: ``raw`` is not a valid S3 URI.
        ArchiveError: the bucket does not exist, access is denied, no credentials, or the prefix holds
            no object.
    """
    uri = input_name(raw)
    bucket, prefix = parse_s3_uri(raw, "INPUT")
    folder = f"{prefix}/" if prefix else ""
    objects: list[S3Object] = []
    with _s3_errors("list", uri, bucket):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
            for o in page.get("Contents", []):
                rel = o["Key"][len(folder):]
                if rel and not rel.endswith("/") and not _hidden(rel):
                    objects.append(S3Object(bucket, o["Key"], int(o["Size"]), o["ETag"]))
        if not objects and prefix:  # the prefix may be one object's key; it sorts first under itself
            first = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
            if first and first[0]["Key"] == prefix:
                objects.append(S3Object(bucket, prefix, int(first[0]["Size"]), first[0]["ETag"]))
    if not objects:
        raise ArchiveError(f"input '{uri}' holds no objects (hidden keys and folder markers aside); check the bucket "
                           f"and prefix with `aws s3 ls {uri}/`")
    return S3Input(uri, tuple(objects))


class _S3Stream:
    """A GetObject body as a binary stream whose failures are ArchiveErrors (:func:`_s3_errors`)."""

    def __init__(self, obj: S3Object, client: Any):
        self.obj = obj
        with _s3_errors("read", obj.uri, obj.bucket):
            self._body = client.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=obj.etag)["Body"]

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` < 0)."""
        with _s3_errors("read", self.obj.uri, self.obj.bucket):
            return self._body.read(None if n < 0 else n)

    def close(self) -> None:
        """Close the connection (a body not read to its end is dropped, not drained)."""
        self._body.close()


def _read_object(obj: S3Object, client: Any, max_body_chars: int, out: ReadArchive) -> None:
    """Read one S3 object into ``out``: a unit with its ``ReadResult``, or a file reject."""
    if not obj.key.lower().endswith(".jsonl"):
        out.rejects.append(_file_reject(obj.uri, f"'{obj.name}' was not read: s3:// inputs are read as JSONL threads "
                                                 f"(*.jsonl, one thread a line); copy other formats to a local "
                                                 f"folder and pass that"))
        return

    def open_bytes() -> ContextManager[_S3Stream]:
        return closing(_S3Stream(obj, client))

    out.units.append((obj, read_jsonl_stream(open_bytes, obj.uri, obj.name, max_body_chars, require_summary=False)))
