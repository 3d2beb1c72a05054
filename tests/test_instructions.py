"""Typed instructions from Dockerfile text: every instruction and form, flags, RUN mounts, errors.

BuildKit's instructions/parse_test.go and bflag_test.go are the source of many cases, written
here as our own tables. Each error is checked for its message and its place (line, column).
"""

from __future__ import annotations

import pytest

from buildpy.grammar.ast import Heredoc
from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.flags import Device, Mount, parse_chmod, parse_device, parse_flags, parse_mount
from buildpy.grammar.instructions import (
    Add,
    Arg,
    ArgDef,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    InlineSource,
    Label,
    Maintainer,
    OnBuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
    instruction_from_node,
    parse_go_duration,
)
from buildpy.grammar.parser import parse

SECOND = 10**9
MS = 10**6


def instr(text: str, index: int = -1):
    """The typed instruction of one node of `text` (the last one by default)."""
    return instruction_from_node(parse(text).nodes[index])


def error_of(text: str, index: int = -1) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        instr(text, index)
    return info.value


def assert_error(text: str, message: str, line: int, col: int, index: int = -1) -> None:
    error = error_of(text, index)
    assert (error.message, error.line, error.col) == (message, line, col)


# -- FROM -------------------------------------------------------------------------------------


def test_from_image_only():
    got = instr("FROM alpine:3.19\n")
    assert isinstance(got, From)
    assert (got.image, got.name, got.platform) == ("alpine:3.19", None, "")
    assert got.line == 1
    assert got.text == "FROM alpine:3.19"


def test_every_instruction_knows_its_place():
    text = "FROM a\n  RUN <<EOF\necho\nEOF\nENV A=1 \\\n    B=2\n"
    nodes = parse(text).nodes
    run = instruction_from_node(nodes[1], "ci/Dockerfile")
    env = instruction_from_node(nodes[2])
    assert (run.file, run.line, run.end_line, run.col) == ("ci/Dockerfile", 2, 4, 3)
    assert (env.file, env.line, env.end_line, env.col) == ("Dockerfile", 5, 6, 1)
    assert run.prepend_shell is True
    assert instr('CMD ["a"]\n').prepend_shell is False


def test_from_named_stage_lower_cased_with_platform():
    got = instr("FROM --platform=linux/arm64 alpine:3 As Build\n")
    assert (got.image, got.name, got.platform) == ("alpine:3", "build", "linux/arm64")


def test_from_platform_with_variable_kept_as_written():
    got = instr("FROM --platform=$BUILDPLATFORM golang AS tools\n")
    assert (got.image, got.name, got.platform) == ("golang", "tools", "$BUILDPLATFORM")


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("FROM a b\n", "FROM requires either one or three arguments", 1, 1),
        ("FROM a AS b c\n", "FROM requires either one or three arguments", 1, 1),
        ("FROM a IS b\n", "FROM requires either one or three arguments", 1, 1),
        (
            "FROM a AS 1x\n",
            'invalid name for build stage: "1x", name can\'t start with a number or contain symbols',
            1,
            11,
        ),
        (
            "ARG V=1\n  FROM a AS St@ge\n",
            'invalid name for build stage: "St@ge", name can\'t start with a number or contain symbols',
            2,
            13,
        ),
        ("FROM --plat=x a\n", "unknown flag: --plat", 1, 6),
        ("FROM --platfrom=x a\n", "unknown flag: --platfrom (did you mean platform?)", 1, 6),
        ("FROM --platform a\n", "missing a value on flag: --platform", 1, 6),
        # a repeated flag is named where it is repeated
        ("FROM --platform=a --platform=b c\n", "duplicate flag specified: --platform", 1, 19),
    ],
)
def test_from_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- RUN, CMD, ENTRYPOINT -----------------------------------------------------------------------


def test_run_shell_form_is_one_string():
    got = instr("RUN apt-get update && \\\n    apt-get install -y curl\n")
    assert isinstance(got, Run)
    assert got.shell is True
    assert got.args == ("apt-get update &&     apt-get install -y curl",)
    assert (got.network, got.security, got.devices, got.mounts, got.heredocs) == (
        "default",
        "sandbox",
        (),
        (),
        (),
    )


def test_run_exec_form_is_a_list():
    got = instr('RUN ["echo", "hello world"]\n')
    assert (got.args, got.shell) == (("echo", "hello world"), False)


def test_run_heredoc():
    got = instr("RUN <<EOF\necho one\necho two\nEOF\n")
    assert got.args == ("<<EOF",)
    assert got.heredocs == (Heredoc("EOF", "echo one\necho two\n", True, False, 0),)


def test_run_heredoc_with_only_flags_needs_no_other_argument():
    got = instr("RUN --network=none <<EOF\ntrue\nEOF\n")
    assert (got.network, len(got.heredocs)) == ("none", 1)


def test_cmd_shell_and_exec_forms():
    shell = instr("CMD echo $HOME\n")
    exec_ = instr('CMD ["nginx", "-g", "daemon off;"]\n')
    assert isinstance(shell, Cmd) and isinstance(exec_, Cmd)
    assert (shell.args, shell.shell) == (("echo $HOME",), True)
    assert (exec_.args, exec_.shell) == (("nginx", "-g", "daemon off;"), False)


def test_cmd_empty_exec_form():
    got = instr("CMD []\n")
    assert (got.args, got.shell) == ((), False)


def test_entrypoint_shell_and_exec_forms():
    shell = instr("ENTRYPOINT exec top -b\n")
    exec_ = instr('ENTRYPOINT ["/bin/sh", "-c"]\n')
    assert isinstance(shell, Entrypoint) and isinstance(exec_, Entrypoint)
    assert (shell.args, shell.shell) == (("exec top -b",), True)
    assert (exec_.args, exec_.shell) == (("/bin/sh", "-c"), False)


# -- RUN flags ----------------------------------------------------------------------------------


