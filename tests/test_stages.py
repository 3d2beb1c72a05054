"""Stages and the stage DAG: meta ARGs, names, FROM / COPY --from / RUN --mount=from resolution,
cycles, build order for a target, image references, the `describe_stages` listing.

BuildKit's dockerfile2llb (convert.go) is the model for resolution; each error is checked for its
message and its place (file, line, column).
"""

from __future__ import annotations

import pytest

from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.instructions import Arg, ArgDef, Copy, Run
from buildpy.grammar.parser import parse
from buildpy.grammar.shell import expand_word
from buildpy.grammar.stages import describe_stages, is_image_reference, stages_from


def dockerfile(text: str, file: str = "Dockerfile"):
    return stages_from(parse(text, file))


def error_of(text: str, file: str = "Dockerfile") -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        dockerfile(text, file)
    return info.value


def assert_error(text: str, message: str, line: int, col: int) -> None:
    error = error_of(text)
    assert (error.message, error.file, error.line, error.col) == (message, "Dockerfile", line, col)


# -- meta ARGs and what may come before FROM ------------------------------------------------------


def test_meta_args_before_the_first_from():
    df = dockerfile("ARG VERSION=3.19\n# a comment\nARG DEBUG OTHER=x\nFROM alpine:$VERSION\nARG DEBUG\nRUN true\n")
    assert all(isinstance(a, Arg) for a in df.meta_args)
    assert [a.args for a in df.meta_args] == [
        (ArgDef("VERSION", "3.19"),),
        (ArgDef("DEBUG", None), ArgDef("OTHER", "x")),
    ]
    assert [a.line for a in df.meta_args] == [1, 3]
    (stage,) = df.stages
    # an ARG after FROM belongs to the stage, not to the meta args
    assert [type(i).__name__ for i in stage.instructions] == ["Arg", "Run"]
    assert stage.base == "alpine:$VERSION"


def test_no_meta_args():
    assert dockerfile("FROM scratch\n").meta_args == ()


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("ARG A\nENV X=1\nFROM a\n", "ENV before the first FROM: only ARG may come before FROM", 2, 1),
        ("RUN echo\nFROM a\n", "RUN before the first FROM: only ARG may come before FROM", 1, 1),
        ("# c\n  copy a b\nFROM a\n", "COPY before the first FROM: only ARG may come before FROM", 2, 3),
        ("ARG A=1\n", "no build stage in the Dockerfile: it needs a FROM", 1, 1),
        ("ARG A=1\nARG B\n", "no build stage in the Dockerfile: it needs a FROM", 1, 1),
    ],
)
def test_before_the_first_from_errors(text, message, line, col):
    assert_error(text, message, line, col)


def test_error_names_the_file():
    error = error_of("FROM a\n\nCOPY --from=5 a b\n", file="sub/Dockerfile.dev")
    assert str(error) == "sub/Dockerfile.dev:3:13: invalid stage index 5: stages are numbered 0 to 0"


def test_instruction_errors_come_through_with_the_file():
    error = error_of("FROM a\nRUN --network=hots true\n", file="x.Dockerfile")
    assert str(error) == 'x.Dockerfile:2:5: invalid network mode "hots" (did you mean host?)'


# -- stage names --------------------------------------------------------------------------------------


def test_stages_names_lower_cased_and_indexed():
    df = dockerfile("FROM alpine AS Builder\nRUN a\nRUN b\nFROM debian\nFROM scratch as OUT\n")
    assert [(s.index, s.name, s.base, s.label) for s in df.stages] == [
        (0, "builder", "alpine", "builder"),
        (1, None, "debian", "stage-1"),
        (2, "out", "scratch", "out"),
    ]
    assert [len(s.instructions) for s in df.stages] == [2, 0, 0]
    assert df.stages[0].start.line == 1 and df.stages[2].start.line == 5


def test_stage_platform():
    df = dockerfile("FROM --platform=$BUILDPLATFORM golang AS build\n")
    assert df.stages[0].platform == "$BUILDPLATFORM"


def test_duplicate_stage_name_names_the_first_line_at_the_second_name():
    text = "FROM alpine AS build\nRUN x\nFROM alpine AS Build\n"
    assert_error(text, 'duplicate stage name "build", first defined on line 1', 3, 16)


