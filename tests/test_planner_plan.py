"""The planner without running anything: ARG scoping (global, per stage, build args, the
predefined platform args), the config each stage ends with, history texts, and which changes
reach which cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildpy.cas.store import Store
from buildpy.grammar.errors import DockerfileError
from buildpy.planner.context import ContextReader
from buildpy.planner.plan import PlanError, make_plan
from buildpy.planner.request import BuildRequest


@pytest.fixture
def store(tmp_path: Path) -> Store:
    from tests.imagekit import image_from_tars

    s = Store(tmp_path / "store")
    image_from_tars(s, [b"\0" * 1024], "docker.io/library/busybox:latest",
                    config={"Env": ["PATH=/bin", "HOME=/root"], "Cmd": ["sh"], "OnBuild": None})
    return s


def plan_of(store: Store, tmp_path: Path, text: str, **kw):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(text)
    request = BuildRequest(ctx, ctx / "Dockerfile", **kw)
    return make_plan(store, request, ContextReader(ctx))


def final_config(plan) -> dict:
    return plan.stages[plan.target].config["config"]


def run_env(plan) -> dict[str, str]:
    step = [s for s in plan.steps() if s.op == "run"][-1]
    return dict(e.split("=", 1) for e in step.env)


def test_global_arg_reaches_from_but_not_the_stage_until_redeclared(store, tmp_path):
    plan = plan_of(store, tmp_path, "ARG B=busybox\nARG V=1\nFROM $B\nRUN echo\nARG V\nRUN echo $V\n")
    envs = [dict(e.split("=", 1) for e in s.env) for s in plan.steps() if s.op == "run"]
    assert "V" not in envs[0]
    assert envs[1]["V"] == "1"
    assert plan.stages[0].base.name == "busybox"


def test_build_arg_overrides_defaults_and_undeclared_ones_are_not_seen(store, tmp_path):
    plan = plan_of(store, tmp_path, "FROM busybox\nARG A=1\nRUN echo\n", build_args={"A": "2", "B": "3"})
    env = run_env(plan)
    assert env["A"] == "2" and "B" not in env


def test_proxy_args_need_no_declaration_and_stay_out_of_keys_and_history(store, tmp_path):
    a = plan_of(store, tmp_path, "FROM busybox\nRUN echo\n", build_args={"http_proxy": "http://p:1"})
    b = plan_of(store, tmp_path, "FROM busybox\nRUN echo\n")
    assert run_env(a)["http_proxy"] == "http://p:1"
    assert a.steps()[0].key == b.steps()[0].key
    assert "proxy" not in a.steps()[0].history


def test_platform_args_are_global_and_declared_in_stages(store, tmp_path):
    plan = plan_of(store, tmp_path, "FROM busybox\nARG TARGETARCH\nARG TARGETVARIANT\nARG BUILDPLATFORM\n"
                   "ENV T=$TARGETARCH V=$TARGETVARIANT B=$BUILDPLATFORM\n", platform="linux/arm64/v8")
    env = dict(e.split("=", 1) for e in final_config(plan)["Env"])
    assert env["T"] == "arm64" and env["V"] == "v8"
    assert env["B"].startswith("linux/")


def test_env_wins_over_arg_and_one_env_sees_the_values_before_it(store, tmp_path):
    # as Docker documents: `ENV abc=bye def=$abc` gives def the value abc had before
    plan = plan_of(store, tmp_path, "FROM busybox\nARG X=arg\nENV X=env Y=${X}-y\nENV Z=$X-$Y\nRUN echo\n")
    cfg = final_config(plan)
    assert "X=env" in cfg["Env"] and "Y=arg-y" in cfg["Env"] and "Z=env-arg-y" in cfg["Env"]
    assert run_env(plan)["X"] == "env"


def test_stage_from_stage_inherits_config_and_args(store, tmp_path):
    plan = plan_of(store, tmp_path, "FROM busybox AS a\nARG V=7\nENV E=1\nWORKDIR /w\nFROM a\nRUN echo\n")
    env = run_env(plan)
    assert env["E"] == "1" and env["V"] == "7"
    step = [s for s in plan.steps() if s.op == "run"][-1]
    assert step.workdir == "/w"
    assert step.history == "RUN |1 V=7 /bin/sh -c echo # buildkit"


def test_entrypoint_resets_cmd_from_the_base_but_not_one_set_in_the_stage(store, tmp_path):
    assert final_config(plan_of(store, tmp_path, "FROM busybox\nENTRYPOINT [\"x\"]\n"))["Cmd"] is None
    cfg = final_config(plan_of(store, tmp_path, "FROM busybox\nCMD [\"c\"]\nENTRYPOINT e\n"))
    assert cfg["Cmd"] == ["c"] and cfg["Entrypoint"] == ["/bin/sh", "-c", "e"]


def test_shell_changes_shell_forms(store, tmp_path):
    plan = plan_of(store, tmp_path, 'FROM busybox\nSHELL ["/bin/ash", "-eo"]\nRUN echo\nCMD run\n')
    assert [s for s in plan.steps() if s.op == "run"][0].argv == ("/bin/ash", "-eo", "echo")
    assert final_config(plan)["Cmd"] == ["/bin/ash", "-eo", "run"]
    assert final_config(plan)["Shell"] == ["/bin/ash", "-eo"]


def test_metadata_instructions_fill_the_config_as_buildkit(store, tmp_path):
    df = ("FROM busybox\nLABEL a=1 b=\"two words\"\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data [\"/x\"]\n"
          "STOPSIGNAL SIGINT\nUSER app:staff\nMAINTAINER me\nONBUILD RUN echo hi\n"
          "HEALTHCHECK --interval=30s --retries=2 CMD [\"true\"]\n")
    df = df.replace('VOLUME /data ["/x"]', "VOLUME /data /x")
    plan = plan_of(store, tmp_path, df)
    cfg = final_config(plan)
    assert cfg["Labels"] == {"a": "1", "b": "two words"}
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/x": {}}
    assert cfg["StopSignal"] == "SIGINT" and cfg["User"] == "app:staff"
    assert cfg["OnBuild"] == ["RUN echo hi"]
    assert cfg["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 30_000_000_000, "Retries": 2}
    assert plan.stages[plan.target].config["author"] == "me"
    history = [s.history for s in plan.steps()]
    assert "EXPOSE [53/udp 80/tcp 8000/tcp 8001/tcp]" in history  # BuildKit sorts the words
    assert ("HEALTHCHECK {Test:[CMD true] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s "
            "Retries:2}") in history


def test_label_changes_no_key_env_changes_the_run_after_it(store, tmp_path):
    base = plan_of(store, tmp_path, "FROM busybox\nLABEL a=1\nENV E=1\nRUN echo\n")
    label = plan_of(store, tmp_path, "FROM busybox\nLABEL a=2\nENV E=1\nRUN echo\n")
    env = plan_of(store, tmp_path, "FROM busybox\nLABEL a=1\nENV E=2\nRUN echo\n")
    key = [s.key for s in base.steps() if s.key]
    assert key == [s.key for s in label.steps() if s.key]
    assert key != [s.key for s in env.steps() if s.key]


def test_keys_chain_through_parents(store, tmp_path):
    a = plan_of(store, tmp_path, "FROM busybox\nRUN echo 1\nRUN echo 2\n")
    b = plan_of(store, tmp_path, "FROM busybox\nRUN echo 0\nRUN echo 2\n")
    assert a.steps()[1].key != b.steps()[1].key
    assert a.steps()[1].inputs["argv"] == b.steps()[1].inputs["argv"]


def test_label_flag_lands_on_the_target_only(store, tmp_path):
    plan = plan_of(store, tmp_path, "FROM busybox AS a\nFROM a\n", labels={"k": "v"})
    assert final_config(plan)["Labels"] == {"k": "v"}
    assert not plan.stages[0].config["config"].get("Labels")


def test_target_plans_only_the_stages_it_needs(store, tmp_path):
    plan = plan_of(store, tmp_path, "FROM busybox AS a\nFROM busybox AS b\nFROM a AS c\n", target="c")
    assert sorted(plan.stages) == [0, 2]


def test_missing_image_and_bad_instructions_name_the_place(store, tmp_path):
    with pytest.raises(PlanError, match=r"Dockerfile:2: image 'nothere' is not in the store.*buildpy load"):
        plan_of(store, tmp_path, "FROM scratch\nFROM nothere\n")
    with pytest.raises(DockerfileError, match="invalid signal"):
        plan_of(store, tmp_path, "FROM busybox\nSTOPSIGNAL SIGNOPE\n")
    with pytest.raises(DockerfileError, match="RUN --device"):
        plan_of(store, tmp_path, "# syntax=docker/dockerfile:1-labs\nFROM busybox\nRUN --device=/dev/x true\n")
    with pytest.raises(DockerfileError, match="chmod"):
        plan_of(store, tmp_path, "FROM busybox\nARG M=999\nCOPY --chmod=$M a /a\n")


def test_heredoc_runs_as_the_shell_reads_it(store, tmp_path):
    plan = plan_of(store, tmp_path, "FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\n")
    assert plan.steps()[0].argv == ("/bin/sh", "-c", "echo a\necho b\n")
    plan = plan_of(store, tmp_path, "FROM busybox\nRUN <<EOF\n#!/bin/sh\necho a\nEOF\n")
    step = plan.steps()[0]
    assert step.argv == ("/dev/pipes/EOF",) and step.inline_files == (("EOF", b"#!/bin/sh\necho a\n"),)
    plan = plan_of(store, tmp_path, "FROM busybox\nRUN cat <<EOF > /x\nhi\nEOF\n")
    assert plan.steps()[0].argv == ("/bin/sh", "-c", "cat <<EOF > /x\nhi\nEOF")


def test_onbuild_of_the_base_image_runs_first(store, tmp_path):
    from tests.imagekit import image_from_tars

    image_from_tars(store, [b"\0" * 1024], "parent", config={"OnBuild": ["RUN echo trigger"]})
    plan = plan_of(store, tmp_path, "FROM parent\nRUN echo own\n")
    assert [s.argv[-1] for s in plan.steps()] == ["echo trigger", "echo own"]
    assert not final_config(plan).get("OnBuild")


def test_unused_build_args_are_reported_and_foreign_platform_runs_refused(store, tmp_path):
    plan = plan_of(store, tmp_path, "ARG G\nFROM busybox\nARG A\nRUN echo\n",
                   build_args={"A": "1", "G": "2", "NOPE": "3", "HTTP_PROXY": "p"})
    assert plan.unused_args == ("NOPE",)
    with pytest.raises(DockerfileError, match="emulation"):
        plan_of(store, tmp_path, "FROM --platform=linux/s390x busybox\nRUN echo\n")
    plan_of(store, tmp_path, "FROM --platform=linux/s390x busybox\nCOPY --from=busybox /bin/sh /sh\n".replace(
        "COPY --from=busybox /bin/sh /sh", "ENV A=1"))