def test_run_network_security_devices():
    got = instr(
        "RUN --network=none --security=insecure --device=/dev/fuse "
        "--device=name=/dev/kvm,required echo\n"
    )
    assert (got.network, got.security) == ("none", "insecure")
    assert got.devices == (Device("/dev/fuse"), Device("/dev/kvm", required=True))
    assert got.args == ("echo",)


@pytest.mark.parametrize("mode", ["default", "none", "host"])
def test_run_network_modes(mode):
    assert instr(f"RUN --network={mode} true\n").network == mode


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("RUN --network=hots true\n", 'invalid network mode "hots" (did you mean host?)', 1, 5),
        ("RUN --network=bridge true\n", 'invalid network mode "bridge"', 1, 5),
        ("RUN --security=privileged true\n", 'security "privileged" is not valid', 1, 5),
        ("RUN --mout=type=cache,target=/x echo\n", "unknown flag: --mout (did you mean mount?)", 1, 5),
        ("RUN --network true\n", "missing a value on flag: --network", 1, 5),
        ("RUN --network=none --network=host true\n", "duplicate flag specified: --network", 1, 20),
        ("RUN\n", "RUN requires at least one argument", 1, 1),
        ("RUN --network=none\n", "RUN requires at least one argument", 1, 1),
    ],
)
def test_run_flag_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- RUN --mount --------------------------------------------------------------------------------


def mounts_of(text: str) -> tuple[Mount, ...]:
    got = instr(text)
    assert isinstance(got, Run)
    return got.mounts


def test_mount_defaults_to_a_readonly_bind():
    (mount,) = mounts_of("RUN --mount=target=/src make\n")
    assert mount == Mount(type="bind", target="/src", readonly=True)


def test_bind_mount_with_every_alias():
    (mount,) = mounts_of("RUN --mount=type=bind,from=build,src=/out,dst=/in,rw make\n")
    assert mount == Mount(type="bind", target="/in", source="/out", from_="build", readonly=False)
    (mount,) = mounts_of("RUN --mount=type=bind,source=/a,destination=/b,readwrite=true make\n")
    assert (mount.source, mount.target, mount.readonly) == ("/a", "/b", False)


def test_cache_mount_is_read_write_by_default_with_file_info():
    (mount,) = mounts_of(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,uid=1000,gid=1001,mode=0755 pip\n"
    )
    assert mount == Mount(
        type="cache",
        target="/root/.cache",
        id="pip",
        sharing="locked",
        readonly=False,
        uid=1000,
        gid=1001,
        mode=0o755,
    )


@pytest.mark.parametrize(
    "spec, readonly",
    [
        ("type=cache,target=/c,ro", True),
        ("type=cache,target=/c,readonly", True),
        ("type=cache,target=/c,readonly=true", True),
        ("type=cache,target=/c,ro=1", True),
        ("type=bind,target=/c,rw", False),
        ("type=bind,target=/c,readwrite", False),
        ("type=bind,target=/c,readonly=false", False),
        ("type=bind,target=/c,rw=false", True),
        ("type=bind,target=/c", True),
        ("type=tmpfs,target=/c", False),
        ("type=secret,id=s", True),
        ("type=ssh", True),
    ],
)
def test_mount_readonly(spec, readonly):
    (mount,) = mounts_of(f"RUN --mount={spec} true\n")
    assert mount.readonly is readonly


@pytest.mark.parametrize("sharing", ["shared", "private", "locked", "LOCKED"])
def test_cache_sharing_modes(sharing):
    (mount,) = mounts_of(f"RUN --mount=type=cache,target=/c,sharing={sharing} true\n")
    assert mount.sharing == sharing.lower()


def test_secret_mount_required_and_env():
    (mount,) = mounts_of("RUN --mount=type=secret,id=token,required,env=TOKEN make\n")
    assert mount == Mount(type="secret", id="token", required=True, env="TOKEN", readonly=True)
    (mount,) = mounts_of("RUN --mount=type=secret,target=/run/secrets/x,required=false make\n")
    assert (mount.target, mount.required, mount.env) == ("/run/secrets/x", False, None)


def test_ssh_mount_required():
    (mount,) = mounts_of("RUN --mount=type=ssh,required git clone x\n")
    assert (mount.type, mount.required) == ("ssh", True)


@pytest.mark.parametrize(
    "size, expected",
    [("64m", 64 * 1024**2), ("1g", 1024**3), ("512k", 512 * 1024), ("100", 100), ("1.5m", 1536 * 1024), ("2MiB", 2 * 1024**2)],
)
def test_tmpfs_size(size, expected):
    (mount,) = mounts_of(f"RUN --mount=type=tmpfs,target=/t,size={size} true\n")
    assert (mount.type, mount.target, mount.size, mount.readonly) == ("tmpfs", "/t", expected, False)


def test_mount_type_is_case_insensitive_and_keys_too():
    (mount,) = mounts_of("RUN --mount=TYPE=Cache,Target=/c true\n")
    assert (mount.type, mount.target) == ("cache", "/c")


def test_several_mounts_kept_in_order_with_their_specs():
    got = instr("RUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/b true\n")
    assert [m.target for m in got.mounts] == ["/a", "/b"]
    assert got.mount_specs == ("type=cache,target=/a", "type=tmpfs,target=/b")


def test_mount_uid_with_thousands_of_digits():
    digits = "1" * 5000
    assert_error(f"RUN --mount=type=cache,target=/c,uid={digits} true\n", f"invalid value {digits} for uid", 1, 13)


def test_mount_uid_with_leading_zeros():
    (mount,) = mounts_of("RUN --mount=type=cache,target=/c,uid=00000000000000001,mode=0000000000000777 true\n")
    assert (mount.uid, mount.mode) == (1, 0o777)


def test_mount_csv_quoting():
    # the parser removes flag quotes; escaped ones reach the CSV reader
    (mount,) = mounts_of('RUN --mount=type=bind,\\"source=a,b\\",target=/x true\n')
    assert (mount.source, mount.target) == ("a,b", "/x")
    assert_error('RUN --mount=type=bind,"source=a,b",target=/x true\n', "invalid field 'b' must be a key=value pair", 1, 13)


