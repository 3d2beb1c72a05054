"""Running a plan: each needed stage on its own thread, a step running as soon as what it
reads is ready (its stage's previous step; the stages it copies or mounts from), at most
`jobs` steps working at once. A step whose key has a cache record is reused without running;
the others run (RUN in the sandbox, COPY/ADD and WORKDIR written as layers directly) and are
recorded. The first failure stops the build: other stages stop at their next step. A cancel
token (`options.cancel`, cancel.py) stops it the same way and kills the RUN steps running.

The target's image is written to the store (not tagged: the caller names it). History entries
carry the time their layer was first made (or SOURCE_DATE_EPOCH), so a rebuild that reuses
every step gives the same image digest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildpy.cas import buildcache
from buildpy.cas.buildcache import CacheRecord
from buildpy.cas.image import Image, write_image
from buildpy.cas.media import Descriptor
from buildpy.cas.store import Store
from buildpy.executor.options import BuildOptions, BuildResult
from buildpy.executor.progress import Progress
from buildpy.planner.explain import Previous
from buildpy.planner.plan import Plan, Step, StagePlan

if TYPE_CHECKING:
    from buildpy.registry.blobsource import BlobSource

COMMENT = "buildkit.dockerfile.v0"


class BuildError(Exception):
    """A step failed: its place, what it was and why, with the tail of its output."""

    user_facing = True


class _Cancelled(Exception):
    pass


@dataclass
class StageState:
    """A stage's filesystem and history as its steps advance."""

    layers: list[Descriptor]
    diff_ids: list[str]
    history: list[dict[str, Any]]
    created: str


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def execute(store: Store, plan: Plan, options: BuildOptions, progress: Progress,
            previous: Previous | None = None, *, imported: Mapping[str, CacheRecord] | None = None,
            blobs: BlobSource | None = None) -> BuildResult:
    """Run `plan`. `imported`: cache records from `--cache-from`, whose layers `blobs` fetches
    (with those of base images resolved in a registry) when a step or the image needs them."""
    return _Execution(store, plan, options, progress, previous, imported or {}, blobs).run()


