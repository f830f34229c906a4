"""The `medsearch` command: ingest, search, reindex, verify, duplicates, eval and stats against a
MedSearch gateway, and for an admin its API tokens and audit trail.

Exit status: 0 when everything worked; 1 when an image or a call failed (each failure is
listed); 2 when the command line or the CSV is wrong (nothing was sent); 3 when `verify
--dry-run` found the catalog and the search service disagreeing; 130 when interrupted.

Here: the command line and the collection's commands. Beside it: `batch` (many images' requests
at once, as ingest and reindex send them), `admin` (API tokens, the audit trail) and `terminal`
(what they share: exit statuses, tables, times, files written whole).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medsearch_client import duplicates as near
from medsearch_client import harness
from medsearch_client.admin import (
    AUDIT_ACTIONS,
    DEFAULT_AUDIT_LIMIT,
    audit,
    tokens_create,
    tokens_list,
    tokens_revoke,
)
from medsearch_client.batch import (
    Job,
    Result,
    describe_failure,
    report,
    run_jobs,
    single,
)
from medsearch_client.client import (
    DEFAULT_URL,
    ROLES,
    URL_ENV,
    Duplicates,
    GatewayClient,
    GatewayError,
    Image,
    SearchHit,
    Verification,
    find_token,
)
from medsearch_client.evaluation import (
    KS,
    EvaluationReport,
    evaluate_rule,
    near_duplicate_recall_at_1,
    same_patient_recall,
)
from medsearch_client.harness import EvaluationError
from medsearch_client.report import headline, write_report
from medsearch_client.sources import FORMATS, IngestItem, SourceError, SourceOptions, read_source
from medsearch_client.terminal import (
    EXIT_DRIFT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    aligned,
    parse_time,
    write_whole,
)

# An ingest waits for the embedder, which may be busy with other uploads: be patient.
DEFAULT_TIMEOUT_S = 300.0
# Images per ingest request: the gateway takes up to 32; its upload limit (64 MiB by
# default) bounds the bytes of one request.
MAX_BATCH_SIZE = 32
MAX_BATCH_BYTES = 48 * 1024 * 1024
DEFAULT_BATCH_SIZE = 8
DEFAULT_INGEST_CONCURRENCY = 4
# Image IDs per verify request: the gateway takes ranges of up to 16,000 (one Milvus query).
DEFAULT_VERIFY_BATCH = 10_000
MAX_VERIFY_BATCH = 16_000
# Image IDs per duplicates request: each indexed image is one nearest-neighbour search (3.7 ms
# at 112,120 images here; a range of 1,000 took 3.4 s, at worst 13 s), so that a request stays
# within the gateway's search timeout (10 s by default).
DEFAULT_DUPLICATES_BATCH = 500
MAX_NEIGHBORS = 50  # the gateway's limit on k
DUPLICATE_FORMATS = ("csv", "json")
# Drifted image IDs listed by name; the summary counts them all.
LISTED_DRIFT = 20


# -- commands -----------------------------------------------------------------------------


def ingest(args: argparse.Namespace, client: GatewayClient) -> int:
    source = read_source(args.source, _source_options(args))
    if source.missing:
        print(f"skipping {len(source.missing)} rows whose image file is missing", file=sys.stderr)
    model = _active_model(client)
    print(f"ingesting {len(source.items)} images into {client.base_url} (model {model})", file=sys.stderr)
    jobs = [
        Job([str(item.path) for item in batch], partial(_ingest_batch, client, batch))
        for batch in batches(source.items, args.batch_size, MAX_BATCH_BYTES)
    ]
    return report(run_jobs(jobs, args.concurrency, "ingest"))


def _source_options(args: argparse.Namespace) -> SourceOptions:
    return SourceOptions(
        format=args.format,
        images=args.images,
        path_column=args.path_column,
        mappings=args.map,
        dataset=args.dataset,
        skip_missing=args.skip_missing,
    )


def batches(items: Sequence[IngestItem], size: int, max_bytes: int) -> Iterator[list[IngestItem]]:
    """The items in order, `size` at a time, fewer where their files would pass `max_bytes`
    together (the gateway takes one request of about its upload limit)."""
    batch: list[IngestItem] = []
    weight = 0
    for item in items:
        try:
            item_bytes = item.path.stat().st_size
        except OSError:
            item_bytes = 0  # reading it fails in the batch, and names the file
        if batch and (len(batch) == size or weight + item_bytes > max_bytes):
            yield batch
            batch, weight = [], 0
        batch.append(item)
        weight += item_bytes
    if batch:
        yield batch


def _ingest_batch(client: GatewayClient, batch: Sequence[IngestItem]) -> list[Result]:
    """One request for the batch's readable files; an unreadable one fails alone."""
    results: list[Result | None] = []
    readable: list[tuple[bytes, Mapping[str, Any]]] = []
    for item in batch:
        try:
            readable.append((item.path.read_bytes(), item.metadata))
            results.append(None)
        except OSError as exc:
            results.append(exc)
    answers = iter(client.add_images(readable) if readable else [])
    return [result if result is not None else next(answers) for result in results]