def test_mount_values_with_variables_wait_for_expansion():
    got = instr("RUN --mount=type=cache,target=$DIR,uid=$UID true\n")
    assert got.mounts == (Mount(type="cache", readonly=False),)
    assert got.mount_specs == ("type=cache,target=$DIR,uid=$UID",)


def test_mount_with_a_variable_type_defers_checks_by_type():
    # the type is known only once expanded: uid, sharing, size and required may all be right then
    got = instr("RUN --mount=type=$KIND,target=/c,uid=1000,sharing=locked,size=1m,required true\n")
    (mount,) = got.mounts
    assert (mount.target, mount.uid, mount.sharing, mount.size, mount.required) == ("/c", 1000, "locked", 1024**2, True)
    # and once expanded, the checks apply
    with pytest.raises(ValueError, match='^uid not allowed for "bind" type mounts$'):
        parse_mount("type=$KIND,target=/c,uid=1000", lambda word: word.replace("$KIND", "bind"))
    cache = parse_mount("type=$KIND,target=/c,uid=1000", lambda word: word.replace("$KIND", "cache"))
    assert (cache.type, cache.uid, cache.readonly) == ("cache", 1000, False)


def test_mount_from_with_trailing_dollar_is_not_a_variable():
    # BuildKit: a `$` anywhere but at the end of from= is expansion
    got = instr("RUN --mount=from=x$,target=/x true\n")
    assert got.mount_specs == ("from=x$,target=/x",)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("type=bnd,target=/x", 'unsupported mount type "bnd" (did you mean bind?)'),
        ("type=volume,target=/x", 'unsupported mount type "volume"'),
        ("type=cache,tagret=/x", "unexpected key 'tagret' in 'tagret=/x' (did you mean target?)"),
        ("type=cache,foo=bar", "unexpected key 'foo' in 'foo=bar' (did you mean from?)"),
        ("type=cache,target", "invalid field 'target' must be a key=value pair"),
        ("type=bind,target=/x,uid=1", 'uid not allowed for "bind" type mounts'),
        ("type=bind,target=/x,gid=1", 'gid not allowed for "bind" type mounts'),
        ("type=tmpfs,target=/x,mode=0700", 'mode not allowed for "tmpfs" type mounts'),
        ("type=secret,id=a,from=b", "secret mount should not have a from"),
        ("type=secret,id=a,sharing=locked", "secret mount should not define sharing"),
        ("type=secret", "invalid secret mount. one of source, target required"),
        ("type=secret,id=a,source=b", "both source and id can't be set"),
        ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
        ("type=tmpfs,target=/x,sharing=shared", "invalid cache sharing set for tmpfs mount"),
        ("type=cache,target=/x,sharing=lockd", 'unsupported sharing value "lockd" (did you mean locked?)'),
        ("from=$X,target=/x", "'from' doesn't support variable expansion, define alias stage instead"),
        ("from=${STAGE}x,target=/x", "'from' doesn't support variable expansion, define alias stage instead"),
        ("type=bind,required", "unexpected key 'required' for mount type 'bind'"),
        ("type=cache,target=/c,required=true", "unexpected key 'required' for mount type 'cache'"),
        ("type=cache,target=/c,size=1m", "unexpected key 'size' for mount type 'cache'"),
        ("type=tmpfs,target=/t,size=lots", "invalid value for size: lots"),
        ("type=cache,target=/c,ro=maybe", "invalid value for ro: maybe"),
        ("type=secret,id=s,required=yes", "invalid value for required: yes"),
        ("type=cache,target=/c,uid=-1", "invalid value -1 for uid"),
        ("type=cache,target=/c,uid=4294967296", "invalid value 4294967296 for uid"),
        ("type=cache,target=/c,gid=x", "invalid value x for gid"),
        ("type=cache,target=/c,mode=0789", "invalid value 0789 for mode"),
        # Go's ParseUint(v, 8, 32): no `0o` prefix, no sign, no underscores
        ("type=cache,target=/c,mode=0o755", "invalid value 0o755 for mode"),
        ("type=cache,target=/c,mode=+755", "invalid value +755 for mode"),
        ("type=cache,target=/c,uid=1_000", "invalid value 1_000 for uid"),
    ],
)
def test_mount_errors(spec, message):
    # the place is the mount's value, after `RUN --mount=`
    assert_error(f"RUN --mount={spec} true\n", message, 1, 13)


def test_mount_error_on_a_continuation_line():
    text = "FROM alpine\nRUN --network=none \\\n    --mount=type=bnd,target=/x \\\n    echo\n"
    assert_error(text, 'unsupported mount type "bnd" (did you mean bind?)', 3, 13)


def test_mount_bad_csv():
    error = error_of('RUN --mount=type=bind,\\"target=/x true\n')
    assert error.message.startswith("failed to parse csv mounts: ")
    assert (error.line, error.col) == (1, 13)


def test_mount_empty_value_is_a_csv_error():
    # Go's csv reader: nothing to read is io.EOF
    assert_error("RUN --mount= true\n", "failed to parse csv mounts: EOF", 1, 13)


@pytest.mark.parametrize(
    "flag, message",
    [
        ('--mount=type=bind,\\"target=/x', 'failed to parse csv mounts: parse error on line 1, column 12: extraneous or missing " in quoted-field'),
        ('--mount=target=/x\\"y', 'failed to parse csv mounts: parse error on line 1, column 10: bare " in non-quoted-field'),
        ('--mount=\\"target=/x\\"y', 'failed to parse csv mounts: parse error on line 1, column 11: extraneous or missing " in quoted-field'),
    ],
)
def test_mount_csv_errors_as_go_reports_them(flag, message):
    assert_error(f"RUN {flag} true\n", message, 1, 13)


def test_mount_csv_doubled_quote_is_one_quote():
    (mount,) = mounts_of('RUN --mount=type=bind,\\"target=/a\\"\\"b\\" true\n')
    assert mount.target == '/a"b'


