"""Sending to a DICOM peer: C-ECHO and C-STORE SCU with bounded retries and a per-instance status.

A failed association (peer down, rejected, aborted mid-transfer) is retried ``retries`` times with exponential
back-off; instances the peer answered are never sent twice. A per-instance failure status from the peer is final
and reported, not retried: it is the peer's verdict on that instance, not a network accident.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from vesalius.core.errors import InputError, NotDicomError, VesaliusError
from vesalius.gateway.scp import set_tcp_nodelay, validate_ae_title

__all__ = [
    "DicomPeer",
    "DicomPeerError",
    "InstanceResult",
    "SendReport",
    "associate",
    "echo",
    "send_instances",
]

LOGGER = logging.getLogger(__name__)
MAX_CONTEXTS = 128
"""An A-ASSOCIATE-RQ may propose at most 128 presentation contexts (DICOM PS3.8, odd IDs 1-255)."""
_PEER_PATTERN = re.compile(r"(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})")


class DicomPeerError(VesaliusError):
    """A DICOM peer could not be reached, refused the association or broke it off."""


@dataclass(frozen=True)
class DicomPeer:
    """A remote application entity: its AE title and where it listens."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            validate_ae_title(self.ae_title)
        except ValueError as error:
            raise InputError(f"DICOM peer {self}: {error}") from error
        if not 0 < self.port < 65536:
            raise InputError(f"DICOM peer {self}: port {self.port} is not in 1-65535")

    @classmethod
    def parse(cls, text: str) -> DicomPeer:
        """Read ``AE@host:port`` (an IPv6 host in brackets: ``AE@[::1]:104``)."""
        match = _PEER_PATTERN.fullmatch(text.strip())
        if match is None:
            raise InputError(f"DICOM peer {text!r}: expected AE@host:port, for example PACS@10.0.0.5:104")
        return cls(match["ae"].strip(), match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class InstanceResult:
    """The peer's answer for one file (status None: never answered, see ``error``)."""

    path: Path
    sop_instance_uid: str
    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        """Success (0x0000) or a warning (0x0001, 0xBxxx): the peer kept the instance."""
        return self.status is not None and (self.status in (0x0000, 0x0001) or self.status >> 12 == 0xB)


@dataclass
class SendReport:
    """What happened to every file of one :func:`send_instances` call."""

    peer: DicomPeer
    results: list[InstanceResult] = field(default_factory=list)
    associations: int = 0
    """Associations attempted, failed ones included."""

    @property
    def sent(self) -> list[InstanceResult]:
        return [result for result in self.results if result.ok]

    @property
    def failed(self) -> list[InstanceResult]:
        return [result for result in self.results if not result.ok]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _read_meta(path: Path) -> _File:
    try:
        meta = read_file_meta_info(path)
    except Exception as error:
        raise NotDicomError(path, f"no readable file meta information: {error}") from error
    missing = [
        kw for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID") if kw not in meta
    ]
    if missing:
        raise NotDicomError(path, "file meta lacks " + ", ".join(missing))
    return _File(
        path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID)
    )