def reindex(args: argparse.Namespace, client: GatewayClient) -> int:
    model = _active_model(client)
    # All pages first: indexing while paging would move the pages under the cursor.
    if args.all:
        images = list(client.iter_images())
    else:
        images = list(client.iter_pending(include_failed=args.include_failed))
    print(f"{len(images)} images to index for model {model}", file=sys.stderr)
    jobs = [
        single(_image_name(image), partial(client.index_image, image["id"], force=args.all))
        for image in images
    ]
    return report(run_jobs(jobs, args.concurrency, "reindex"))


@dataclass
class Drift:
    """What `verify` found, added up over the ranges it walked."""

    checked: int = 0
    vectors: int = 0
    indexed_without_vector: list[int] = field(default_factory=list)
    vector_without_image: list[int] = field(default_factory=list)

    def add(self, found: Verification) -> None:
        self.checked += found["checked"]
        self.vectors += found["vectors"]
        self.indexed_without_vector.extend(found["indexed_without_vector"])
        self.vector_without_image.extend(found["vector_without_image"])

    def __bool__(self) -> bool:
        return bool(self.indexed_without_vector or self.vector_without_image)

    def summary(self) -> str:
        """`N images, M vectors: A indexed without a vector, B vectors without an image`."""
        return (
            f"{self.checked} images, {self.vectors} vectors: {len(self.indexed_without_vector)} indexed "
            f"without a vector, {len(self.vector_without_image)} vectors without an image"
        )


def verify(args: argparse.Namespace, client: GatewayClient) -> int:
    """Walk every image ID the catalog has given, a range per request, comparing the catalog's
    index states with the search service's vectors; repair the drift (unless --dry-run), then
    index again the images that were marked indexed without a vector, as `reindex` would."""
    model = _active_model(client)
    repair = not args.dry_run
    drift = Drift()
    found = client.verify(0, args.batch, repair=repair)  # its answer says how far to walk
    drift.add(found)
    end = (found["max_image_id"] or 0) + 1
    print(f"verifying image IDs 0-{end - 1} of model {model}", file=sys.stderr)
    with tqdm(total=end, desc="verify", unit="id", file=sys.stderr, disable=None) as bar:
        bar.update(min(args.batch, end))
        for first in range(args.batch, end, args.batch):
            drift.add(client.verify(first, first + args.batch, repair=repair))
            bar.update(min(args.batch, end - first))
            bar.set_postfix_str(drift.summary(), refresh=False)
    outcome = "" if not drift else "; nothing changed (--dry-run)" if args.dry_run else "; repaired"
    print(drift.summary() + outcome, flush=True)
    for what, ids in (
        ("indexed without a vector", drift.indexed_without_vector),
        ("vector without an image", drift.vector_without_image),
    ):
        for image_id in ids[:LISTED_DRIFT]:
            print(f"{what}: image {image_id}", file=sys.stderr)
        if len(ids) > LISTED_DRIFT:
            print(f"{what}: {len(ids) - LISTED_DRIFT} more", file=sys.stderr)
    if args.dry_run:
        return EXIT_DRIFT if drift else EXIT_OK
    if not drift.indexed_without_vector:
        return EXIT_OK
    # Marked pending: index them now, so that both stores agree when this command ends
    # (interrupted, `medsearch reindex` finishes it).
    jobs = [
        single(f"image {image_id}", partial(client.index_image, image_id))
        for image_id in drift.indexed_without_vector
    ]
    return report(run_jobs(jobs, args.concurrency, "reindex"))


