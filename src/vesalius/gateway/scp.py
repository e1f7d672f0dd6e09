"""The DICOM listener: C-ECHO and C-STORE SCP that answers success only once an instance is fsync-ed.

Handlers are plain functions bound to pynetdicom events (as pynetdicom's own qrscp app does). The C-STORE
handler writes the bytes exactly as received (no decode, no re-encode) through :class:`InstanceStore`, then calls
``on_stored``, which must be quick (record it, enqueue a job): heavy work belongs off the association thread.
Logs carry UIDs and statuses, never patient names or IDs.
"""

from __future__ import annotations

import copy
import logging
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from vesalius.core.errors import InputError, VesaliusError
from vesalius.gateway.storage import InstanceStore, StorageFullError, StoredInstance, UnsafeUidError

__all__ = [
    "STATUS_BAD_UIDS",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILED",
    "STATUS_SUCCESS",
    "TRANSFER_SYNTAXES",
    "ScpSettings",
    "StorageSCP",
    "affected_sop_instance_uid",
    "set_tcp_nodelay",
    "validate_ae_title",
]

LOGGER = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
"""Start of the 0xCxxx "cannot understand" range: 0xC000 unreadable data set, 0xC001 unusable UIDs."""
STATUS_BAD_UIDS = 0xC001
STATUS_PROCESSING_FAILED = 0xC002
"""An unexpected fault while checking or storing: nothing was stored (pynetdicom's own 0xC211 is never sent)."""

TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
"""Accepted for every storage SOP class; the bytes are stored as received, so no codec is needed here."""

# A-ASSOCIATE-RJ (result, source, reason) for "no room": rejected-transient, service provider (presentation),
# local limit exceeded. The peer may retry later, unlike a permanent rejection.
_REJECT_LOW_DISK = (0x02, 0x03, 0x02)


def validate_ae_title(value: str) -> str:
    """An AE title is 1-16 printable ASCII characters without a backslash; leading/trailing spaces are dropped."""
    title = value.strip()
    if not 1 <= len(title) <= 16 or not title.isascii() or not title.isprintable() or "\\" in title:
        raise ValueError(f"AE title {value!r} must be 1-16 printable ASCII characters without a backslash")
    return title


class ScpSettings(BaseModel):
    """Where and as whom the listener runs, and whom it accepts."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = "VESALIUS"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    """0 picks a free port; read the bound one from :attr:`StorageSCP.port`."""
    allowed_calling_aes: list[str] | None = None
    """None accepts any calling AE title; otherwise others are rejected ("calling AE title not recognised")."""
    min_free_bytes: int = Field(default=1 << 30, ge=0)
    network_timeout: float = Field(default=60.0, gt=0)
    maximum_associations: int = Field(default=16, ge=1)
    maximum_pdu_size: int = Field(default=1 << 20, ge=0)
    """Largest PDU we accept, in bytes (0: no limit). pynetdicom's default (16382) splits a 0.5 MB CT image into
    32 PDUs, each a trip through its Python reactor; 1 MiB sends most images in one and received ~25% more
    instances/s in our benchmark. Memory is not the bound here: a whole data set is held in memory anyway."""

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_allowed(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("allowed_calling_aes is empty: use null to accept any AE title, or list at least one")
        return [validate_ae_title(title) for title in value]


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm, which otherwise costs ~40 ms per DIMSE message."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _ContextList(list[PresentationContext]):
    """The server's supported contexts, with a cheap ``deepcopy``.

    pynetdicom deep-copies the acceptor's contexts for every new association. With every storage SOP class times
    13 transfer syntaxes that rebuilds ~2,200 validated ``UID`` objects: ~35 ms of CPU under the GIL per
    association, which serialises concurrent associations. A UID is an immutable ``str``, so sharing it is safe;
    each context and its transfer-syntax list are still copied, so negotiation cannot change the server's list.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return [_copy_context(context) for context in self]


def _copy_context(context: PresentationContext) -> PresentationContext:
    duplicate = copy.copy(context)
    for name, value in vars(context).items():
        if isinstance(value, list):
            setattr(duplicate, name, list(value))  # the transfer syntaxes: a new list of the same immutable UIDs
    return duplicate