def test_duplicate_stage_name_points_at_the_name_not_an_image_alike():
    assert_error("FROM x AS x\nFROM x AS x\n", 'duplicate stage name "x", first defined on line 1', 2, 11)


# -- FROM -----------------------------------------------------------------------------------------------


def test_from_an_earlier_stage():
    df = dockerfile("FROM alpine AS base\nFROM base AS app\nFROM base\n")
    assert [(s.base_stage, s.depends_on) for s in df.stages] == [(None, ()), (0, (0,)), (0, (0,))]
    assert df.stages[1].base == "base"  # as written


def test_from_a_later_stage_name_is_an_image():
    # BuildKit: FROM sees only the stages defined before it
    df = dockerfile("FROM later\nFROM alpine AS later\n")
    assert (df.stages[0].base, df.stages[0].base_stage, df.stages[0].depends_on) == ("later", None, ())
    assert df.stages[1].depends_on == ()


def test_from_its_own_name_is_an_image():
    df = dockerfile("FROM node AS node\n")
    assert (df.stages[0].base_stage, df.stages[0].depends_on) == (None, ())


def test_from_looks_a_stage_up_by_the_name_as_written():
    # BuildKit keys stages by their lower-cased name and looks FROM's word up as it stands
    df = dockerfile("FROM alpine AS Base\nFROM base\n")
    assert [s.base_stage for s in df.stages] == [None, 0]
    # so `FROM BASE` is an image, and no valid one
    assert_error(
        "FROM alpine AS Base\nFROM base\nFROM --platform=linux/amd64 BASE\n",
        "FROM BASE names no earlier stage and is not a valid image reference (did you mean base?)",
        3,
        29,
    )


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("FROM Alpine\n", "FROM Alpine names no earlier stage and is not a valid image reference", 1, 6),
        ("FROM alpine AS build\nFROM buidl-\n", "FROM buidl- names no earlier stage and is not a valid image reference (did you mean build?)", 2, 6),
        ("FROM a\nFROM a:b:c AS x\n", "FROM a:b:c names no earlier stage and is not a valid image reference", 2, 6),
        ("FROM " + "a" * 64 + "\n", "FROM " + "a" * 64 + " names no earlier stage and is not a valid image reference", 1, 6),
    ],
)
def test_from_an_invalid_image_reference(text, message, line, col):
    assert_error(text, message, line, col)


def test_stage_lines():
    df = dockerfile("ARG X\nFROM a AS one\nRUN <<EOF\ntrue\nEOF\n\nFROM b\n")
    assert [(s.line, s.end_line) for s in df.stages] == [(2, 5), (7, 7)]


# -- FROM words with variables: kept for the planner ----------------------------------------------------


VARIABLE_BASES = """\
ARG BASE=builder
ARG IMAGE=alpine:3.19
FROM $IMAGE AS builder
FROM ${BASE} AS app
FROM "debian" AS quoted
"""


def test_from_with_variables_is_kept_as_written_and_marked():
    df = dockerfile(VARIABLE_BASES)
    assert [(s.base, s.expanded_base, s.needs_expansion, s.base_stage) for s in df.stages] == [
        ("$IMAGE", None, True, None),
        ("${BASE}", None, True, None),
        ('"debian"', None, True, None),  # quotes are the expansion's to remove
    ]
    plain = dockerfile("FROM alpine\n").stages[0]
    assert (plain.expanded_base, plain.needs_expansion) == ("alpine", False)


def test_describe_stages_marks_unexpanded_bases():
    listing = describe_stages(dockerfile("ARG B=base\nFROM alpine AS base\nFROM $B AS app\n"))
    assert "stage 1 app: FROM $B (unexpanded) (line 3, 0 instructions); needs -\n" in listing


def test_with_bases_expanded_links_an_expanded_stage_name():
    df = dockerfile(VARIABLE_BASES).with_bases_expanded(
        lambda word: expand_word(word, {"BASE": "builder", "IMAGE": "alpine:3.19"})
    )
    assert [(s.base, s.expanded_base, s.base_stage, s.depends_on) for s in df.stages] == [
        ("$IMAGE", "alpine:3.19", None, ()),
        ("${BASE}", "builder", 0, (0,)),
        ('"debian"', "debian", None, ()),
    ]
    assert [s.label for s in df.stages_needed("app")] == ["builder", "app"]
    assert not any(s.needs_expansion for s in df.stages)