def duplicates(args: argparse.Namespace, client: GatewayClient) -> int:
    """Walk every image ID the catalog has given, a range per request, gathering the pairs of
    images at or above the threshold; group them into clusters, flag each, write CSV or JSON."""
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        raise UsageError(f"cannot write {args.out}: name a file in a folder that exists")
    split_of = _split_rule(args, client)  # a bad split file stops here, before any scan
    gathered = near.Gathered()
    found = client.duplicates(0, args.batch, threshold=args.threshold, k=args.k)
    gathered.add(found)
    end = (found["max_image_id"] or 0) + 1
    print(
        f"looking for near-duplicates among image IDs 0-{end - 1} of model {found['model_id']} "
        f"(threshold {found['threshold']:g}, {found['k']} neighbours each)",
        file=sys.stderr,
    )
    firsts = range(args.batch, end, args.batch)

    def scan(first: int) -> Duplicates:
        return client.duplicates(first, first + args.batch, threshold=args.threshold, k=args.k)

    # Ranges are independent: with --concurrency they run at once (on several search replicas).
    pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="duplicates")
    try:
        with tqdm(total=end, desc="duplicates", unit="id", file=sys.stderr, disable=None) as bar:
            bar.update(min(args.batch, end))
            for first, part in zip(firsts, pool.map(scan, firsts), strict=True):
                gathered.add(part)
                bar.update(min(args.batch, end - first))
                bar.set_postfix_str(f"{len(gathered.pairs)} pairs", refresh=False)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed range: the rest are not sent
    found_clusters = near.clusters(gathered.pairs.values(), gathered.images, split_of)
    if args.format == "json":
        text = near.json_text(gathered, found_clusters, split_of)
    else:
        text = near.csv_text(found_clusters, gathered.images, split_of)
    if args.out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            write_whole(args.out, lambda out: out.write(text.encode()))
        except OSError as exc:
            print(f"medsearch: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"wrote {args.out}", file=sys.stderr)
    print(f"{gathered.vectors} images compared; {near.summary(found_clusters)}", file=sys.stderr)
    return EXIT_OK


def _split_rule(args: argparse.Namespace, client: GatewayClient) -> Callable[[Image], str | None]:
    """Which split an image is in: by its external ID in the split files, or by a metadata
    field; none without either. Split files naming images the collection lacks are refused."""
    if args.split_field:
        return partial(near.field_value, name=args.split_field)
    if not args.split:
        return lambda image: None
    split_by_name = near.read_split_files(args.split)
    known: set[str] = set()
    total = client.stats()["images"]
    with tqdm(total=total, desc="reading the catalog", unit="image", file=sys.stderr, disable=None) as bar:
        for image in client.iter_images():
            if image["metadata"].get("external_id"):
                known.add(str(image["metadata"]["external_id"]))
            bar.update()
    near.refuse_unknown(near.unknown_names(split_by_name, known))

    def split_of(image: Image) -> str | None:
        return split_by_name.get(str(image["metadata"].get("external_id")))

    return split_of


def search(args: argparse.Namespace, client: GatewayClient) -> int:
    if args.image is None and args.query_id is None and not args.like:
        raise UsageError("give a query image, --query-id, or at least one --like image ID")
    query: bytes | None = None
    if args.image is not None:
        try:
            query = args.image.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.image}: {exc.strerror or exc}") from None
    response = client.search(
        query,
        k=args.k,
        filter=args.filter,
        one_per_patient=args.one_per_patient,
        filename=args.image.name if args.image is not None else "",
        query_id=args.query_id,
        region=args.region,
        like=args.like,
        unlike=args.unlike,
    )
    if args.json:
        print(json.dumps(response, indent=2))
        return EXIT_OK
    if response["model"].get("warning"):
        print(f"warning: {response['model']['warning']}", file=sys.stderr)
    if response["results"]:
        print(format_results(response["results"]))
    else:
        print("no results: nothing is indexed yet, or nothing matches the filter", file=sys.stderr)
    return EXIT_OK