class _Execution:
    def __init__(self, store: Store, plan: Plan, options: BuildOptions, progress: Progress,
                 previous: Previous | None, imported: Mapping[str, CacheRecord],
                 blobs: BlobSource | None) -> None:
        self.store = store
        self.imported = imported
        self.blobs = blobs
        self.records: list[tuple[int, str, CacheRecord]] = []
        self.plan = plan
        self.options = options
        self.progress = progress
        self.previous = previous
        # Job slots bound the work done in this process (COPY, ADD, WORKDIR, and writing layers):
        # the core count by default. A RUN's process is the command's own; it runs unbounded by
        # default, as BuildKit runs independent steps, and `--jobs N` bounds RUN steps too.
        self.jobs = threading.Semaphore(options.jobs or os.cpu_count() or 1)
        self.run_jobs = threading.Semaphore(options.jobs) if options.jobs else contextlib.nullcontext()
        self.futures: dict[int, Future[StageState]] = {i: Future() for i in plan.order}
        self.failed = threading.Event()
        self.counts_lock = threading.Lock()
        self.ran = 0
        self.cached = 0
        self.roots: dict[tuple[str, int | str], Path] = {}
        self.roots_lock = threading.Lock()
        self.tmp: Path | None = None

    # --- the whole build -------------------------------------------------------------------

    def run(self) -> BuildResult:
        threads = [threading.Thread(target=self._stage_thread, args=(i,), name=f"stage-{i}", daemon=True)
                   for i in self.plan.order]
        try:
            with self.store.lease():
                for t in threads:
                    t.start()
                errors: list[BaseException] = []
                for i in self.plan.order:
                    try:
                        self.futures[i].result()
                    except _Cancelled:
                        pass
                    except BaseException as e:  # noqa: BLE001 - re-raised below, first one wins
                        errors.append(e)
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]
                state = self.futures[self.plan.target].result()
                self.need(state.layers)
                image = self._write(self.plan.stages[self.plan.target], state)
        except KeyboardInterrupt:
            self.failed.set()
            raise
        finally:
            self._cleanup()
        return BuildResult(image, self.ran, self.cached, tuple(self.records))

    def _write(self, stage: StagePlan, state: StageState) -> Image:
        config = {k: v for k, v in stage.config.items()}
        config["created"] = state.created
        config["rootfs"] = {"type": "layers", "diff_ids": list(state.diff_ids)}
        config["history"] = state.history
        return write_image(self.store, config, list(state.layers))

    # --- one stage -------------------------------------------------------------------------

    def _stage_thread(self, index: int) -> None:
        future = self.futures[index]
        try:
            future.set_result(self._stage(self.plan.stages[index]))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            if not isinstance(e, _Cancelled):
                self.failed.set()
            future.set_exception(e)

    def _wait(self, index: int) -> StageState:
        future = self.futures[index]
        while True:
            if self.failed.is_set() and not future.done():
                raise _Cancelled()
            try:
                return future.result(timeout=0.2)
            except TimeoutError:
                continue
            except _Cancelled:
                raise
            except BaseException:
                raise _Cancelled() from None

    def _stage(self, stage: StagePlan) -> StageState:
        base = stage.base
        if base.kind == "stage":
            assert base.stage is not None
            parent = self._wait(base.stage)
            state = StageState(list(parent.layers), list(parent.diff_ids), [dict(h) for h in parent.history],
                               parent.created)
        elif base.image is not None:
            img = base.image
            state = StageState(img.layers, img.diff_ids, [dict(h) for h in img.config.get("history") or []],
                               str(img.config.get("created") or rfc3339(self.plan.source_date_epoch or 0)))
        else:
            state = StageState([], [], [], rfc3339(self.plan.source_date_epoch or 0))
        no_cache = self.options.no_cache or stage.name in self.options.no_cache_filter or str(
            stage.index) in self.options.no_cache_filter
        if base.kind == "context":
            self._context_base(stage, state, no_cache)
        for step in stage.steps:
            self._check_cancel()
            if self.failed.is_set():
                raise _Cancelled()
            if step.op == "meta":
                state.history.append(self._history(step, state.created, empty=True))
                continue
            for index in self._reads(step):  # what it copies or mounts from, ready first
                self._wait(index)
            self.progress.start(step)
            record = None if no_cache else self._lookup(step.key)
            if record is not None:
                self.progress.cached(step)
                with self.counts_lock:
                    self.cached += 1
            else:
                if self.previous is not None:
                    self.progress.reason(step, self.previous.reason(step, no_cache=no_cache))
                record = self._run_step(step, state)
                with self.counts_lock:
                    self.ran += 1
            if record.layer is not None:
                state.layers.append(record.layer)
                state.diff_ids.append(record.diff_id)
            with self.counts_lock:
                self.records.append((stage.index, step.key, record))
            state.created = record.created or state.created
            state.history.append(self._history(step, state.created, empty=record.layer is None))
        return state

    def _context_base(self, stage: StagePlan, state: StageState, no_cache: bool) -> None:
        """FROM a directory build context: its files, as a COPY to / would write them, are the
        stage's first layer (cached under the base's key like any step's)."""
        base = stage.base
        record = None if no_cache else self._lookup(base.key)
        if record is None:
            from buildpy.cas.layers import add_layer
            from buildpy.executor.copy import CopySpec, copy_layer

            with self.jobs:
                assert base.selection is not None and base.source is not None
                spec = CopySpec(dest="/", source_date_epoch=self.plan.source_date_epoch)
                entries = copy_layer(base.selection, base.source, spec, ())
                try:
                    layer = add_layer(self.store, entries.tar(), self.options.compression)
                finally:
                    entries.close()
            epoch = self.plan.source_date_epoch
            record = CacheRecord(layer.descriptor, layer.diff_id, rfc3339(epoch if epoch is not None else time.time()))
            buildcache.record(self.store, base.key, record)
        assert record.layer is not None
        state.layers.append(record.layer)
        state.diff_ids.append(record.diff_id)
        state.created = record.created or state.created
        state.history.append({"created": state.created, "created_by": f"FROM {base.name} (build context)",
                              "comment": COMMENT})

    def _lookup(self, key: str) -> CacheRecord | None:
        record = buildcache.lookup(self.store, key)
        if record is not None:
            return record
        record = self.imported.get(key)
        if record is None:
            return None
        if record.layer is not None and (self.blobs is None or not self.blobs.can_fetch(record.layer.digest)):
            return None
        buildcache.record(self.store, key, record)  # a miss here until its layer is fetched
        return record

    def need(self, layers: list[Descriptor]) -> None:
        """The blobs of `layers` in the store: fetched now if they are only in a registry."""
        if self.blobs is not None:
            self.blobs.ensure(layers)

    def _history(self, step: Step, created: str, empty: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"created": created, "created_by": step.history, "comment": COMMENT}
        if empty:
            entry["empty_layer"] = True
        return entry

    def _check_cancel(self) -> None:
        if self.options.cancel is not None:
            self.options.cancel.check()

    def _run_step(self, step: Step, state: StageState) -> CacheRecord:
        with self.run_jobs if step.op == "run" else self.jobs:
            self._check_cancel()
            if self.failed.is_set():
                raise _Cancelled()
            started = time.monotonic()
            try:
                from buildpy.executor import ops

                layer = ops.run(self, step, state)
            except _Cancelled:
                raise
            except BuildError as e:
                self._check_cancel()  # a step killed by the cancel fails for that reason, not its own
                self.progress.failed(step, str(e))
                raise
            except Exception as e:
                self._check_cancel()
                if getattr(e, "user_facing", False):
                    self.progress.failed(step, str(e))
                    raise BuildError(f"{step.where}: {step.instruction.text.splitlines()[0]}: {e}") from None
                raise
            epoch = self.plan.source_date_epoch
            created = rfc3339(epoch if epoch is not None else time.time())
            record = CacheRecord(layer.descriptor if layer else None, layer.diff_id if layer else "", created)
            buildcache.record(self.store, step.key, record)
            self.progress.done(step, time.monotonic() - started)
            return record

    def _reads(self, step: Step) -> list[int]:
        out = [step.from_stage] if step.from_stage is not None else []
        out += [m.from_stage for m in step.mounts if m.from_stage is not None]
        return out

    # --- roots of stages and images, for COPY --from and RUN --mount from ------------------

    def tmp_dir(self) -> Path:
        with self.roots_lock:
            if self.tmp is None:
                self.tmp = Path(tempfile.mkdtemp(dir=self.store.tmp_dir, prefix="build-"))
            return self.tmp

    def stage_root(self, stage: int) -> Path:
        state = self._wait(stage)
        return self._root(("stage", stage), state.layers, state.diff_ids)

    def image_root(self, image: Image) -> Path:
        return self._root(("image", image.digest), image.layers, image.diff_ids)

    def _root(self, key: tuple[str, int | str], layers: list[Descriptor], diff_ids: list[str]) -> Path:
        from buildpy.sandbox import snapshots

        with self.roots_lock:
            if key in self.roots:
                return self.roots[key]
        target = self.tmp_dir() / f"{key[0]}-{str(key[1]).replace(':', '-')}"
        self.need(layers)
        with snapshots.use(self.store, layers, diff_ids) as lowers:
            if lowers:
                snapshots.materialize(lowers, target)
            else:
                target.mkdir()
        with self.roots_lock:
            self.roots[key] = target
        return target

    @contextlib.contextmanager
    def lowers(self, state: StageState) -> Iterator[tuple[Path, ...]]:
        from buildpy.sandbox import snapshots

        self.need(state.layers)
        with snapshots.use(self.store, state.layers, state.diff_ids) as lowers:
            yield lowers

    def _cleanup(self) -> None:
        if self.tmp is not None:
            from buildpy.sandbox.snapshots import remove_tree

            with contextlib.suppress(OSError):
                remove_tree(self.tmp)
            if self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)