def test_with_bases_expanded_errors():
    df = dockerfile(VARIABLE_BASES, file="x/Dockerfile")
    with pytest.raises(DockerfileError) as info:
        df.with_bases_expanded(lambda word: expand_word(word, {}))
    assert (info.value.message, info.value.file, info.value.line, info.value.col) == (
        "base name ($IMAGE) should not be blank",
        "x/Dockerfile",
        3,
        1,
    )
    with pytest.raises(DockerfileError) as info:
        df.with_bases_expanded(lambda word: expand_word(word, {"IMAGE": "Alpine", "BASE": "builder"}))
    assert (info.value.message, info.value.line, info.value.col) == (
        "FROM $IMAGE (expanded: Alpine) names no earlier stage and is not a valid image reference",
        3,
        6,
    )


def test_an_expanded_base_may_close_a_cycle():
    df = dockerfile("ARG B\nFROM a AS one\nCOPY --from=two a b\nFROM $B AS two\n")
    assert df.stages[1].depends_on == ()
    with pytest.raises(DockerfileError) as info:
        df.with_bases_expanded(lambda word: word.replace("$B", "one"))
    assert info.value.message == "circular dependency detected on stage: one (one -> two -> one)"
    assert (info.value.line, info.value.col) == (4, 1)  # the FROM that closes it


# -- COPY --from ------------------------------------------------------------------------------------------


def test_copy_from_a_stage_by_name_any_case_and_by_index():
    df = dockerfile("FROM a AS one\nFROM b AS two\nFROM c\nCOPY --from=ONE x y\nCOPY --from=1 x y\n")
    last = df.stages[2]
    assert last.depends_on == (0, 1)
    assert last.images == ()
    assert last.base_stage is None


def test_copy_from_an_image():
    df = dockerfile("FROM a\nCOPY --from=busybox:1 /bin/sh /sh\nCOPY --from=ghcr.io/o/tool@sha256:" + "a" * 64 + " / /\n")
    stage = df.stages[0]
    assert stage.images == ("busybox:1", "ghcr.io/o/tool@sha256:" + "a" * 64)
    assert stage.depends_on == ()


def test_copy_from_a_later_stage_is_an_error_as_in_buildkit():
    # BuildKit builds stages in file order: a stage defined later is not there to copy from
    df = dockerfile("FROM a AS first\nCOPY --from=second x y\nFROM b AS second\nFROM c AS last\n", "d/Dockerfile")
    with pytest.raises(DockerfileError) as info:
        df.stages_needed("first")
    assert info.value.message == (
        'cannot copy from stage "second", it needs to be defined before current stage "first" '
        "(it is defined on line 3)"
    )
    assert (info.value.file, info.value.line, info.value.col) == ("d/Dockerfile", 2, 13)
    # ... but only when that stage is built, as in BuildKit
    assert [s.label for s in df.stages_needed()] == ["last"]
    assert [s.label for s in df.stages_needed("second")] == ["second"]


def test_copy_from_a_later_stage_by_an_unnamed_stage():
    df = dockerfile("FROM a\nCOPY --from=2 x y\nFROM b\nFROM c\nFROM d\nCOPY --from=0 x y\n")
    with pytest.raises(DockerfileError) as info:
        df.stages_needed()
    assert info.value.message == (
        'cannot copy from stage "2", it needs to be defined before current stage "stage-0" '
        "(it is defined on line 4)"
    )
    assert (info.value.line, info.value.col) == (2, 13)


def test_mount_from_a_later_stage_is_an_error_as_in_buildkit():
    text = "FROM a\nRUN --mount=from=later,target=/x true\nFROM b AS later\nFROM c\n"
    assert len(dockerfile(text).stages_needed()) == 1  # stage 0 is not built
    with pytest.raises(DockerfileError) as info:
        dockerfile(text + "COPY --from=0 a b\n").stages_needed()
    assert info.value.message == (
        'cannot mount from stage "later" to "/x", stage needs to be defined before current command '
        "(it is defined on line 3)"
    )
    assert (info.value.line, info.value.col) == (2, 18)


def test_a_cycle_is_reported_before_a_read_of_a_later_stage():
    with pytest.raises(DockerfileError, match="circular dependency"):
        dockerfile("FROM a AS x\nCOPY --from=y a b\nFROM a AS y\nCOPY --from=x a b\n")