def evaluate(args: argparse.Namespace, client: GatewayClient) -> int:
    """Retrieval quality of the active model on a labelled, indexed set; see harness.py."""
    source = read_source(args.source, _source_options(args))
    if args.ingest:
        print(f"ingesting {len(source.items)} images first", file=sys.stderr)
        jobs = [
            Job([str(item.path) for item in batch], partial(_ingest_batch, client, batch))
            for batch in batches(source.items, DEFAULT_BATCH_SIZE, MAX_BATCH_BYTES)
        ]
        tally = run_jobs(jobs, args.concurrency, "ingest")
        if tally.failed or tally.not_tried or tally.interrupted:
            return report(tally)
    model = _active_model(client)
    indexed = harness.indexed_set(client, source)
    images = list(indexed.images.values())
    queries = harness.sample_queries(indexed, args.queries, args.seed)
    print(
        f"evaluating model {model} on {len(images)} indexed images of {', '.join(indexed.datasets)} "
        f"({indexed.not_stored} of the set not stored, {indexed.not_indexed} not indexed); "
        f"{len(queries)} queries",
        file=sys.stderr,
    )
    exclude = not args.keep_same_patient
    with _progress(len(queries), "rankings") as bar:
        ranked = harness.rankings(
            client,
            indexed,
            queries,
            k=harness.FETCH,
            exclude_same_patient=exclude,
            concurrency=args.concurrency,
            progress=bar.update,
        )
    rules = tuple(
        evaluate_rule(
            images, ranked, rule, exclude_same_patient=exclude, bootstrap=args.bootstrap, seed=args.seed
        )
        for rule in ("any_finding", "single_label")
    )
    if all(rule.queries_scored == 0 for rule in rules):
        raise UsageError("no query has a relevant image in the set (no two images share a finding)")
    same_patient = None
    followups = [i for i in harness.patients_with_followups(indexed) if i in set(queries)]
    if followups:
        with _progress(len(followups), "same patient") as bar:
            unexcluded = harness.rankings(
                client,
                indexed,
                followups,
                k=max(KS),
                exclude_same_patient=False,
                concurrency=args.concurrency,
                progress=bar.update,
            )
        same_patient = same_patient_recall(images, unexcluded, bootstrap=args.bootstrap, seed=args.seed)
    near_duplicate = None
    if args.near_duplicates:
        originals = sorted(random.Random(args.seed).sample(queries, min(args.near_duplicates, len(queries))))
        with _progress(len(originals), "near duplicates") as bar:
            tops = harness.near_duplicate_tops(
                client, indexed, originals, concurrency=args.concurrency, progress=bar.update
            )
        near_duplicate = near_duplicate_recall_at_1(tops)
    result = EvaluationReport(
        metadata={
            "model_id": model,
            "gateway": client.base_url,
            "source": str(args.source),
            "datasets": ", ".join(indexed.datasets),
            "images": len(images),
            "not_stored": indexed.not_stored,
            "not_indexed": indexed.not_indexed,
            "queries": len(queries),
            "seed": args.seed,
            "bootstrap": args.bootstrap,
            "exclude_same_patient": exclude,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        rules=rules,
        same_patient=same_patient,
        near_duplicate=near_duplicate,
    )
    written = write_report(result, args.out)
    print("\n".join(headline(result)))
    print(f"report: {', '.join(str(path) for path in written)}", file=sys.stderr)
    return EXIT_OK


def _progress(total: int, description: str) -> tqdm[Any]:
    return tqdm(total=total, desc=description, unit="query", file=sys.stderr, disable=None)


def stats(args: argparse.Namespace, client: GatewayClient) -> int:
    numbers = client.stats()
    if args.json:
        print(json.dumps(numbers, indent=2))
        return EXIT_OK
    model = numbers["model"]
    datasets = ", ".join(f"{name} {count}" for name, count in sorted(numbers["datasets"].items()))
    index = numbers["index"]
    lines = [
        ("model", f"{model['model_id']} (weights: {model.get('weights', '?')})" if model else "unknown"),
        ("images", str(numbers["images"])),
        ("datasets", datasets or "-"),
        ("index", ", ".join(f"{name} {count}" for name, count in index.items()) if index else "-"),
    ]
    print("\n".join(f"{name:<9} {value}" for name, value in lines))
    if model and model.get("warning"):
        print(f"warning: {model['warning']}")
    return EXIT_OK


def format_results(hits: Sequence[SearchHit]) -> str:
    """Search results as an aligned text table, one line per hit, best first."""
    header = ("rank", "score", "id", "external_id", "dataset", "patient", "age/sex/view", "findings")
    rows = [header]
    for hit in hits:
        meta = hit["image"]["metadata"]
        age_sex_view = "/".join(
            "-" if meta.get(name) is None else str(meta.get(name)) for name in ("age", "sex", "view_position")
        )
        rows.append(
            (
                str(hit["rank"]),
                f"{hit['score']:.4f}",
                str(hit["image"]["id"]),
                meta.get("external_id") or "-",
                meta.get("dataset") or "-",
                meta.get("patient_id") or "-",
                age_sex_view,
                ", ".join(meta.get("findings") or []) or "(none)",
            )
        )
    return aligned(rows, right=3)  # rank, score and id are right-aligned


def _active_model(client: GatewayClient) -> str:
    """The active model's ID; asking first also shows at once that the gateway answers."""
    model = client.stats()["model"]
    return str(model["model_id"]) if model else "unknown: the embedder does not answer"


def _image_name(image: Image) -> str:
    meta = image["metadata"]
    label = "/".join(part for part in (meta.get("dataset"), meta.get("external_id")) if part)
    return f"image {image['id']}" + (f" ({label})" if label else "")


# -- the command line ---------------------------------------------------------------------


def _region(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected LEFT,TOP,RIGHT,BOTTOM in pixels, got {text!r}")
    left, top, right, bottom = (int(part) for part in parts)
    return left, top, right, bottom


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _batch_size(text: str) -> int:
    size = _positive_int(text)
    if size > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"the gateway takes at most {MAX_BATCH_SIZE} images per request")
    return size


def _verify_batch(text: str) -> int:
    size = _positive_int(text)
    if size > MAX_VERIFY_BATCH:
        raise argparse.ArgumentTypeError(
            f"the gateway takes at most {MAX_VERIFY_BATCH} image IDs per request"
        )
    return size


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number greater than 0 and at most 1, got {text!r}"
        ) from None
    if not 0 < value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number greater than 0 and at most 1, got {text}")
    return value


