"""Adding images: screen each upload (a DICOM de-identified), answer bytes already stored without
decoding them again, decode the rest, and store the good ones together."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from medsearch_catalog.deidentify import Deidentifier, DicomFacts
from medsearch_catalog.errors import ImageRejected, InvalidMetadata, PseudonymKeyUnavailable
from medsearch_catalog.images import CheckedImage, ImageLimits, ScreenedImage, check_screened, screen_upload
from medsearch_catalog.metadata import ImageMetadata, parse_metadata
from medsearch_catalog.repository import ImageRecord, ImageRepository, NewImage

# Runs a function over items, perhaps in parallel, keeping their order (Executor.map or map).
MapFunction = Callable[[Callable[[ScreenedImage], Any], Iterable[ScreenedImage]], Iterator[Any]]


@dataclass(frozen=True)
class ImageUpload:
    """One image as sent: its bytes and its metadata as parsed JSON, neither checked yet."""

    data: bytes
    metadata: Any


@dataclass(frozen=True)
class StoredImage:
    record: ImageRecord
    created: bool  # False: these bytes were stored already


@dataclass(frozen=True)
class RefusedImage:
    error: ImageRejected | InvalidMetadata | PseudonymKeyUnavailable


IngestOutcome = StoredImage | RefusedImage


def ingest_images(
    repository: ImageRepository,
    limits: ImageLimits,
    uploads: Sequence[ImageUpload],
    deidentifier: Deidentifier,
    *,
    map_decode: MapFunction = map,
) -> list[IngestOutcome]:
    """One outcome per upload, in order; each is stored or refused on its own.

    The same bytes twice store one image: the first upload creates it, the others get it.
    Every new image is stored in one transaction, so a database failure stores none of them.
    """
    outcomes: dict[int, IngestOutcome] = {}
    screened: dict[int, tuple[ScreenedImage, ImageMetadata]] = {}
    for i, sent in enumerate(uploads):
        try:
            metadata = parse_metadata(sent.metadata)  # first, as a single upload checks it
            image = screen_upload(sent.data, limits, deidentifier)
            if image.dicom is not None:
                metadata = with_dicom_facts(metadata, image.dicom, deidentifier)
            screened[i] = (image, metadata)
        except (ImageRejected, InvalidMetadata, PseudonymKeyUnavailable) as exc:
            outcomes[i] = RefusedImage(exc)

    stored = repository.find_by_sha256(u.sha256 for u, _ in screened.values())
    to_decode = {u.sha256: u for u, _ in screened.values() if u.sha256 not in stored}
    decoded = dict(zip(to_decode, map_decode(lambda u: _decoded(u, limits), to_decode.values()), strict=True))

    new: dict[str, NewImage] = {}
    for i, (image, metadata) in screened.items():
        result = decoded.get(image.sha256)
        if isinstance(result, ImageRejected):
            outcomes[i] = RefusedImage(result)
        elif result is not None:
            new.setdefault(image.sha256, NewImage(result, metadata))  # the first upload's metadata
    added = repository.add_images(list(new.values()))

    creators: dict[str, int] = {}  # which upload created each new image: the others got it
    for i, (image, _) in screened.items():
        if i in outcomes:
            continue
        if image.sha256 in stored:
            outcomes[i] = StoredImage(stored[image.sha256], created=False)
        else:
            record, created = added[image.sha256]
            creator = creators.setdefault(image.sha256, i)
            outcomes[i] = StoredImage(record, created=created and creator == i)
    return [outcomes[i] for i in range(len(uploads))]


def with_dicom_facts(metadata: ImageMetadata, facts: DicomFacts, deidentifier: Deidentifier) -> ImageMetadata:
    """The metadata of a DICOM upload: what its header says wins over what was sent with it,
    which fills the gaps. The patient is always a pseudonym: the header's, else the sent
    `patient_id`'s, made the same way. `external_id` defaults to the replaced SOP Instance UID."""
    patient_id = facts.patient_id
    if patient_id is None and metadata.patient_id is not None:
        patient_id = deidentifier.pseudonym(metadata.patient_id)
    return replace(
        metadata,
        external_id=metadata.external_id or facts.sop_instance_uid,
        patient_id=patient_id,
        age=facts.age if facts.age is not None else metadata.age,
        sex=facts.sex or metadata.sex,
        view_position=facts.view_position or metadata.view_position,
        extra={**metadata.extra, "modality": facts.modality},
    )


def _decoded(screened: ScreenedImage, limits: ImageLimits) -> CheckedImage | ImageRejected:
    try:
        return check_screened(screened, limits)
    except ImageRejected as exc:
        return exc
