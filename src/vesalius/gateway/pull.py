"""Pull mode: ask a PACS what a study holds (C-FIND) and fetch it (C-GET into our store, or C-MOVE to our SCP).

C-GET brings the instances back on the same association, so no firewall or PACS configuration is needed; each
one is stored (fsync-ed) before we answer its C-STORE. C-MOVE asks the PACS to open its own association to our
running listener, whose AE title the PACS must know; those instances reach the store through the listener.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from vesalius.core.errors import InputError
from vesalius.gateway.scp import (
    STATUS_BAD_UIDS,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILED,
    STATUS_SUCCESS,
    TRANSFER_SYNTAXES,
    affected_sop_instance_uid,
    validate_ae_title,
)
from vesalius.gateway.scu import MAX_CONTEXTS, DicomPeer, DicomPeerError, associate
from vesalius.gateway.storage import InstanceStore, StorageFullError, StoredInstance, UnsafeUidError, check_uid

__all__ = ["PullReport", "StudyQuery", "find_study", "pull_study"]

LOGGER = logging.getLogger(__name__)
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class StudyQuery:
    """What the PACS says a study holds."""

    study_uid: str
    instance_count: int | None
    """NumberOfStudyRelatedInstances, or the count of IMAGE-level matches when the PACS does not fill it in."""
    modalities: list[str]
    found: bool


@dataclass
class PullReport:
    """Sub-operation counts from the PACS and, for C-GET, the instances we stored."""

    study_uid: str
    method: Literal["get", "move"]
    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    stored: list[StoredInstance] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SUCCESS and self.failed == 0


def _find(assoc: Association, query: Dataset, peer: DicomPeer) -> list[Dataset]:
    matches: list[Dataset] = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(status.get("Status", -1)) if status else None
        if code is None:
            raise DicomPeerError(f"DICOM peer {peer}: C-FIND got no answer (association lost or timed out)")
        if code in _PENDING and identifier is not None:
            matches.append(identifier)
        elif code not in _PENDING and code != STATUS_SUCCESS:
            raise DicomPeerError(f"DICOM peer {peer}: C-FIND failed with status 0x{code:04X}")
    return matches


def find_study(peer: DicomPeer, study_uid: str, *, calling_ae: str = "VESALIUS", timeout: float = 30.0) -> StudyQuery:
    """C-FIND at STUDY level for the instance count and modalities (IMAGE level when the count is not given)."""
    check_uid("StudyInstanceUID", study_uid)
    contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    with associate(peer, contexts, calling_ae=calling_ae, timeout=timeout) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.NumberOfStudyRelatedInstances = None
        query.ModalitiesInStudy = None
        studies = _find(assoc, query, peer)
        if not studies:
            return StudyQuery(study_uid, 0, [], found=False)
        answer = studies[0]
        count = _as_int(answer.get("NumberOfStudyRelatedInstances"))
        modalities = _as_list(answer.get("ModalitiesInStudy"))
        if count is None or not modalities:
            images = Dataset()
            images.QueryRetrieveLevel = "IMAGE"
            images.StudyInstanceUID = study_uid
            images.SeriesInstanceUID = None
            images.SOPInstanceUID = None
            images.Modality = None
            found = _find(assoc, images, peer)
            count = len({str(item.get("SOPInstanceUID", "")) for item in found}) if count is None else count
            modalities = modalities or sorted({str(item.Modality) for item in found if item.get("Modality")})
    return StudyQuery(study_uid, count, modalities, found=True)


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _as_list(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value if str(item)]


def pull_study(
    peer: DicomPeer,
    study_uid: str,
    store: InstanceStore,
    *,
    method: Literal["get", "move"] = "get",
    move_destination: str | None = None,
    calling_ae: str = "VESALIUS",
    timeout: float = 60.0,
) -> PullReport:
    """Retrieve a whole study. ``method="move"`` needs ``move_destination``: the AE title of our running listener."""
    check_uid("StudyInstanceUID", study_uid)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    if method == "get":
        return _pull_get(peer, identifier, store, calling_ae, timeout)
    if method == "move":
        if move_destination is None:
            raise InputError(f"pull of study {study_uid} from {peer} by C-MOVE needs move_destination (our AE title)")
        return _pull_move(peer, identifier, validate_ae_title(move_destination), calling_ae, timeout)
    raise InputError(f"pull of study {study_uid}: method must be 'get' or 'move', got {method!r}")


def _pull_get(
    peer: DicomPeer, identifier: Dataset, store: InstanceStore, calling_ae: str, timeout: float
) -> PullReport:
    storage = StoragePresentationContexts[: MAX_CONTEXTS - 1]
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    contexts += [build_context(str(cx.abstract_syntax), TRANSFER_SYNTAXES) for cx in storage]
    roles = [build_role(str(cx.abstract_syntax), scp_role=True) for cx in storage]
    stored: list[StoredInstance] = []
    lock = threading.Lock()

    def handle_store(event: evt.Event) -> int:
        sop_uid = affected_sop_instance_uid(event)
        try:
            instance = store.store_encoded(event.encoded_dataset(include_meta=True))
        except (StorageFullError, OSError):
            LOGGER.warning("C-GET: SOP instance %s not stored: out of resources", sop_uid)
            return STATUS_OUT_OF_RESOURCES
        except UnsafeUidError:
            return STATUS_BAD_UIDS
        except InputError:
            LOGGER.error("C-GET: SOP instance %s cannot be parsed", sop_uid)
            return STATUS_CANNOT_UNDERSTAND
        except Exception as error:  # nothing may escape a handler; the message could quote patient data
            LOGGER.error("C-GET: SOP instance %s not stored (%s)", sop_uid, type(error).__name__)
            return STATUS_PROCESSING_FAILED
        with lock:
            stored.append(instance)
        return STATUS_SUCCESS

    handlers = [(evt.EVT_C_STORE, handle_store)]
    with associate(
        peer, contexts, calling_ae=calling_ae, timeout=timeout, evt_handlers=handlers, ext_neg=roles
    ) as assoc:
        responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        report = _collect(responses, peer, identifier.StudyInstanceUID, "get")
    report.stored = stored
    return report


def _pull_move(peer: DicomPeer, identifier: Dataset, destination: str, calling_ae: str, timeout: float) -> PullReport:
    contexts = [build_context(StudyRootQueryRetrieveInformationModelMove)]
    with associate(peer, contexts, calling_ae=calling_ae, timeout=timeout) as assoc:
        responses = assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)
        return _collect(responses, peer, identifier.StudyInstanceUID, "move")


def _collect(responses: Any, peer: DicomPeer, study_uid: str, method: Literal["get", "move"]) -> PullReport:
    """Read C-GET/C-MOVE responses up to the final one; its sub-operation counts are the result."""
    final: Dataset | None = None
    for status, _identifier in responses:
        if not status:
            raise DicomPeerError(f"DICOM peer {peer}: C-{method.upper()} of study {study_uid} got no answer")
        if int(status.Status) not in _PENDING:
            final = status
    if final is None:
        raise DicomPeerError(f"DICOM peer {peer}: C-{method.upper()} of study {study_uid} ended without a final status")
    code = int(final.Status)
    report = PullReport(
        study_uid=study_uid,
        method=method,
        status=code,
        completed=int(final.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(final.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(final.get("NumberOfWarningSuboperations", 0) or 0),
    )
    if code != STATUS_SUCCESS and code >> 12 != 0xB:
        raise DicomPeerError(
            f"DICOM peer {peer}: C-{method.upper()} of study {study_uid} failed with status 0x{code:04X} "
            f"({report.completed} completed, {report.failed} failed)"
        )
    return report
