"""Many images sent to the gateway at once: requests run on a few threads, their outcomes
counted as they come back, an outage or Ctrl-C stopping the rest (ingest and reindex)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice

from tqdm import tqdm

from medsearch_client.client import (
    TOKEN_ENV,
    GatewayError,
    Indexed,
    default_token_file,
)
from medsearch_client.terminal import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
)

# After this many images in a row failed with the gateway saying a service is down (each
# after its retries), the rest are not tried: re-running resumes where this stopped.
OUTAGE_LIMIT = 10


class Outcome(Enum):
    NEW = "new"
    COMPLETED = "completed"
    ALREADY_INDEXED = "already indexed"


def outcome_of(result: Indexed) -> Outcome:
    """New bytes (201); stored before but now indexed for the first time; or nothing to do."""
    if result.already_indexed:
        return Outcome.ALREADY_INDEXED
    return Outcome.NEW if result.created else Outcome.COMPLETED


def describe_failure(error: GatewayError) -> str:
    """The gateway's own explanation, its status, the service it named, and what was kept."""
    notes = [f"HTTP {error.status}" if error.status is not None else "no answer"]
    if error.dependency:
        notes[0] += f", {error.dependency}"
    if error.image_id is not None:
        notes.append(f"image {error.image_id} {error.problem.get('index_state') or 'pending'}")
    described = f"{error.detail} ({'; '.join(notes)})"
    if error.status == 401:
        described += (
            f"; sign in with an API token in {TOKEN_ENV} or the file {default_token_file()}"
            " (`make run` writes one there; an admin makes more with `medsearch tokens create`)"
        )
    return described


@dataclass
class Tally:
    """What a batch did, counted as results arrive."""

    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    failures: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    not_tried: int = 0
    interrupted: bool = False
    outage_streak: int = 0

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1
        self.outage_streak = 0

    def fail(self, what: str, why: str, *, outage: bool = False) -> None:
        self.failures.append((what, why))
        self.outage_streak = self.outage_streak + 1 if outage else 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        """`N new, M completed, K already indexed, F failed`."""
        return (
            f"{self.counts[Outcome.NEW]} new, {self.counts[Outcome.COMPLETED]} completed, "
            f"{self.counts[Outcome.ALREADY_INDEXED]} already indexed, {self.failed} failed"
        )

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failures or self.not_tried else EXIT_OK


# What one image of a job came to: indexed, or why not (the gateway's answer, or a file
# that could not be read).
Result = Indexed | GatewayError | OSError


@dataclass(frozen=True)
class Job:
    """Images sent in one request: `names` say how failures name them (files, image IDs),
    and `run` gives one result per name, in order."""

    names: list[str]
    run: Callable[[], Sequence[Result]]


def single(name: str, call: Callable[[], Indexed]) -> Job:
    """A job of one image and one call."""
    return Job([name], lambda: [call()])


def run_jobs(jobs: Sequence[Job], concurrency: int, description: str) -> Tally:
    """Run the jobs on `concurrency` threads with a progress bar on stderr. Only a few jobs
    are queued ahead of the workers, so an outage or Ctrl-C stops the batch promptly."""
    tally = Tally()
    queue = iter(jobs)
    running: dict[Future[Sequence[Result]], Job] = {}
    total = sum(len(job.names) for job in jobs)
    with (
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="medsearch") as pool,
        tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None) as bar,
    ):
        try:
            for job in islice(queue, 2 * concurrency):
                running[pool.submit(job.run)] = job
            while running and tally.outage_streak < OUTAGE_LIMIT:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    _record(tally, job, future)
                    bar.update(len(job.names))
                bar.set_postfix_str(tally.summary(), refresh=False)
                for job in islice(queue, len(done)):
                    running[pool.submit(job.run)] = job
        except KeyboardInterrupt:
            tally.interrupted = True
        for future in running:
            future.cancel()
    # Leaving the pool waited for the jobs that were already running: count what they did.
    for future, job in running.items():
        if future.cancelled():
            tally.not_tried += len(job.names)
        else:
            _record(tally, job, future)
    tally.not_tried += sum(len(job.names) for job in queue)
    return tally


def _record(tally: Tally, job: Job, future: Future[Sequence[Result]]) -> None:
    try:
        results: Sequence[Result] = future.result()
    except (GatewayError, OSError) as exc:
        results = [exc] * len(job.names)  # the whole request failed: each image with it
    for name, result in zip(job.names, results, strict=True):
        if isinstance(result, GatewayError):
            tally.fail(name, describe_failure(result), outage=result.retryable)
        elif isinstance(result, OSError):
            tally.fail(name, f"cannot read the file: {result.strerror or result}")
        else:
            tally.add(outcome_of(result))


def report(tally: Tally) -> int:
    """The summary line on stdout, then each failure on stderr; the exit code."""
    print(tally.summary(), flush=True)
    for what, why in tally.failures:
        print(f"failed: {what}: {why}", file=sys.stderr)
    if tally.interrupted or tally.not_tried:
        reason = (
            "interrupted"
            if tally.interrupted
            else f"stopped after {OUTAGE_LIMIT} images in a row failed with a service down"
        )
        print(f"{reason}; {tally.not_tried} not tried: run the same command again to resume", file=sys.stderr)
    return tally.exit_code()