@pytest.mark.parametrize(
    "size, expected",
    [("1e3", 1000), ("1.5 kb", 1536), ("5.", 5), (".5k", 512), ("1B", 1), ("3KIB", 3072), ("1p", 1024**5), ("0", 0)],
)
def test_tmpfs_size_as_go_units_reads_it(size, expected):
    # a space may stand before the unit once expanded (`size=$SIZE`), so read the value alone
    assert parse_mount(f"type=tmpfs,target=/t,size={size}").size == expected


@pytest.mark.parametrize("size", ["-1", "k", "1kbb", "1ib", "1x", "1 5k", "1e400", "0x10", "1_000"])
def test_tmpfs_size_errors(size):
    with pytest.raises(ValueError, match=f"^invalid value for size: {size}$"):
        parse_mount(f"type=tmpfs,target=/t,size={size}")


def test_tmpfs_size_error_at_the_mount():
    assert_error("RUN --mount=type=tmpfs,target=/t,size=1kbb true\n", "invalid value for size: 1kbb", 1, 13)


def test_mount_suggestions_are_case_sensitive_as_in_buildkit():
    assert_error("RUN --mount=type=BND,target=/x true\n", 'unsupported mount type "BND"', 1, 13)
    assert_error("RUN --mount=type=cache,target=/x,sharing=LOCKD true\n", 'unsupported sharing value "LOCKD"', 1, 13)


# -- RUN --device ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, device",
    [
        ("/dev/fuse", Device("/dev/fuse")),
        ("vendor.com/gpu=all", Device("vendor.com/gpu=all")),
        ("vendor.com/gpu=all,required", Device("vendor.com/gpu=all", True)),
        ("name=vendor.com/gpu=0,required=false", Device("vendor.com/gpu=0", False)),
        ("required,name=x", Device("x", True)),
    ],
)
def test_parse_device(spec, device):
    assert parse_device(spec) == device


@pytest.mark.parametrize(
    "spec, message",
    [
        ("a,b", "invalid field 'b' must be a key=value pair"),
        ("a,name=b", "device name already set to a"),
        ("a,requird=true", "unexpected key 'requird' in 'requird=true' (did you mean required?)"),
        ("a,required=maybe", "invalid value for required: maybe"),
        ("", "failed to parse csv devices: EOF"),
    ],
)
def test_device_errors_at_the_device_value(spec, message):
    assert_error(f"RUN --network=none --device=x --device={spec} true\n", message, 1, 40)


# -- SHELL ----------------------------------------------------------------------------------------


def test_shell_json():
    got = instr('SHELL ["powershell", "-command"]\n')
    assert isinstance(got, Shell)
    assert got.shell == ("powershell", "-command")


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("SHELL /bin/sh -c\n", "SHELL requires the arguments to be in JSON form", 1, 1),
        ("SHELL []\n", "SHELL requires at least one argument", 1, 1),
        ("SHELL\n", "SHELL requires at least one argument", 1, 1),
        ('SHELL --x ["sh"]\n', "unknown flag: --x (SHELL takes no flags)", 1, 7),
    ],
)
def test_shell_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- ENV, LABEL -------------------------------------------------------------------------------------


def test_env_pairs_keep_quotes_as_written():
    got = instr("ENV A=1 B=\"two words\" C='x' D=\n")
    assert isinstance(got, Env)
    assert got.pairs == (("A", "1"), ("B", '"two words"'), ("C", "'x'"), ("D", ""))
    assert got.legacy is False


def test_env_legacy_form_is_one_pair():
    got = instr("ENV PATH /usr/local/bin:$PATH more words\n")
    assert got.pairs == (("PATH", "/usr/local/bin:$PATH more words"),)
    assert got.legacy is True


def test_env_over_continuation_lines():
    got = instr("ENV A=1 \\\n    B=2\n")
    assert got.pairs == (("A", "1"), ("B", "2"))


def test_label_pairs_and_legacy():
    got = instr('LABEL "com.example.vendor"="ACME" version=1.0 description="a b"\n')
    assert isinstance(got, Label)
    assert got.pairs == (('"com.example.vendor"', '"ACME"'), ("version", "1.0"), ("description", '"a b"'))
    assert got.legacy is False
    legacy = instr("LABEL maintainer someone@example.com\n")
    assert (legacy.pairs, legacy.legacy) == ((("maintainer", "someone@example.com"),), True)


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("ENV\n", "ENV requires at least one argument", 1, 1),
        ("LABEL\n", "LABEL requires at least one argument", 1, 1),
        ("ENV =x\n", "ENV names can not be blank", 1, 5),
        ("LABEL a=b =c\n", "LABEL names can not be blank", 1, 11),
        ("ENV --x A=1\n", "unknown flag: --x (ENV takes no flags)", 1, 5),
        ("LABEL --x=1 a=b\n", "unknown flag: --x (LABEL takes no flags)", 1, 7),
    ],
)
def test_env_label_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- ARG ------------------------------------------------------------------------------------------


def test_arg_with_and_without_defaults_several_per_line():
    got = instr("ARG VERSION=1.2 DEBUG EMPTY= Q=\"a b\" EQ=a=b\n")
    assert isinstance(got, Arg)
    assert got.args == (
        ArgDef("VERSION", "1.2"),
        ArgDef("DEBUG", None),
        ArgDef("EMPTY", ""),
        ArgDef("Q", '"a b"'),
        ArgDef("EQ", "a=b"),
    )


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("ARG\n", "ARG requires at least one argument", 1, 1),
        ("ARG =x\n", "ARG names can not be blank", 1, 5),
        ("ARG A=1 =x\n", "ARG names can not be blank", 1, 9),
        ("ARG --x A\n", "unknown flag: --x (ARG takes no flags)", 1, 5),
    ],
)
def test_arg_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- EXPOSE, VOLUME -----------------------------------------------------------------------------------


def test_expose_is_sorted_as_strings():
    got = instr("EXPOSE 8080 443/tcp 80 53/udp\n")
    assert isinstance(got, Expose)
    assert got.ports == ("443/tcp", "53/udp", "80", "8080")


