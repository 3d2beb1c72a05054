"""Per-instruction expansion: exactly the words BuildKit expands, split only where it splits."""

from __future__ import annotations

import pytest

from buildpy.grammar.errors import DockerfileError
from buildpy.grammar.expand import expand_instruction
from buildpy.grammar.instructions import instruction_from_node
from buildpy.grammar.parser import parse

ENV = {"A": "/opt", "PORTS": "80 443/udp", "KIND": "cache", "SPACED": "a b"}


def expanded(line: str, env=ENV, escape="\\", seen=None):
    prefix = "# escape=`\n" if escape == "`" else ""
    node = parse(f"{prefix}FROM scratch\n{line}\n").nodes[1]
    report = (lambda i, names: seen.append(sorted(names))) if seen is not None else None
    return expand_instruction(instruction_from_node(node), env, escape, report)


def test_env_keys_and_values_expand_without_splitting():
    env = expanded('ENV K_$KIND=$A/bin Q="$SPACED c" R=\'$A\'')
    assert env.pairs == (("K_cache", "/opt/bin"), ("Q", "a b c"), ("R", "$A"))


def test_label_expands():
    assert expanded('LABEL "v"="${A}"').pairs == (("v", "/opt"),)


def test_copy_sources_dest_and_ownership_expand_but_from_does_not():
    copy = expanded("COPY --from=build --chown=$KIND --chmod=${MODE:-644} $A/x ${A}/y $A/")
    assert (copy.sources, copy.dest, copy.chown, copy.chmod, copy.from_) == (
        ("/opt/x", "/opt/y"),
        "/opt/",
        "cache",
        "644",
        "build",
    )


def test_copy_source_holding_spaces_stays_one_source():
    assert expanded("COPY $SPACED /dst").sources == ("a b",)


def test_add_checksum_expands():
    assert expanded("ADD --checksum=sha256:$KIND http://x/y /z").checksum == "sha256:cache"


def test_heredoc_body_expands_unless_its_delimiter_was_quoted():
    plain = expanded('COPY <<EOT /f\n$A "kept"\nEOT')
    quoted = expanded("COPY <<'EOT' /f\n$A\nEOT")
    assert plain.inline[0].data == '/opt "kept"\n'
    assert quoted.inline[0].data == "$A\n"


def test_expose_splits_after_expansion():
    assert expanded("EXPOSE $PORTS 22").ports == ("80", "443/udp", "22")


def test_workdir_user_volume_stopsignal():
    assert expanded("WORKDIR $A/w").path == "/opt/w"
    assert expanded("USER ${KIND}:0").user == "cache:0"
    assert expanded('VOLUME ["$A/data", "/x"]').paths == ("/opt/data", "/x")
    assert expanded("STOPSIGNAL SIG${X:-TERM}").signal == "SIGTERM"


def test_run_command_is_left_to_the_shell_but_mounts_expand():
    run = expanded("RUN --mount=type=$KIND,target=$A/cache echo $A")
    assert run.args == ("echo $A",)
    assert (run.mounts[0].type, run.mounts[0].target, run.mounts[0].readonly) == ("cache", "/opt/cache", False)


def test_a_mount_wrong_only_after_expansion_is_an_error_at_its_place():
    with pytest.raises(DockerfileError) as info:
        expanded("RUN --mount=type=$NOPE,target=/x true", env={"NOPE": "nfs"})
    assert info.value.message == 'unsupported mount type "nfs"'
    assert (info.value.line, info.value.col) == (2, 13)


def test_not_expanded():
    assert expanded("CMD echo $A").args == ("echo $A",)
    assert expanded("HEALTHCHECK CMD echo $A").test == ("CMD-SHELL", "echo $A")
    assert expanded("ONBUILD RUN echo $A").expression == "RUN echo $A"


def test_backtick_escape():
    assert expanded("WORKDIR C:\\`$A", escape="`").path == "C:\\$A"


def test_unset_variables_are_reported():
    seen: list = []
    expanded("WORKDIR $NOPE/${ALSO}/$A", seen=seen)
    assert seen == [["ALSO", "NOPE"]]


def test_expansion_error_names_the_line():
    with pytest.raises(DockerfileError) as info:
        expanded("WORKDIR ${NOPE:?must be set}")
    assert info.value.line == 2
    assert "must be set" in info.value.message