def test_a_mistyped_stage_name_that_is_a_valid_reference_is_an_image():
    df = dockerfile("FROM a\nCOPY --from=nmae a b\nFROM b AS name\n")
    assert (df.stages[0].images, df.stages[0].depends_on) == (("nmae",), ())


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("FROM a\n\nCOPY --from=5 a b\n", "invalid stage index 5: stages are numbered 0 to 0", 3, 13),
        ("FROM a\nFROM b\nCOPY --from=2 a b\n", "invalid stage index 2: stages are numbered 0 to 1", 3, 13),
        ("FROM a AS s\nCOPY --from=s a b\n", 'stage "s" cannot read from itself', 2, 13),
        ("FROM a AS s\nCOPY --from=S a b\n", 'stage "s" cannot read from itself', 2, 13),
        ("FROM a\nFROM b\nCOPY --from=1 a b\n", 'stage "stage-1" cannot read from itself', 3, 13),
        (
            "FROM a\nCOPY --from=$X a b\n",
            "variable expansion is not supported for --from, define a new stage with FROM using ARG "
            "from global scope as a workaround",
            2,
            13,
        ),
        (
            "FROM a\nCOPY --from=${STAGE:-build} a b\n",
            "variable expansion is not supported for --from, define a new stage with FROM using ARG "
            "from global scope as a workaround",
            2,
            13,
        ),
        (
            "FROM a AS build\nFROM b AS test\nCOPY --from=Not_A_Stage a b\n",
            "--from=Not_A_Stage names no stage and is not a valid image reference (stages: build, test)",
            3,
            13,
        ),
        (
            "FROM a AS build\nFROM b\nCOPY --from=Buidl a b\n",
            "--from=Buidl names no stage and is not a valid image reference (did you mean build?)",
            3,
            13,
        ),
        ("FROM a\nCOPY --from=Bad a b\n", "--from=Bad names no stage and is not a valid image reference", 2, 13),
        # Go's Atoi reads ASCII digits only: these are names, and not valid references
        ("FROM a\nCOPY --from=\u00b2 a b\n", "--from=\u00b2 names no stage and is not a valid image reference", 2, 13),
        (
            "FROM a\nFROM b\nCOPY --from=\u0661 a b\n",
            "--from=\u0661 names no stage and is not a valid image reference",
            3,
            13,
        ),
        # a `$` at the end is no variable (as BuildKit's lexer reads it), and no image either
        ("FROM a\nCOPY --from=a$ a b\n", "--from=a$ names no stage and is not a valid image reference", 2, 13),
        # the place is the --from value, not an earlier word that reads the same
        ("FROM a AS s\nCOPY --chown=s --from=s a b\n", 'stage "s" cannot read from itself', 2, 23),
    ],
)
def test_copy_from_errors(text, message, line, col):
    assert_error(text, message, line, col)


def test_copy_from_index_with_leading_zero():
    df = dockerfile("FROM a\nFROM b\nCOPY --from=00 a b\n")
    assert df.stages[1].depends_on == (0,)
    assert_error("FROM a\nCOPY --from=005 a b\n", "invalid stage index 5: stages are numbered 0 to 0", 2, 13)


def test_copy_from_digits_beyond_int64_is_a_name():
    # Go's Atoi fails there, so BuildKit reads the word as a name: an image here
    df = dockerfile("FROM a\nCOPY --from=99999999999999999999 a b\n")
    assert (df.stages[0].images, df.stages[0].depends_on) == (("99999999999999999999",), ())
    assert_error(
        "FROM a\nCOPY --from=9223372036854775807 a b\n",
        "invalid stage index 9223372036854775807: stages are numbered 0 to 0",
        2,
        13,
    )
    long = "9" * 5000  # longer than an image reference may be; and no crash reading it
    error = error_of(f"FROM a\nCOPY --from={long} a b\n")
    assert (error.message, error.line, error.col) == (
        f"--from={long} names no stage and is not a valid image reference",
        2,
        13,
    )


# -- RUN --mount=from ------------------------------------------------------------------------------------


def test_run_mount_from_a_stage():
    df = dockerfile("FROM a AS deps\nFROM b\nRUN --mount=from=DEPS,target=/d --mount=type=cache,target=/c make\n")
    assert df.stages[1].depends_on == (0,)
    assert df.stages[1].images == ()
    (run,) = df.stages[1].instructions
    assert isinstance(run, Run)