def test_volume_json_and_words():
    json_form = instr('VOLUME ["/data", "/var/log app"]\n')
    words = instr("VOLUME /a /b\n")
    assert isinstance(json_form, Volume) and isinstance(words, Volume)
    assert json_form.paths == ("/data", "/var/log app")
    assert words.paths == ("/a", "/b")


def test_volume_json_paths_are_trimmed():
    assert instr('VOLUME [" /data "]\n').paths == ("/data",)


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("EXPOSE\n", "EXPOSE requires at least one argument", 1, 1),
        ("VOLUME\n", "VOLUME requires at least one argument", 1, 1),
        ('VOLUME ["/a", " "]\n', "VOLUME specified can not be an empty string", 1, 1),
        ("EXPOSE --p=1 80\n", "unknown flag: --p (EXPOSE takes no flags)", 1, 8),
    ],
)
def test_expose_volume_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- USER, WORKDIR, MAINTAINER, STOPSIGNAL -------------------------------------------------------------


def test_single_word_instructions():
    assert instr("USER 1000:1000\n") == User(None, user="1000:1000")  # node is not compared
    assert isinstance(instr("USER app\n"), User)
    workdir = instr("WORKDIR /app/$NAME\n")
    assert isinstance(workdir, Workdir) and workdir.path == "/app/$NAME"
    maintainer = instr("MAINTAINER Jane Doe <jane@example.com>\n")
    assert isinstance(maintainer, Maintainer) and maintainer.maintainer == "Jane Doe <jane@example.com>"
    stop = instr("STOPSIGNAL SIGKILL\n")
    assert isinstance(stop, StopSignal) and stop.signal == "SIGKILL"


@pytest.mark.parametrize("keyword", ["MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"])
def test_exactly_one_argument(keyword):
    assert_error(f"FROM a\n{keyword}\n", f"{keyword} requires exactly one argument", 2, 1)


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("WORKDIR --x=1 /a\n", "unknown flag: --x (WORKDIR takes no flags)", 1, 9),
        ("USER --chown=1 app\n", "unknown flag: --chown (USER takes no flags)", 1, 6),
        ("STOPSIGNAL --s SIGTERM\n", "unknown flag: --s (STOPSIGNAL takes no flags)", 1, 12),
        ("MAINTAINER --boo joe@example.com\n", "unknown flag: --boo (MAINTAINER takes no flags)", 1, 12),
        ("CMD --x echo\n", "unknown flag: --x (CMD takes no flags)", 1, 5),
        ("ENTRYPOINT --x=1 top\n", "unknown flag: --x (ENTRYPOINT takes no flags)", 1, 12),
    ],
)
def test_flags_on_instructions_that_take_none(text, message, line, col):
    assert_error(text, message, line, col)


# -- HEALTHCHECK --------------------------------------------------------------------------------------


def test_healthcheck_none():
    got = instr("HEALTHCHECK NONE\n")
    assert isinstance(got, Healthcheck)
    assert got.test == ("NONE",)
    assert instr("HEALTHCHECK none\n").test == ("NONE",)


def test_healthcheck_cmd_exec_form():
    got = instr('HEALTHCHECK CMD ["curl", "-f", "http://localhost/"]\n')
    assert got.test == ("CMD", "curl", "-f", "http://localhost/")
    assert (got.interval, got.timeout, got.start_period, got.start_interval, got.retries) == (0, 0, 0, 0, 0)


def test_healthcheck_cmd_shell_form_becomes_cmd_shell():
    got = instr("HEALTHCHECK cmd curl -f http://localhost/ || exit 1\n")
    assert got.test == ("CMD-SHELL", "curl -f http://localhost/ || exit 1")


def test_healthcheck_every_option():
    got = instr(
        "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=1h --start-interval=2.5s "
        "--retries=3 CMD true\n"
    )
    assert got.test == ("CMD-SHELL", "true")
    assert got.interval == 90 * SECOND
    assert got.timeout == 500 * MS
    assert got.start_period == 3600 * SECOND
    assert got.start_interval == 2500 * MS
    assert got.retries == 3


def test_healthcheck_zero_durations_mean_default():
    got = instr("HEALTHCHECK --interval=0s --timeout=0 --retries=0 CMD true\n")
    assert (got.interval, got.timeout, got.retries) == (0, 0, 0)


def test_healthcheck_one_millisecond_is_the_minimum():
    assert instr("HEALTHCHECK --interval=1ms CMD true\n").interval == MS


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("HEALTHCHECK\n", "HEALTHCHECK requires at least one argument", 1, 1),
        ("HEALTHCHECK FOO x\n", 'Unknown type "FOO" in HEALTHCHECK (try CMD)', 1, 13),
        ("HEALTHCHECK --interval=5s foo x\n", 'Unknown type "FOO" in HEALTHCHECK (try CMD)', 1, 27),
        ("HEALTHCHECK NONE x\n", "HEALTHCHECK NONE takes no arguments", 1, 1),
        ("HEALTHCHECK --interval=5s NONE\n", "unknown flag: --interval (HEALTHCHECK NONE takes no flags)", 1, 13),
        ("HEALTHCHECK CMD\n", "Missing command after HEALTHCHECK CMD", 1, 1),
        ("HEALTHCHECK --interval=50ns CMD x\n", 'Interval "interval" cannot be less than 1ms', 1, 13),
        ("HEALTHCHECK --timeout=999us CMD x\n", 'Interval "timeout" cannot be less than 1ms', 1, 13),
        ("HEALTHCHECK --start-period=-1s CMD x\n", 'Interval "start-period" cannot be less than 1ms', 1, 13),
        ("HEALTHCHECK --timeout=abc CMD x\n", 'time: invalid duration "abc"', 1, 13),
        ("HEALTHCHECK --start-interval=10 CMD x\n", 'time: missing unit in duration "10"', 1, 13),
        ("HEALTHCHECK --interval=5x CMD x\n", 'time: unknown unit "x" in duration "5x"', 1, 13),
        ("HEALTHCHECK --retries=-1 CMD x\n", "--retries cannot be negative (-1)", 1, 13),
        ("HEALTHCHECK --retries=x CMD x\n", 'strconv.ParseInt: parsing "x": invalid syntax', 1, 13),
        ("HEALTHCHECK --retries=1_0 CMD x\n", 'strconv.ParseInt: parsing "1_0": invalid syntax', 1, 13),
        ("HEALTHCHECK --retries=3.0 CMD x\n", 'strconv.ParseInt: parsing "3.0": invalid syntax', 1, 13),
        (
            "HEALTHCHECK --retries=9999999999 CMD x\n",
            'strconv.ParseInt: parsing "9999999999": value out of range',
            1,
            13,
        ),
        ("HEALTHCHECK --intervl=5s CMD x\n", "unknown flag: --intervl (did you mean interval?)", 1, 13),
        ("HEALTHCHECK --retries CMD x\n", "missing a value on flag: --retries", 1, 13),
        ("HEALTHCHECK --retries=1 --retries=2 CMD x\n", "duplicate flag specified: --retries", 1, 25),
    ],
)
def test_healthcheck_errors(text, message, line, col):
    assert_error(text, message, line, col)


