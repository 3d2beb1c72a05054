"""Image references as Docker reads them, and finding the image a user names in the store.

Parsing follows distribution/reference (`ParseNormalizedNamed`, `regexp.go`): `busybox` is
`docker.io/library/busybox:latest`, `user/app` is `docker.io/user/app:latest`, a first component
with a `.` or `:`, `localhost`, or an upper-case letter is a registry host. A reference without
a tag or digest gets `:latest`; one with both keeps both (`name:tag@sha256:…`).

`resolve` finds what a command line names, as `docker image inspect` does: a ref in the store by
its normalised name, else an image ID or manifest digest (`sha256:…`, 64 hex, or an unambiguous
prefix of at least 4 hex digits), or `name@sha256:…`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from buildpy.cas.digest import is_digest
from buildpy.cas.image import Image, load_image
from buildpy.cas.media import INDEXES, MANIFESTS, OCI_INDEX, OCI_MANIFEST, Descriptor
from buildpy.cas.store import Store, StoreError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255  # distribution's RepositoryNameTotalLengthMax, counted on the path
_TEXT_MAX = 1024  # far beyond any valid reference; bounds the regex work on junk input

# The pieces of distribution/reference's regexp.go; Go's \w is ASCII, hence re.ASCII.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN}/)?{_REMOTE}"

_REFERENCE_RE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_NAME_RE = re.compile(rf"(?:({_DOMAIN})/)?({_REMOTE})", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
_ID_PREFIX_RE = re.compile(r"(?:sha256:)?([a-f0-9]{4,64})")
# go-digest's registered algorithms and their hex lengths (lower-case hex only)
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidReference(ValueError):
    """Text that is not a valid image reference."""

    user_facing = True


@dataclass(frozen=True)
class Reference:
    """A normalised reference: `domain/path[:tag][@digest]`; a tag or a digest (or both) is set."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """`docker.io/library/busybox`: the full name without tag or digest (Go's Name())."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full normalised reference, as refs in the store are named."""
        return str(self)

    @property
    def familiar_repository(self) -> str:
        """The repository as docker prints it: `busybox`, `user/app`, `host:5000/a/b`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.repository
        if self.path.startswith(OFFICIAL_PREFIX) and "/" not in self.path[len(OFFICIAL_PREFIX):]:
            return self.path[len(OFFICIAL_PREFIX):]
        return self.path

    @property
    def familiar(self) -> str:
        """The short form docker prints: `busybox:latest`, `host:5000/a/b:tag`."""
        return self.familiar_repository + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}: {_TAG_RULE}")
        return Reference(self.domain, self.path, tag, None)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.repository + self._suffix()


_TAG_RULE = "a tag is 1 to 128 of letters, digits, '_', '.', '-', and does not start with '.' or '-'"


def parse(text: str, allow_digest: bool = True) -> Reference:
    """Normalise a reference as docker does; `:latest` when it has neither tag nor digest."""
    if not text:
        raise InvalidReference("invalid reference format: the name is empty")
    if len(text) > _TEXT_MAX:
        raise InvalidReference(f"invalid reference format: {text[:40]}… is {len(text)} characters long")
    if _IDENTIFIER_RE.fullmatch(text):
        raise InvalidReference(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(text)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise InvalidReference(
            f"invalid reference format {text!r}: repository name ({remote}) must be lowercase"
        )
    m = _REFERENCE_RE.fullmatch(f"{domain}/{remainder}")
    if m is None:
        raise InvalidReference(_explain(text))
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    nm = _NAME_RE.fullmatch(name)
    assert nm is not None  # the reference pattern starts with the name pattern
    domain, path = nm.group(1) or "", nm.group(2)
    if len(path) > NAME_MAX:
        raise InvalidReference(
            f"invalid reference {text[:60]!r}…: repository name must not be more than {NAME_MAX} characters"
        )
    if digest is not None:
        _check_digest(digest, text)
        if not allow_digest:
            raise InvalidReference(f"refusing to create a tag with a digest reference: {text}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_docker_domain(text: str) -> tuple[str, str]:
    """distribution's splitDockerDomain: where the registry host ends and the path begins."""
    first, sep, rest = text.partition("/")
    if not sep:
        # a single element is always a Docker Hub official image, never a host
        return DEFAULT_DOMAIN, OFFICIAL_PREFIX + text
    if first == "localhost":
        domain, remote = first, rest
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, rest
    elif "." in first or ":" in first or first.lower() != first:
        domain, remote = first, rest
    else:
        domain, remote = DEFAULT_DOMAIN, text
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_PREFIX + remote
    return domain, remote


def _check_digest(digest: str, text: str) -> None:
    algorithm, _, hexpart = digest.partition(":")
    want = _DIGEST_HEX.get(algorithm)
    if want is None:
        raise InvalidReference(f"invalid reference {text!r}: unsupported digest algorithm {algorithm!r}")
    if len(hexpart) != want or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise InvalidReference(
            f"invalid reference {text!r}: a {algorithm} digest is {want} lower-case hex digits"
        )


def _explain(text: str) -> str:
    """The most specific reason we can name for a reference that does not parse."""
    name, _, digest = text.partition("@")
    if digest and not re.fullmatch(_DIGEST, digest):
        return f"invalid reference {text!r}: {digest!r} is not a digest (want sha256:<64 hex>)"
    _, colon, tag = name.rpartition(":")
    if colon and "/" not in tag and not _TAG_RE.fullmatch(tag):
        if len(tag) > 128:
            return f"invalid reference {text[:60]!r}…: its tag has {len(tag)} characters, at most 128 are allowed"
        return f"invalid reference {text!r}: invalid tag {tag!r}: {_TAG_RULE}"
    return (
        f"invalid reference format {text!r}: a repository name is lower-case path components of "
        f"letters and digits joined by '.', '_', '__' or '-', after an optional registry host"
    )


# finding images in the store


@dataclass(frozen=True)
class Tagged:
    """A ref in the store and the image it names (for an index, the host platform's image)."""

    name: str
    descriptor: Descriptor
    image: Image


def tagged_images(store: Store, errors: list[str] | None = None) -> list[Tagged]:
    """Every ref whose image loads; refs that do not are described in `errors` when given."""
    out = []
    for name, desc in sorted(store.refs().items()):
        try:
            out.append(Tagged(name, desc, load_image(store, desc)))
        except (StoreError, ValueError) as e:
            if errors is not None:
                errors.append(f"{name}: {e}")
    return out


def lookup(store: Store, text: str) -> tuple[str | None, Descriptor]:
    """The ref name (None when found by digest alone) and the manifest or index `text` names."""
    refs = store.refs()
    if text in refs:  # a ref stored under a name we would not normalise to (e.g. from a layout)
        return text, refs[text]
    if is_digest(text) or _IDENTIFIER_RE.fullmatch(text):
        return _by_digest(store, text if ":" in text else f"sha256:{text}", None, text)
    try:
        ref = parse(text)
    except InvalidReference:
        if _ID_PREFIX_RE.fullmatch(text):
            return _by_prefix(store, text)
        raise
    if ref.digest is not None:
        return _by_digest(store, ref.digest, ref.repository, text)
    if ref.name in refs:
        return ref.name, refs[ref.name]
    # as docker: a name that is not a ref may still be a short image ID
    if _ID_PREFIX_RE.fullmatch(text):
        return _by_prefix(store, text)
    raise _not_found(store, text)


def resolve(store: Store, text: str) -> tuple[str | None, Image]:
    """The image `text` names (see `lookup`), read from the store."""
    name, desc = lookup(store, text)
    return name, load_image(store, desc)


def refs_to(store: Store, image: Image) -> list[str]:
    """The refs naming `image` (by manifest digest or image ID), sorted."""
    return [
        t.name for t in tagged_images(store)
        if image.digest in (t.descriptor.digest, t.image.digest) or t.image.id == image.id
    ]


def refs_named(store: Store, text: str) -> list[str]:
    """The refs `rmi TEXT` removes: the ref TEXT names, or for an image ID or digest every ref
    naming that image (as docker untags them all)."""
    refs = store.refs()
    if text in refs:
        return [text]
    try:
        name = parse(text).name
    except InvalidReference:
        name = None
    if name in refs:
        return [name]
    _, image = resolve(store, text)
    names = refs_to(store, image)
    if not names:
        raise StoreError(f"image {text} has no tags to remove; `buildpy prune` deletes untagged images")
    return names


def _by_digest(store: Store, digest: str, repository: str | None, text: str) -> tuple[str | None, Descriptor]:
    for t in tagged_images(store):
        if repository is not None and _repository_of(t.name) != repository:
            continue
        if digest in (t.descriptor.digest, t.image.digest) or (repository is None and t.image.id == digest):
            desc = t.descriptor if digest == t.descriptor.digest else t.image.manifest_descriptor
            return t.name, desc
    # as docker: `name@digest` matches only that repository's images, never an untagged one
    if repository is None and digest.startswith("sha256:") and store.has_blob(digest):
        desc = _untagged_manifest(store, digest)
        if desc is not None:
            return None, desc
    raise _not_found(store, text)


def _by_prefix(store: Store, text: str) -> tuple[str | None, Descriptor]:
    m = _ID_PREFIX_RE.fullmatch(text)
    assert m is not None
    prefix = "sha256:" + m.group(1)
    found: dict[str, tuple[str, Descriptor]] = {}
    for t in tagged_images(store):
        if t.image.id.startswith(prefix) or t.image.digest.startswith(prefix):
            found.setdefault(t.image.digest, (t.name, t.image.manifest_descriptor))
        elif t.descriptor.digest.startswith(prefix):
            found.setdefault(t.descriptor.digest, (t.name, t.descriptor))
    if len(found) > 1:
        raise StoreError(f"image ID prefix {text!r} is ambiguous: it matches {len(found)} images; give more digits")
    if found:
        return next(iter(found.values()))
    raise _not_found(store, text)


def _untagged_manifest(store: Store, digest: str) -> Descriptor | None:
    """A manifest or index blob no ref names (e.g. after `rmi`, before `prune`)."""
    try:
        obj = store.read_json(digest)
    except StoreError:
        return None
    if not isinstance(obj, dict):
        return None
    media_type = obj.get("mediaType")
    if media_type not in MANIFESTS | INDEXES:
        # the mediaType field is optional in OCI: tell them apart by shape
        if isinstance(obj.get("manifests"), list):
            media_type = OCI_INDEX
        elif isinstance(obj.get("config"), dict) and isinstance(obj.get("layers"), list):
            media_type = OCI_MANIFEST
        else:
            return None
    return Descriptor(media_type, digest, store.blob_size(digest))


def _repository_of(name: str) -> str | None:
    try:
        return parse(name).repository
    except InvalidReference:
        return None


def _not_found(store: Store, text: str) -> StoreError:
    return StoreError(
        f"no image {text} in the store {store.root} (get it with `buildpy pull` or `buildpy load`)"
    )
