"""The filesystem-changing steps, run: RUN in the sandbox, COPY/ADD as a layer written from
the sources, WORKDIR's mkdir. Each returns the layer it stored, or None when it changed
nothing.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from buildpy.cas.layers import Layer, add_layer
from buildpy.grammar.instructions import Add, FileCopy, Run
from buildpy.planner.plan import Step

if TYPE_CHECKING:
    from buildpy.executor.build import StageState, _Execution


def run(ex: _Execution, step: Step, state: StageState) -> Layer | None:
    if step.op == "run":
        return _run(ex, step, state)
    if step.op == "copy":
        return _copy(ex, step, state)
    if step.op == "workdir":
        return _workdir(ex, step, state)
    raise AssertionError(f"no operation for {step.op}")


# --- RUN ---------------------------------------------------------------------------------------


def _run(ex: _Execution, step: Step, state: StageState) -> Layer | None:
    from buildpy.executor.build import BuildError
    from buildpy.sandbox.mounts import RunMount
    from buildpy.sandbox.spec import Process
    from buildpy.sandbox.step import run_step

    ins = step.instruction
    assert isinstance(ins, Run)
    mounts: list[RunMount] = []
    for m in step.mounts:
        o = m.options
        from_dir: Path | None = None
        if m.from_stage is not None:
            from_dir = ex.stage_root(m.from_stage)
        elif m.from_image is not None:
            from_dir = ex.image_root(m.from_image)
        elif m.from_dir is not None:
            from_dir = m.from_dir
        elif m.type == "bind":
            from_dir = ex.plan.context_reader.root
            if ex.plan.context_reader.ignore is not None and m.selection is not None:
                from_dir = _filtered_context(ex, m.selection)  # .dockerignore hides files from mounts too
        source = m.source
        if m.type in ("bind", "cache") and source:
            source = posixpath.normpath("/" + source).lstrip("/") or "."
        mounts.append(RunMount(
            type=m.type, target=m.target, source=source if m.type != "bind" else (source or "."),
            from_dir=from_dir, id=o.id, sharing=o.sharing or "shared", mode=o.mode, uid=o.uid, gid=o.gid,
            readonly=o.readonly, required=o.required, size=o.size, env=o.env,
        ))
    pipes: Path | None = None
    if step.inline_files:
        pipes = Path(tempfile.mkdtemp(dir=ex.tmp_dir(), prefix="pipes-"))
        for name, data in step.inline_files:
            p = pipes / name
            p.write_bytes(data)
            p.chmod(0o755)
        pipes.chmod(0o755)
        mounts.append(RunMount(type="bind", target="/dev/pipes", source=".", from_dir=pipes))
    network = ins.network if ins.network and ins.network != "default" else ex.options.network
    out = ex.progress.output
    ex.need(state.layers)
    result = run_step(
        ex.store,
        layers=state.layers,
        diff_ids=state.diff_ids,
        process=Process(args=step.argv, env=step.env, cwd=step.workdir, user=step.user),
        mounts=mounts,
        network=network,
        compression=ex.options.compression,
        hostname=ex.options.hostname,
        insecure=ins.security == "insecure",
        stdout=lambda data: out(step, data),
        stderr=lambda data: out(step, data),
        secrets=ex.options.secrets,
        ssh_agents=ex.options.ssh_agents,
        source_date_epoch=ex.plan.source_date_epoch,
        rootfs_mode=ex.options.rootfs_mode,  # type: ignore[arg-type]
        allow=ex.options.allow,
        cancel_fd=ex.options.cancel.fileno() if ex.options.cancel is not None else None,
    )
    if result.exit_code != 0:
        tail = ex.progress.tail(step)
        shown = ("\n" + "\n".join(f"  {line}" for line in tail)) if tail else ""
        first = ins.text.splitlines()[0]
        ex.progress.failed(step, f"exit code {result.exit_code}")
        raise BuildError(f"{step.where}: {first}: did not complete successfully: exit code: "
                         f"{result.exit_code}{shown}")
    return result.layer


def _filtered_context(ex: _Execution, selection) -> Path:  # noqa: ANN001 - planner.context.Selection
    """The part of the context a bind mount reads, without what `.dockerignore` leaves out:
    hardlinks where the store shares the context's file system, copies otherwise."""
    import os
    import shutil

    root = ex.plan.context_reader.root
    target = Path(tempfile.mkdtemp(dir=ex.tmp_dir(), prefix="context-"))
    target.chmod(0o755)
    for m in selection.matches:
        for e in (m.entry, *m.children):
            if not e.rel:
                continue
            src, dst = root / e.rel, target / e.rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if e.kind == "dir":
                dst.mkdir(mode=e.mode, exist_ok=True)
            elif e.kind == "symlink":
                os.symlink(e.linkname, dst)
            elif e.kind == "file":
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    return target


# --- COPY / ADD --------------------------------------------------------------------------------