@pytest.mark.parametrize(
    "text, nanoseconds",
    [
        ("0", 0),
        ("-0", 0),
        ("+5s", 5 * SECOND),
        ("1m30s", 90 * SECOND),
        ("500ms", 500 * MS),
        ("1h15m30.918273645s", 4530918273645),
        ("1.5h", 5400 * SECOND),
        (".5s", 500 * MS),
        ("5.s", 5 * SECOND),
        ("100us", 100_000),
        ("100µs", 100_000),  # U+00B5 micro sign
        ("100μs", 100_000),  # U+03BC Greek mu
        ("7ns", 7),
        ("1.5ns", 1),  # Go truncates the fraction of a nanosecond
        ("-1.5s", -1500 * MS),
        ("9223372036854775807ns", 2**63 - 1),
        ("-9223372036854775808ns", -(2**63)),
        ("2562047h", 2562047 * 3600 * SECOND),
    ],
)
def test_parse_go_duration(text, nanoseconds):
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize(
    "text, message",
    [
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("s", 'time: invalid duration "s"'),
        ("10", 'time: missing unit in duration "10"'),
        ("1s5", 'time: missing unit in duration "1s5"'),
        ("5d", 'time: unknown unit "d" in duration "5d"'),
        ("1h-1m", 'time: unknown unit "h-" in duration "1h-1m"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("2562048h", 'time: invalid duration "2562048h"'),
        # Go's time.quote: `"` and `\` escaped, other than printable ASCII as UTF-8 bytes
        ('5"s', 'time: unknown unit "\\"s" in duration "5\\"s"'),
        ("1d\u20ac", 'time: unknown unit "d\\xe2\\x82\\xac" in duration "1d\\xe2\\x82\\xac"'),
    ],
)
def test_parse_go_duration_errors(text, message):
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


def test_parse_go_duration_with_thousands_of_digits():
    text = "1" * 5000 + "s"
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == f'time: invalid duration "{text}"'


# -- ONBUILD --------------------------------------------------------------------------------------------


def test_onbuild_expression_without_the_keyword():
    got = instr("ONBUILD RUN echo hi\n")
    assert isinstance(got, OnBuild)
    assert got.expression == "RUN echo hi"
    assert instr("onbuild   copy --chown=1 a b\n").expression == "copy --chown=1 a b"


def test_onbuild_keeps_its_trigger_typed_in_its_file():
    node = parse("FROM a\n  ONBUILD RUN --network=none make\n").nodes[1]
    got = instruction_from_node(node, "sub/Dockerfile")
    assert isinstance(got.trigger, Run)
    assert (got.trigger.network, got.trigger.args) == ("none", ("make",))
    assert (got.file, got.trigger.file) == ("sub/Dockerfile", "sub/Dockerfile")


def test_onbuild_expression_with_heredoc():
    got = instr("ONBUILD COPY <<EOF /x\nhello\nEOF\n")
    assert got.expression == "COPY <<EOF /x\nhello\nEOF"
    assert (got.node.start_line, got.node.end_line) == (1, 3)


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("ONBUILD\n", "ONBUILD requires at least one argument", 1, 1),
        ("ONBUILD ONBUILD RUN touch foobar\n", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 1, 1),
        ("ONBUILD FROM scratch\n", "FROM isn't allowed as an ONBUILD trigger", 1, 1),
        ("ONBUILD maintainer me\n", "MAINTAINER isn't allowed as an ONBUILD trigger", 1, 1),
        # a trigger that would fail when it runs fails now, at its place
        ("FROM a\nONBUILD RUN --bad=1 x\n", "unknown flag: --bad", 2, 13),
        ("FROM a\nONBUILD COPY a\n", "COPY requires at least two arguments, but only one was provided. Destination could not be determined", 2, 1),
    ],
)
def test_onbuild_errors(text, message, line, col):
    assert_error(text, message, line, col)


# -- COPY, ADD ------------------------------------------------------------------------------------------


def test_copy_plain():
    got = instr("COPY a b /dst/\n")
    assert isinstance(got, Copy)
    assert (got.sources, got.dest, got.inline) == (("a", "b"), "/dst/", ())
    assert (got.chown, got.chmod, got.link, got.excludes, got.from_, got.parents) == ("", "", False, (), "", False)


def test_copy_with_every_flag():
    got = instr(
        "COPY --parents --link --from=build --chmod=755 --chown=1:2 --exclude=*.md --exclude=docs/ a b /dst/\n"
    )
    assert (got.sources, got.dest) == (("a", "b"), "/dst/")
    assert (got.from_, got.chmod, got.chown, got.link, got.parents) == ("build", "755", "1:2", True, True)
    assert got.excludes == ("*.md", "docs/")


@pytest.mark.parametrize(
    "flag, link",
    [("--link", True), ("--link=true", True), ("--link=TRUE", True), ("--link=false", False), ("--link=False", False)],
)
def test_copy_link_bool(flag, link):
    assert instr(f"COPY {flag} a b\n").link is link