def _neighbors(text: str) -> int:
    count = _positive_int(text)
    if count > MAX_NEIGHBORS:
        raise argparse.ArgumentTypeError(f"the gateway looks at most {MAX_NEIGHBORS} neighbours of an image")
    return count


def _split_option(text: str) -> tuple[str, Path]:
    try:
        return near.parse_split_option(text)
    except near.SplitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _split_field(text: str) -> str:
    try:
        return near.check_split_field(text)
    except near.SplitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0, got {text}")
    return value


def _iso_time(text: str) -> str:
    if parse_time(text) is None:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-07-01T09:00:00+02:00 or 2026-07-01, got {text!r}"
        )
    return text


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected a JSON object, e.g. {"sex": ["F"]}')
    return value


def build_parser() -> argparse.ArgumentParser:
    # --url and --timeout work before or after the command. Their defaults are SUPPRESS (and
    # are applied in main) so that a subcommand does not overwrite a value given before it.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"the gateway (env {URL_ENV}; default {DEFAULT_URL})"
    )
    connection.add_argument(
        "--timeout",
        type=_positive_float,
        default=argparse.SUPPRESS,
        help=f"seconds to wait for one answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser = argparse.ArgumentParser(
        prog="medsearch",
        description="Add chest X-rays to a MedSearch gateway and search it.",
        parents=[connection],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = commands.add_parser(
        "ingest",
        parents=[connection],
        help="add and index the images of a folder or a labels CSV",
        description=(
            "Add and index images. SOURCE is a folder (its labels.csv if it has one, else every "
            "*.png/*.jpg/*.jpeg and every DICOM file, by content, under it; a DICOM is de-identified "
            "by the catalog and its header gives its metadata) or a CSV: NIH ChestX-ray14's "
            "Data_Entry_2017*.csv, or a "
            "generic CSV with a path column and columns named like the metadata fields "
            "(dataset, external_id/image_id, patient_id, study/follow_up, age, sex, view_position, "
            "findings/finding). Images already indexed are skipped, so running it again resumes."
        ),
    )
    _add_source_arguments(cmd)
    cmd.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per request (1-{MAX_BATCH_SIZE}, default {DEFAULT_BATCH_SIZE})",
    )
    cmd.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_INGEST_CONCURRENCY,
        help=f"parallel requests (default {DEFAULT_INGEST_CONCURRENCY})",
    )
    cmd.set_defaults(handler=ingest)

    cmd = commands.add_parser("search", parents=[connection], help="find the images most like an X-ray")
    cmd.add_argument(
        "image", type=Path, nargs="?", help="the query image (PNG, JPEG or DICOM); or --query-id, or --like"
    )
    cmd.add_argument("--query-id", type=_positive_int, help="a stored image as the query")
    cmd.add_argument(
        "--region",
        type=_region,
        help="search with a region of the query: LEFT,TOP,RIGHT,BOTTOM in its pixels",
    )
    cmd.add_argument(
        "--like", type=_positive_int, action="append", default=[], metavar="ID",
        help="an image the results should be more like (repeatable); left out of the results",
    )  # fmt: skip
    cmd.add_argument(
        "--unlike", type=_positive_int, action="append", default=[], metavar="ID",
        help="an image the results should be less like (repeatable); left out of the results",
    )  # fmt: skip
    cmd.add_argument("--k", type=_positive_int, default=10, help="how many results (1-100, default 10)")
    cmd.add_argument("--filter", type=_json_object, help='e.g. \'{"sex": ["F"], "age": {"min": 40}}\'')
    cmd.add_argument("--one-per-patient", action="store_true", help="at most one image per patient")
    cmd.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    cmd.set_defaults(handler=search)

    cmd = commands.add_parser(
        "reindex",
        parents=[connection],
        help="index every stored image not yet indexed for the active model",
        description="Index every stored image that is not indexed for the active model (never, or "
        "left pending by a failure): completes interrupted ingests and fills a new model's index.",
    )
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--include-failed", action="store_true", help="retry images that failed before too")
    which.add_argument(
        "--all",
        action="store_true",
        help="every stored image, even those the catalog says are indexed (a new or emptied Milvus)",
    )
    cmd.add_argument("--concurrency", type=_positive_int, default=4, help="parallel requests (default 4)")
    cmd.set_defaults(handler=reindex)

    cmd = commands.add_parser(
        "verify",
        parents=[connection],
        help="compare the catalog with the search service and repair where they disagree",
        description="Compare, for the active model, the catalog's index states with the vectors the "
        "search service holds, every image ID in ranges of --batch: an image marked indexed without "
        "a vector is marked pending and indexed again, a vector without an image is deleted. Safe "
        "while images are added and deleted. Exit status 0 when both agree (or now do), 3 when "
        "--dry-run found them disagreeing.",
    )
    cmd.add_argument("--dry-run", action="store_true", help="report the drift, change nothing")
    cmd.add_argument(
        "--batch",
        type=_verify_batch,
        default=DEFAULT_VERIFY_BATCH,
        metavar="N",
        help=f"image IDs per request (1-{MAX_VERIFY_BATCH}, default {DEFAULT_VERIFY_BATCH})",
    )
    cmd.add_argument(
        "--concurrency", type=_positive_int, default=4, help="parallel reindex requests (default 4)"
    )
    cmd.set_defaults(handler=verify)

    cmd = commands.add_parser(
        "duplicates",
        parents=[connection],
        help="list pairs of near-identical images, grouped into clusters and flagged",
        description="Compare every indexed image (of the active model) with its nearest images, in "
        "ranges of --batch image IDs, and list the pairs at or above --threshold, grouped into "
        "clusters. Each pair is same_patient (an expected follow-up or repeat), different_patients "
        "(a likely labelling or filing error) or unknown_patient; a cluster also crosses_split when "
        "its images fall in more than one split (--split files or --split-field). CSV (one row per "
        "pair) or JSON (one object per cluster), on stdout or written whole to --out. Changes nothing.",
    )
    cmd.add_argument(
        "--threshold",
        type=_threshold,
        metavar="T",
        help="the least cosine similarity of a pair, in (0, 1] (default: the gateway's, measured "
        "for the model it serves; see the README)",
    )
    cmd.add_argument(
        "--k",
        type=_neighbors,
        metavar="K",
        help=f"nearest images looked at per image (1-{MAX_NEIGHBORS}, default 10)",
    )
    cmd.add_argument(
        "--batch",
        type=_verify_batch,
        default=DEFAULT_DUPLICATES_BATCH,
        metavar="N",
        help=f"image IDs per request (1-{MAX_VERIFY_BATCH}, default {DEFAULT_DUPLICATES_BATCH})",
    )
    splits = cmd.add_mutually_exclusive_group()
    splits.add_argument(
        "--split",
        type=_split_option,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a split: FILE lists its images by external ID (file name), one a line, like NIH's "
        "train_val_list.txt and test_list.txt; repeatable",
    )
    splits.add_argument(
        "--split-field",
        type=_split_field,
        metavar="FIELD",
        help="the metadata field that names each image's split (e.g. extra.split, dataset)",
    )
    cmd.add_argument(
        "--concurrency",
        type=_positive_int,
        default=1,
        help="ranges scanned at once (default 1; more where the search service has replicas)",
    )
    cmd.add_argument("--format", choices=DUPLICATE_FORMATS, default="csv", help="csv (default) or json")
    cmd.add_argument("--out", type=Path, metavar="FILE", help="write to FILE (default: stdout)")
    cmd.set_defaults(handler=duplicates)

    cmd = commands.add_parser(
        "eval",
        parents=[connection],
        help="measure retrieval quality on a labelled set indexed in MedSearch",
        description=(
            "For each image of a labelled set (read like `ingest` reads it) that MedSearch has indexed, "
            "search by its stored vector within the set's datasets, leaving out the image and, by "
            "default, its patient's other images; score the results against the set's labels (P@k and "
            "mAP@k, k = 1, 5, 10, 20, under 'shares a finding' and Denner et al.'s single-label "
            "protocol), each beside a random ranking's figure and with a bootstrap 95%% interval. "
            "Also same-patient recall (patient exclusion off) and near-duplicate R@1 of half-size "
            "JPEG copies. Writes eval.json, eval.md and precision_at_k.png."
        ),
    )
    _add_source_arguments(cmd)
    cmd.add_argument(
        "--out", type=Path, default=Path("eval-report"), help="report folder (default eval-report)"
    )
    cmd.add_argument(
        "--ingest", action="store_true", help="ingest the set first (resumes; skips what is indexed)"
    )
    cmd.add_argument(
        "--queries",
        type=_positive_int,
        default=0,
        metavar="N",
        help="a seeded sample of N queries (default: every image)",
    )
    cmd.add_argument("--seed", type=int, default=0, help="for sampling and the bootstrap (default 0)")
    cmd.add_argument(
        "--bootstrap",
        type=_non_negative_int,
        default=1000,
        help="bootstrap resamples (0: no intervals; default 1000)",
    )
    cmd.add_argument(
        "--keep-same-patient", action="store_true", help="let a query's own patient's other images count"
    )
    cmd.add_argument(
        "--near-duplicates",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="queries re-encoded for near-duplicate R@1 (default 20; 0 skips)",
    )
    cmd.add_argument("--concurrency", type=_positive_int, default=4, help="parallel requests (default 4)")
    cmd.set_defaults(handler=evaluate)

    cmd = commands.add_parser("stats", parents=[connection], help="counts of images and of their index state")
    cmd.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    cmd.set_defaults(handler=stats)

    _add_token_commands(commands, connection)

    cmd = commands.add_parser(
        "audit",
        parents=[connection],
        help="who searched, viewed, added or deleted what, and when (admin)",
        description="The gateway's audit trail, newest first: searches with their result IDs, image "
        "views, browsing, adds, deletes, reindexes, sign-ins, token changes and refusals. Filters "
        "combine with AND; times are ISO 8601 (without an offset: UTC).",
    )
    cmd.add_argument("--actor", help="only this actor's events (e.g. token:3, oidc:<subject>)")
    cmd.add_argument(
        "--action",
        choices=AUDIT_ACTIONS,
        metavar="ACTION",
        help=f"only events of this action: {', '.join(AUDIT_ACTIONS)}",
    )
    cmd.add_argument("--image-id", type=_positive_int, metavar="ID", help="only events about this image")
    cmd.add_argument("--since", type=_iso_time, metavar="TIME", help="events at or after this time")
    cmd.add_argument("--until", type=_iso_time, metavar="TIME", help="events before this time")
    cmd.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help=f"show the newest N events (default {DEFAULT_AUDIT_LIMIT}; not with --csv)",
    )
    output = cmd.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per event and line")
    output.add_argument(
        "--csv",
        metavar="FILE",
        help="export every event that matches to FILE as CSV, with a header row ('-': stdout)",
    )
    cmd.set_defaults(handler=audit)
    return parser