def _contexts_for(files: Sequence[_File]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax) so every file goes in its own syntax, never transcoded."""
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax) for f in files})
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]


def _batches(files: Sequence[_File]) -> list[list[_File]]:
    """Split files so that no association needs more than 128 presentation contexts."""
    batches: list[list[_File]] = []
    pairs: dict[tuple[str, str], int] = {}
    for item in files:
        key = (item.sop_class_uid, item.transfer_syntax)
        if key not in pairs:
            pairs[key] = len(pairs) // MAX_CONTEXTS
        index = pairs[key]
        while len(batches) <= index:
            batches.append([])
        batches[index].append(item)
    return batches


@contextmanager
def associate(
    peer: DicomPeer,
    contexts: Sequence[PresentationContext],
    *,
    calling_ae: str = "VESALIUS",
    timeout: float = 30.0,
    evt_handlers: Sequence[Any] = (),
    ext_neg: Sequence[Any] | None = None,
) -> Iterator[Association]:
    """An established association with TCP_NODELAY set, released on exit; raises DicomPeerError otherwise."""
    ae = AE(ae_title=validate_ae_title(calling_ae))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.requested_contexts = list(contexts)
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, set_tcp_nodelay), *evt_handlers]
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers, ext_neg=list(ext_neg or []) or None
    )
    if not assoc.is_established:
        raise DicomPeerError(f"DICOM peer {peer}: {_why_not_established(assoc)}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _why_not_established(assoc: Association) -> str:
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return f"association rejected ({primitive.result_str}, {primitive.source_str}: {primitive.reason_str})"
    return (
        "no association: connection refused, timed out or aborted by the peer "
        "(is it listening at this address, and does it know our AE title?)"
    )


def echo(peer: DicomPeer, *, calling_ae: str = "VESALIUS", timeout: float = 10.0) -> bool:
    """True when the peer answers a C-ECHO with success; False on any network or association failure."""
    contexts = [build_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    try:
        with associate(peer, contexts, calling_ae=calling_ae, timeout=timeout) as assoc:
            status = assoc.send_c_echo()
    except DicomPeerError as error:
        LOGGER.info("C-ECHO to %s failed: %s", peer, error)
        return False
    return bool(status and int(status.get("Status", -1)) == 0x0000)


def send_instances(
    paths: Iterable[Path | str],
    peer: DicomPeer,
    *,
    calling_ae: str = "VESALIUS",
    retries: int = 3,
    backoff_seconds: float = 0.5,
    timeout: float = 30.0,
) -> SendReport:
    """C-STORE every file to ``peer``; each is sent in its own transfer syntax.

    Association failures are retried up to ``retries`` times, waiting ``backoff_seconds * 2**n`` before retry n+1.
    Raises DicomPeerError when the retries are spent and some files were never answered; a report with per-file
    statuses otherwise (check ``report.ok``).
    """
    if retries < 0 or backoff_seconds < 0:
        raise InputError(f"send to {peer}: retries ({retries}) and backoff_seconds ({backoff_seconds}) must be >= 0")
    files = [_read_meta(Path(path)) for path in paths]
    report = SendReport(peer)
    for batch in _batches(files):
        _send_batch(batch, peer, report, calling_ae, retries, backoff_seconds, timeout)
    return report


def _send_batch(
    batch: list[_File],
    peer: DicomPeer,
    report: SendReport,
    calling_ae: str,
    retries: int,
    backoff_seconds: float,
    timeout: float,
) -> None:
    pending = list(batch)
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_seconds * 2 ** (attempt - 1))
        report.associations += 1
        try:
            with associate(peer, _contexts_for(pending), calling_ae=calling_ae, timeout=timeout) as assoc:
                pending = _store_each(assoc, pending, report)
        except DicomPeerError as error:
            last_error = str(error)
            LOGGER.warning("send to %s, attempt %d of %d: %s", peer, attempt + 1, retries + 1, error)
        if not pending:
            return
    raise DicomPeerError(
        f"DICOM peer {peer}: {len(pending)} of {len(batch)} instances not sent after {retries + 1} attempts; "
        f"last error: {last_error or 'association lost during transfer'}"
    )


def _store_each(assoc: Association, files: list[_File], report: SendReport) -> list[_File]:
    """Send files in order; return those left unanswered because the association ended."""
    for index, item in enumerate(files):
        if not assoc.is_established:
            return files[index:]
        try:
            answer = assoc.send_c_store(item.path, msg_id=(index % 65535) + 1)
        except ValueError as error:  # no accepted context for this SOP class / syntax
            report.results.append(InstanceResult(item.path, item.sop_instance_uid, None, f"not sent: {error}"))
            continue
        status = int(answer.Status) if answer and "Status" in answer else None
        if status is None:
            return files[index:]
        report.results.append(InstanceResult(item.path, item.sop_instance_uid, status))
        if status != 0x0000:
            LOGGER.warning("C-STORE of SOP instance %s: status 0x%04X", item.sop_instance_uid, status)
    return []