def test_copy_json_form():
    got = instr('COPY ["a b", "<<EOF", "/dst dir/"]\n')
    # in JSON form `<<EOF` is a file name, not a heredoc
    assert (got.sources, got.dest, got.inline) == (("a b", "<<EOF"), "/dst dir/", ())


def test_copy_heredoc_sources_become_inline_sources_with_chomp():
    text = "COPY <<-EOF <<'RAW' plain /dest/\n\tindented\n\t\ttwo\nEOF\nkeep $X\n\tRAW tab\nRAW\n"
    got = instr(text)
    assert got.sources == ("plain",)
    assert got.dest == "/dest/"
    assert got.inline == (
        InlineSource("EOF", "indented\ntwo\n", True),
        InlineSource("RAW", "keep $X\n\tRAW tab\n", False),
    )


def test_add_plain_has_unset_tristates():
    got = instr("ADD a b\n")
    assert isinstance(got, Add)
    assert (got.sources, got.dest, got.checksum, got.keep_git_dir, got.unpack, got.link) == (
        ("a",),
        "b",
        "",
        None,
        None,
        False,
    )


def test_add_with_every_flag():
    got = instr(
        "ADD --checksum=sha256:abc --keep-git-dir --unpack=false --link=false --chmod=0644 "
        "--chown=app:app --exclude=x --exclude=y https://example.com/x.tar /y/\n"
    )
    assert got.sources == ("https://example.com/x.tar",)
    assert got.dest == "/y/"
    assert (got.checksum, got.keep_git_dir, got.unpack, got.link) == ("sha256:abc", True, False, False)
    assert (got.chmod, got.chown, got.excludes) == ("0644", "app:app", ("x", "y"))
    flipped = instr("ADD --keep-git-dir=false --unpack a b\n")
    assert (flipped.keep_git_dir, flipped.unpack) == (False, True)


def test_add_heredoc_source():
    got = instr("ADD <<EOF /etc/motd\nhello\nEOF\n")
    assert (got.sources, got.inline) == ((), (InlineSource("EOF", "hello\n", True),))


def test_string_flag_may_be_empty():
    # BuildKit: `--str1=` is a given, empty value
    assert instr("COPY --chown= a b\n").chown == ""


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("COPY a\n", "COPY requires at least two arguments, but only one was provided. Destination could not be determined", 1, 1),
        ("ADD a\n", "ADD requires at least two arguments, but only one was provided. Destination could not be determined", 1, 1),
        ("COPY a <<EOF\nx\nEOF\n", "COPY cannot accept a heredoc as a destination", 1, 8),
        ("ADD a <<EOF\nx\nEOF\n", "ADD cannot accept a heredoc as a destination", 1, 7),
        ("COPY --exlude=x a b\n", "unknown flag: --exlude (did you mean exclude?)", 1, 6),
        ("COPY --checksum=x a b\n", "unknown flag: --checksum", 1, 6),
        ("ADD --from=x a b\n", "unknown flag: --from", 1, 5),
        ("ADD --parents a b\n", "unknown flag: --parents", 1, 5),
        ("COPY --LINK a b\n", "unknown flag: --LINK", 1, 6),
        ("COPY --from a b\n", "missing a value on flag: --from", 1, 6),
        ("COPY --exclude a b\n", "missing a value on flag: --exclude", 1, 6),
        ("COPY --link= a b\n", "missing a value on flag: --link", 1, 6),
        ("COPY --link=maybe a b\n", "expecting boolean value for flag --link, not: maybe", 1, 6),
        ("ADD --unpack=1 a b\n", "expecting boolean value for flag --unpack, not: 1", 1, 5),
        ("COPY --from=a --from=b a b\n", "duplicate flag specified: --from", 1, 15),
        ("COPY --link --link=false a b\n", "duplicate flag specified: --link", 1, 13),
        ("ADD --checksum=a --checksum=b a b\n", "duplicate flag specified: --checksum", 1, 18),
        ("COPY --chown=1 \\\n     --chown=2 a b\n", "duplicate flag specified: --chown", 2, 6),
        ("FROM a\n  COPY --chown=1 --from=x --link=nope a b\n", "expecting boolean value for flag --link, not: nope", 2, 27),
    ],
)
def test_copy_add_errors(text, message, line, col):
    assert_error(text, message, line, col)


def test_argument_count_is_checked_before_flags_as_in_buildkit():
    message = "COPY requires at least two arguments, but only one was provided. Destination could not be determined"
    assert_error("COPY --nope a\n", message, 1, 1)
    assert_error("USER --nope\n", "USER requires exactly one argument", 1, 1)
    assert_error("EXPOSE --nope\n", "EXPOSE requires at least one argument", 1, 1)


@pytest.mark.parametrize("chmod", ["755", "0644", "7777", "0", "u+x", "u+x,go-w", "a=rwX", "g=u", "+t", "=", "u+x-w"])
def test_chmod_literal_values_accepted(chmod):
    assert instr(f"COPY --chmod={chmod} a b\n").chmod == chmod
    assert instr(f"ADD --chmod={chmod} a b\n").chmod == chmod


def test_chmod_with_a_variable_or_quotes_waits_for_expansion():
    assert instr("COPY --chmod=$MODE a b\n").chmod == "$MODE"
    assert instr("COPY --chmod=${MODE:-9999} a b\n").chmod == "${MODE:-9999}"


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("COPY --chmod=64a a b\n", "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777", 1, 6),
        ("COPY --chmod=10000 a b\n", "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777", 1, 6),
        ("ADD --link --chmod=0o755 a b\n", "invalid chmod parameter: '0o755'. it should be octal string and between 0 and 07777", 1, 12),
        ("COPY --chmod=u+q a b\n", "invalid chmod parameter: 'u+q': invalid syntax", 1, 6),
        ("COPY --chmod=rwx a b\n", "invalid chmod parameter: 'rwx': invalid syntax", 1, 6),
        ("COPY --chmod=u+x, a b\n", "invalid chmod parameter: 'u+x,': invalid syntax", 1, 6),
        ("ADD --checksum=sha256:abc a b /dst/\n", "checksum can't be specified for multiple sources", 1, 5),
        ("ADD --checksum=sha256:abc <<EOF /dst\nx\nEOF\n", "checksum can't be specified for multiple sources", 1, 5),
    ],
)
def test_chmod_and_checksum_errors(text, message, line, col):
    assert_error(text, message, line, col)