def test_run_mount_from_an_image_and_a_number_is_a_name():
    # BuildKit resolves a mount's from= by name only: "0" is an image there
    df = dockerfile("FROM a\nFROM b\nRUN --mount=from=golang:1.22,target=/g --mount=from=0,target=/z true\n")
    assert df.stages[1].depends_on == ()
    assert df.stages[1].images == ("golang:1.22", "0")


def test_run_mount_from_itself():
    assert_error(
        "FROM a AS s\nRUN --mount=target=/s,from=s true\n", 'stage "s" cannot read from itself', 2, 28
    )
    # at the mount that names it, past a from= that only begins alike
    assert_error(
        "FROM a AS stage\nFROM b AS s\nRUN --mount=from=stage,target=/a --mount=from=s,target=/b true\n",
        'stage "s" cannot read from itself',
        3,
        47,
    )


def test_run_mount_from_a_variable():
    assert_error(
        "FROM a\nRUN --mount=from=$X,target=/x true\n",
        "'from' doesn't support variable expansion, define alias stage instead",
        2,
        13,
    )


# -- cycles -----------------------------------------------------------------------------------------------


def test_cycle_of_two_stages():
    text = "FROM a AS x\nCOPY --from=y a b\nFROM a AS y\nCOPY --from=x a b\n"
    assert_error(text, "circular dependency detected on stage: x (x -> y -> x)", 4, 13)


def test_cycle_of_three_stages():
    # BuildKit's TestDockerfileCircularDependencies
    text = (
        "FROM busybox AS stage0\nCOPY --from=stage2 f1 /sub/\n"
        "FROM busybox AS stage1\nCOPY --from=stage0 f2 /sub/\n"
        "FROM busybox AS stage2\nCOPY --from=stage1 f2 /sub/\n"
    )
    assert_error(text, "circular dependency detected on stage: stage0 (stage0 -> stage2 -> stage1 -> stage0)", 4, 13)


def test_cycle_closed_by_a_mount():
    text = (
        "FROM a AS one\nCOPY --from=two a b\n"
        "FROM b AS two\nCOPY --from=three a b\n"
        "FROM c AS three\nRUN --mount=from=one,target=/x true\n"
    )
    assert_error(text, "circular dependency detected on stage: one (one -> two -> three -> one)", 6, 18)


def test_cycle_through_from_and_copy():
    text = "FROM alpine AS base\nCOPY --from=app a b\nFROM base AS app\n"
    assert_error(text, "circular dependency detected on stage: base (base -> app -> base)", 3, 1)


def test_cycle_place_is_the_instruction_that_reads_the_stage():
    # a mount's from=0 is an image, not stage 0: the cycle closes at the COPY
    text = "FROM a AS s0\nCOPY --from=1 a b\nFROM b\nRUN --mount=from=0,target=/m true\nCOPY --from=0 a b\n"
    assert_error(text, "circular dependency detected on stage: s0 (s0 -> stage-1 -> s0)", 5, 13)
    # an index written with a leading zero still names its stage
    text = "FROM a AS s0\nCOPY --from=s1 a b\nFROM b AS s1\nRUN echo\nCOPY --from=00 a b\n"
    assert_error(text, "circular dependency detected on stage: s0 (s0 -> s1 -> s0)", 5, 13)


# -- DAG and build order ---------------------------------------------------------------------------------


DIAMOND = """\
ARG ALPINE=3.19
FROM alpine:${ALPINE} AS base
RUN echo base
FROM base AS left
RUN echo left
FROM base AS right
COPY --from=busybox:1 /bin/sh /sh
FROM scratch AS unused
FROM --platform=linux/amd64 base AS final
COPY --from=left /a /a
COPY --from=RIGHT /b /b
"""


def test_diamond_dependencies():
    df = dockerfile(DIAMOND)
    assert [(s.name, s.base_stage, s.depends_on, s.images) for s in df.stages] == [
        ("base", None, (), ()),
        ("left", 0, (0,), ()),
        ("right", 0, (0,), ("busybox:1",)),
        ("unused", None, (), ()),
        ("final", 0, (0, 1, 2), ()),
    ]
    copies = [i for i in df.stages[4].instructions if isinstance(i, Copy)]
    assert [c.from_ for c in copies] == ["left", "RIGHT"]