def _add_token_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], connection: argparse.ArgumentParser
) -> None:
    """`medsearch tokens create|list|revoke`."""
    group = commands.add_parser(
        "tokens",
        parents=[connection],
        help="create, list and revoke API tokens (admin)",
        description="API tokens sign `medsearch`, scripts and the web UI in: a reader searches and "
        "browses, an editor also adds, deletes and reindexes, an admin also manages tokens and reads "
        "the audit trail.",
    )
    actions = group.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")

    cmd = actions.add_parser(
        "create",
        parents=[connection],
        help="make a token and print its secret (shown only this once)",
        description="Make an API token. Its secret goes to stdout alone on one line, so that "
        "`$(medsearch tokens create …)` captures it; the gateway shows it this once only.",
    )
    cmd.add_argument("--name", required=True, help="what the token is for (1-100 characters)")
    cmd.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    cmd.add_argument(
        "--expires-at",
        type=_iso_time,
        metavar="TIME",
        help="when it stops working, ISO 8601 (without an offset: UTC; default: never)",
    )
    cmd.set_defaults(handler=tokens_create)

    cmd = actions.add_parser(
        "list", parents=[connection], help="every token, revoked and expired ones too (never a secret)"
    )
    cmd.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    cmd.set_defaults(handler=tokens_list)

    cmd = actions.add_parser(
        "revoke",
        parents=[connection],
        help="stop a token from working",
        description="Revoke an API token: changes are refused at once; a read the gateway verified "
        "in the last few seconds may still go through until its cache expires (5 s by default).",
    )
    cmd.add_argument("id", type=_positive_int, metavar="ID", help="the token's ID (see `tokens list`)")
    cmd.set_defaults(handler=tokens_revoke)