@pytest.mark.parametrize(
    "text, expected",
    [("755", 0o755), ("0000644", 0o644), ("7777", 0o7777), ("u+x", "u+x"), ("go-rwx,u=rw", "go-rwx,u=rw")],
)
def test_parse_chmod(text, expected):
    assert parse_chmod(text) == expected


@pytest.mark.parametrize("text", ["", "8", "9" * 40, "a", "u", "u+x,", "-7", "u+x y", "\u0663"])
def test_parse_chmod_errors(text):
    with pytest.raises(ValueError, match="^invalid chmod parameter: "):
        parse_chmod(text)


def test_copy_alone_on_its_line_has_no_arguments():
    # BuildKit's copyEmptyWhitespace: the next lines are an instruction of their own
    text = "COPY\t\n\t\tquux \\\n      bar\n"
    message = "COPY requires at least two arguments, but only one was provided. Destination could not be determined"
    assert_error(text, message, 1, 1, index=0)
    assert_error(text, "unknown instruction: quux", 2, 3, index=1)


# -- unknown instruction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("FROM a\nFORM alpine\n", "unknown instruction: FORM (did you mean FROM?)", 2, 1),
        ("FROM a\n  COPPY a b\n", "unknown instruction: COPPY (did you mean COPY?)", 2, 3),
        ("FOO bar\n", "unknown instruction: FOO (did you mean FROM?)", 1, 1),
        ("foo bar\n", "unknown instruction: foo (did you mean from?)", 1, 1),
        ("FROM a\nXYZZY b\n", "unknown instruction: XYZZY", 2, 1),
    ],
)
def test_unknown_instruction(text, message, line, col):
    assert_error(text, message, line, col)


def test_errors_name_the_file_given():
    node = parse("FROM a\nRUN --network=hots true\n").nodes[1]
    with pytest.raises(DockerfileError) as info:
        instruction_from_node(node, "ci/Dockerfile.test")
    assert str(info.value) == 'ci/Dockerfile.test:2:5: invalid network mode "hots" (did you mean host?)'
    onbuild = parse("ONBUILD RUN --network=hots true\n").nodes[0]
    with pytest.raises(DockerfileError) as info:
        instruction_from_node(onbuild, "x")
    assert (info.value.file, info.value.line) == ("x", 1)


def test_error_str_names_file_line_and_column():
    error = error_of("FROM a\nRUN --network=hots true\n")
    assert str(error) == 'Dockerfile:2:5: invalid network mode "hots" (did you mean host?)'


# -- parse_flags (BuildKit's bflag_test.go as a table) -----------------------------------------------


SPEC = {"str1": "string", "bool1": "bool", "list": "strings"}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ((), {}),
        (("--",), {}),
        (("--", "--bogus"), {}),
        (("--str1=",), {"str1": ""}),
        (("--str1=BYE",), {"str1": "BYE"}),
        (("--str1= ",), {"str1": " "}),
        (("--bool1",), {"bool1": True}),
        (("--bool1=true",), {"bool1": True}),
        (("--bool1=false",), {"bool1": False}),
        (("--bool1", "--str1=BYE"), {"bool1": True, "str1": "BYE"}),
        (("--list=a", "--list=b", "--list=a"), {"list": ("a", "b", "a")}),
    ],
)
def test_parse_flags_values(flags, expected):
    node = parse("RUN true\n").nodes[0]
    assert parse_flags(node, flags, SPEC) == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--str1",), "missing a value on flag: --str1"),
        (("--bool1=false1",), "expecting boolean value for flag --bool1, not: false1"),
        (("--bool2",), "unknown flag: --bool2 (did you mean bool1?)"),
        (("--list",), "missing a value on flag: --list"),
        (("--str1=a", "--str1=b"), "duplicate flag specified: --str1"),
        (("-x",), "arg should start with -- : -x"),
    ],
)
def test_parse_flags_errors(flags, message):
    node = parse("RUN true\n").nodes[0]
    with pytest.raises(DockerfileError) as info:
        parse_flags(node, flags, SPEC)
    assert info.value.message == message


# -- where an error points when the same text stands earlier in the instruction -------------------------


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("ENV a=x =x\n", "ENV names can not be blank", 1, 9),
        ("ARG a=x =x\n", "ARG names can not be blank", 1, 9),
        ('LABEL a="b =c" =d\n', "LABEL names can not be blank", 1, 16),
        ("ONBUILD ENV a=b =c\n", "ENV names can not be blank", 1, 17),
        ("HEALTHCHECK --timeout=3s s x\n", 'Unknown type "S" in HEALTHCHECK (try CMD)', 1, 26),
        ('HEALTHCHECK --timeout=3s --interval="1s" s x\n', 'Unknown type "S" in HEALTHCHECK (try CMD)', 1, 42),
        (
            "FROM a1 AS 1\n",
            'invalid name for build stage: "1", name can\'t start with a number or contain symbols',
            1,
            12,
        ),
        ("COPY <<EOFX <<EOF\nx\nEOFX\ny\nEOF\n", "COPY cannot accept a heredoc as a destination", 1, 13),
        # the second --mount's value also stands inside the first one
        (
            "RUN --mount=type=secret,id=a,target=/x --mount=type=secret true\n",
            "invalid secret mount. one of source, target required",
            1,
            48,
        ),
        # a quoted mount value: the place of its opening quote
        ('RUN --mount="type=bnd" true\n', 'unsupported mount type "bnd" (did you mean bind?)', 1, 13),
    ],
)
def test_error_places_past_look_alikes(text, message, line, col):
    assert_error(text, message, line, col)