@pytest.mark.parametrize(
    "target, order",
    [
        (None, ["base", "left", "right", "final"]),
        ("", ["base", "left", "right", "final"]),
        ("final", ["base", "left", "right", "final"]),
        ("left", ["base", "left"]),
        ("Right", ["base", "right"]),
        ("unused", ["unused"]),
        ("base", ["base"]),
    ],
)
def test_stages_needed_only_needed_dependencies_first(target, order):
    df = dockerfile(DIAMOND)
    assert [s.label for s in df.stages_needed(target)] == order


def test_stage_by_target():
    df = dockerfile(DIAMOND)
    assert df.stage().name == "final"
    assert df.stage("LEFT").index == 1


def test_stages_needed_follows_base_and_copy_edges():
    df = dockerfile("FROM a AS y\nFROM y AS z\nFROM b AS unused\nFROM a AS x\nCOPY --from=z a b\n")
    assert [s.label for s in df.stages_needed("x")] == ["y", "z", "x"]


@pytest.mark.parametrize(
    "target, message",
    [
        ("rigth", 'target stage "rigth" could not be found (did you mean right?)'),
        ("nope", 'target stage "nope" could not be found'),
    ],
)
def test_unknown_target(target, message):
    df = dockerfile(DIAMOND, file="build/Dockerfile")
    with pytest.raises(DockerfileError) as info:
        df.stages_needed(target)
    assert (info.value.message, info.value.file, info.value.line, info.value.col) == (message, "build/Dockerfile", 0, 0)
    assert str(info.value) == f"build/Dockerfile: {message}"


# -- image references -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "busybox",
        "busybox:1",
        "busybox:1.36.1-musl",
        "library/busybox:latest",
        "docker.io/library/busybox",
        "localhost/app",
        "localhost:5000/team/app:v1",
        "registry.example.com:443/a/b/c",
        "Registry.Example.COM/app",
        "[::1]:5000/app",
        "my_app",
        "my__app",
        "my-app",
        "my---app",
        "a.b",
        "app@sha256:" + "0123456789abcdef" * 4,
        "app:tag@sha256:" + "0123456789abcdef" * 4,
        "app:" + "t" * 128,
        "0",
        "a" * 255 + ":" + "t" * 128,  # the name is limited to 255, not the whole
        "a" * 63,
    ],
)
def test_is_image_reference(ref):
    assert is_image_reference(ref) is True


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "Busybox",
        "busybox:",
        "busybox:-tag",
        "busybox:" + "t" * 129,
        "busybox:t\u00e4g",  # Go's \w is ASCII
        "busybox\n",
        "-app",
        "app-",
        "a/_b",
        "a..b",
        "my___app",
        "app@sha256:abc",
        "app@sha256",
        "a b",
        "a/" * 127 + "a" + "/bb",
        "\u00b2",
        "a" * 256,
        "0123456789abcdef" * 4,  # an image ID, not a name
    ],
)
def test_is_not_image_reference(ref):
    assert is_image_reference(ref) is False


# -- describe_stages ------------------------------------------------------------------------------------


def test_describe_stages():
    assert describe_stages(dockerfile(DIAMOND)) == (
        "global args: ALPINE\n"
        "stage 0 base: FROM alpine:${ALPINE} (unexpanded) (line 2, 1 instruction); needs -\n"
        "stage 1 left: FROM stage 0 (line 4, 1 instruction); needs base\n"
        "stage 2 right: FROM stage 0 (line 6, 1 instruction); needs base; images busybox:1\n"
        "stage 3 unused: FROM scratch (line 8, 0 instructions); needs -\n"
        "stage 4 final: FROM stage 0 --platform=linux/amd64 (line 9, 2 instructions); needs base, left, right\n"
        "build order for final: base -> left -> right -> final\n"
    )


def test_describe_stages_for_a_target_and_unnamed_stages():
    df = dockerfile("FROM alpine\nRUN true\nFROM debian AS app\nCOPY --from=0 a b\n")
    assert describe_stages(df, "app") == (
        "stage 0 (unnamed): FROM alpine (line 1, 1 instruction); needs -\n"
        "stage 1 app: FROM debian (line 3, 1 instruction); needs stage-0\n"
        "build order for app: stage-0 -> app\n"
    )