def _add_source_arguments(cmd: argparse.ArgumentParser) -> None:
    """SOURCE and how to read it: the same for `ingest` and `eval`."""
    cmd.add_argument("source", type=Path, metavar="SOURCE", help="a folder or a labels CSV")
    cmd.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="where the CSV's image paths are relative to "
        "(default: NIH: images/ next to the CSV; generic: the CSV's folder)",
    )
    cmd.add_argument("--format", choices=FORMATS, default="auto", help="the CSV's format (default: auto)")
    cmd.add_argument(
        "--path-column", metavar="COLUMN", help="generic CSV: the image path column (default: path)"
    )
    cmd.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=FIELD",
        help="generic CSV: fill FIELD (dataset, external_id, patient_id, study, age, sex, view_position, "
        "findings, extra.KEY) from COLUMN; repeatable",
    )
    cmd.add_argument(
        "--dataset",
        help="the dataset of rows that name none (default: nih for NIH's file, else the folder's name)",
    )
    cmd.add_argument(
        "--skip-missing",
        action="store_true",
        help="ingest the CSV's rows whose file exists, rather than refuse a CSV that names missing files",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = getattr(args, "url", None) or os.environ.get(URL_ENV) or DEFAULT_URL
    handler: Callable[[argparse.Namespace, GatewayClient], int] = args.handler
    try:
        client = GatewayClient(
            url,
            token=find_token(),
            read_timeout_s=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
            pool_size=getattr(args, "concurrency", 1),
        )
    except ValueError as exc:
        return _usage_error(str(exc))
    try:
        with client:
            return handler(args, client)
    except (SourceError, UsageError, EvaluationError, near.SplitError) as exc:
        return _usage_error(str(exc))
    except GatewayError as exc:
        print(f"medsearch: {describe_failure(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("medsearch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _usage_error(message: str) -> int:
    print(f"medsearch: error: {message}", file=sys.stderr)
    return EXIT_USAGE