class StorageSCP:
    """A non-blocking Verification and Storage SCP; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        settings: ScpSettings,
        store: InstanceStore,
        on_stored: Callable[[StoredInstance], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        if self._server is None:
            raise VesaliusError(f"DICOM listener {self.settings.ae_title} is not running")
        return int(self._server.server_address[1])

    @property
    def server(self) -> ThreadedAssociationServer | None:
        return self._server

    def start(self) -> None:
        if self._server is not None:
            return
        ae = AE(ae_title=self.settings.ae_title)
        ae.network_timeout = self.settings.network_timeout
        ae.maximum_associations = self.settings.maximum_associations
        ae.maximum_pdu_size = self.settings.maximum_pdu_size
        if self.settings.allowed_calling_aes is not None:
            ae.require_calling_aet = list(self.settings.allowed_calling_aes)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_REQUESTED, self._refuse_when_full),
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
        ]
        try:
            self._server = ae.start_server(
                (self.settings.host, self.settings.port),
                block=False,
                evt_handlers=handlers,
                contexts=_ContextList(ae.supported_contexts),
            )
        except OSError as error:
            raise VesaliusError(
                f"DICOM listener {self.settings.ae_title} cannot listen on "
                f"{self.settings.host}:{self.settings.port}: {error}"
            ) from error
        LOGGER.info("DICOM listener %s on %s:%d", self.settings.ae_title, self.settings.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _refuse_when_full(self, event: evt.Event) -> None:
        """EVT_REQUESTED: reject the association (transient, local limit exceeded) while disk space is low."""
        if self.store.has_room():
            return
        LOGGER.warning(
            "rejecting association from %s: %s has less than %d bytes free",
            event.assoc.requestor.ae_title,
            self.store.root,
            self.store.min_free_bytes,
        )
        event.assoc.acse.send_reject(*_REJECT_LOW_DISK)
        event.assoc.kill()

    def _handle_store(self, event: evt.Event) -> int:
        """EVT_C_STORE: store the received bytes durably, then report; the status tells the sender what happened.

        Nothing may escape: pynetdicom would answer 0xC211 without our log line. Storage checks the bytes and every
        value the record needs before it writes, so any failure here means nothing was stored.
        """
        sop_uid = "?"
        try:
            sop_uid = affected_sop_instance_uid(event)
            stored = self.store.store_encoded(event.encoded_dataset(include_meta=True))
        except StorageFullError:
            LOGGER.warning("SOP instance %s refused: storage below its free-space minimum", sop_uid)
            return STATUS_OUT_OF_RESOURCES
        except OSError as error:
            LOGGER.error("SOP instance %s not stored: %s (errno %s)", sop_uid, type(error).__name__, error.errno)
            return STATUS_OUT_OF_RESOURCES
        except UnsafeUidError as error:
            LOGGER.error("SOP instance %s refused (0x%04X): %s", sop_uid, STATUS_BAD_UIDS, _safe_reason(error))
            return STATUS_BAD_UIDS
        except InputError as error:
            LOGGER.error("SOP instance %s refused (0x%04X): %s", sop_uid, STATUS_CANNOT_UNDERSTAND, _safe_reason(error))
            return STATUS_CANNOT_UNDERSTAND
        except Exception as error:  # a fault we did not foresee: refuse the instance, keep the association up
            # the type only, no traceback: an unforeseen exception's text could quote a data set value (PHI)
            LOGGER.error(
                "SOP instance %s not stored (0x%04X): unexpected %s",
                sop_uid,
                STATUS_PROCESSING_FAILED,
                type(error).__name__,
            )
            return STATUS_PROCESSING_FAILED
        if self.on_stored is not None:
            try:
                self.on_stored(stored)
            except Exception:
                LOGGER.exception("on_stored hook failed for SOP instance %s (the instance is stored)", sop_uid)
        return STATUS_SUCCESS


def affected_sop_instance_uid(event: evt.Event) -> str:
    """The C-STORE request's Affected SOP Instance UID, for logs (a UID, never PHI)."""
    return str(getattr(event.request, "AffectedSOPInstanceUID", "") or "?")


def _handle_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def _safe_reason(error: Exception) -> str:
    """Error text is built from UIDs and parser messages only; cap it so a odd value cannot flood the log."""
    return str(error)[:200]