def _copy(ex: _Execution, step: Step, state: StageState) -> Layer | None:
    from buildpy.executor.copy import CopySpec
    from buildpy.sandbox import snapshots

    ins = step.instruction
    assert isinstance(ins, FileCopy)
    is_add = isinstance(ins, Add)
    spec = CopySpec(
        dest=ins.dest,
        workdir=step.workdir,
        chown=ins.chown,
        chmod=ins.chmod,
        link=ins.link,
        parents=bool(getattr(ins, "parents", False)),
        add=is_add,
        # a remote archive is not unpacked unless asked (BuildKit's rule for http sources)
        unpack=(ins.unpack if ins.unpack is not None else (False if step.source_root else None))
        if isinstance(ins, Add) else None,
        from_context=step.from_stage is None and step.from_image is None,
        source_date_epoch=ex.plan.source_date_epoch,
    )
    with ex.lowers(state) as lowers:
        entries = _copy_entries(ex, step, spec, lowers)
    try:
        layer = add_layer(ex.store, entries.tar(), ex.options.compression)
        # as root the snapshot the next steps need is written from the entries, not unpacked
        if os.geteuid() == 0 and not snapshots.snapshot_path(ex.store, layer.diff_id).exists():
            snapshot = snapshots.new_dir(ex.store)
            try:
                entries.write_snapshot(snapshot)
            except BaseException:
                snapshots.remove_tree(snapshot)
                raise
            snapshots.publish(ex.store, layer.diff_id, snapshot)
    finally:
        entries.close()
    return layer


def _copy_entries(ex: _Execution, step: Step, spec, lowers):  # noqa: ANN001, ANN202 - copy.CopyLayer
    from buildpy.executor.copy import copy_inline_layer, copy_layer
    from buildpy.planner.context import ContextReader

    ins = step.instruction
    assert isinstance(ins, FileCopy)
    is_add = isinstance(ins, Add)
    if spec.link and not spec.chmod:  # BuildKit links only without --chmod
        lowers = ()
    if ins.inline:
        files = [(s.name, s.data.encode("utf-8", "surrogateescape")) for s in ins.inline]
        return copy_inline_layer(files, spec, lowers)
    if step.selection is not None:
        root = step.source_root or ex.plan.context_reader.root
        selection = step.selection
    else:
        root = ex.stage_root(step.from_stage) if step.from_stage is not None else ex.image_root(
            step.from_image)  # type: ignore[arg-type]
        what = "ADD" if is_add else "COPY"
        selection = ContextReader(root).select(ins.sources, excludes=ins.excludes, what=what)
    return copy_layer(selection, root, spec, lowers)


# --- WORKDIR -----------------------------------------------------------------------------------


def _workdir(ex: _Execution, step: Step, state: StageState) -> Layer | None:
    """BuildKit's `mkdir -p` of the workdir, owned by USER: a layer only when it was missing."""
    path = step.inputs["path"]
    with ex.lowers(state) as lowers:
        missing = _missing_dirs(lowers, path)
        if not missing:
            return None
        uid, gid = _owner(lowers, step.user) if step.user else (0, 0)
    epoch = ex.plan.source_date_epoch
    mtime = epoch if epoch is not None else 0
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for rel, existing in missing:
            ti = tarfile.TarInfo(rel)
            ti.type = tarfile.DIRTYPE
            if existing is not None:  # a parent kept as it is
                st = existing.st
                ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
                ti.mtime = int(st.st_mtime) if epoch is None else min(int(st.st_mtime), epoch)
            else:
                ti.mode, ti.uid, ti.gid, ti.mtime = 0o755, uid, gid, mtime
            t.addfile(ti)
    buf.seek(0)
    return add_layer(ex.store, buf, ex.options.compression)


def _missing_dirs(lowers: tuple[Path, ...], path: str) -> list[tuple[str, object]]:
    """The entries a mkdir -p of `path` writes: existing parents (kept) and the dirs it makes;
    empty when the path exists. Symlinks in the image's path are not followed here: a link on
    the way is refused by the sandbox the same way BuildKit's mkdir refuses it."""
    from buildpy.sandbox import snapshots

    parts = [p for p in path.split("/") if p]
    out: list[tuple[str, object]] = []
    made = False
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        entry = None if made else snapshots.lookup(lowers, rel)
        if entry is not None and entry.is_dir:
            out.append((rel, entry))
            continue
        if entry is not None:
            from buildpy.executor.build import BuildError

            raise BuildError(f"cannot create the workdir {path}: /{rel} is not a directory")
        made = True
        out.append((rel, None))
    return out if made else []


def _owner(lowers: tuple[Path, ...], user: str) -> tuple[int, int]:
    from buildpy.sandbox import snapshots, users

    def text(rel: str) -> str | None:
        entry = snapshots.lookup(lowers, rel)
        if entry is None or not stat.S_ISREG(entry.st.st_mode):
            return None
        return entry.path.read_text(errors="replace")

    who = users.resolve(user, text("etc/passwd"), text("etc/group"))
    return who.uid, who.gid

