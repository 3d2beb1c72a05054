"""Generated inputs for the benchmarks (made at run time, never committed as data)."""

from __future__ import annotations

# One stage's worth of lines using every instruction kind and form; `{i}` makes names unique.
_STAGE = """\
FROM base-{i}:1.0 AS stage{i}
ARG VERSION=1.{i} FLAVOR
ENV APP_HOME=/app{i} PATH=/app/bin:$PATH
ENV LEGACY value with spaces {i}
LABEL org.example.version="$VERSION" org.example.stage=stage{i} \\
      org.example.flavor="${{FLAVOR:-plain}}"
MAINTAINER someone <someone@example.com>
WORKDIR $APP_HOME/src
COPY --chown=1000:1000 --chmod=644 requirements{i}.txt ./
ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.com/f{i}.tgz /tmp/
COPY --from=stage{prev} /app{prev}/out /app/in
RUN --mount=type=cache,target=/root/.cache,id=pip{i} \\
    --network=none \\
    pip install -r requirements{i}.txt && \\
    echo done-{i}
RUN ["sh", "-c", "echo exec form {i}"]
RUN <<EOT
set -e
echo heredoc {i}
EOT
SHELL ["/bin/sh", "-ec"]
USER 1000:1000
EXPOSE 80{j}/tcp 90{j}/udp
VOLUME ["/data{i}", "/cache{i}"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD curl -f http://localhost/{i} || exit 1
ONBUILD RUN echo triggered {i}
ENTRYPOINT ["/app/bin/run{i}"]
CMD ["--serve", "{i}"]
"""


def dockerfile(lines: int = 2000) -> str:
    """A Dockerfile of at least `lines` lines, every stage using every instruction kind."""
    out: list[str] = []
    i = 0
    while sum(chunk.count("\n") for chunk in out) < lines:
        out.append(_STAGE.format(i=i, prev=max(i - 1, 0), j=i % 10))
        i += 1
    # the first stage copies from itself otherwise: point it at an image instead
    out[0] = out[0].replace("--from=stage0", "--from=busybox")
    return "".join(out)


if __name__ == "__main__":
    print(dockerfile(), end="")
