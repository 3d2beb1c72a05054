"""What an endpoint answers when it cannot do what was asked: Docker's status codes and its
`{"message": ...}` body."""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP error answer: `status` and the one-line message the docker CLI prints."""

    user_facing = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def no_such_image(name: str) -> ApiError:
    return ApiError(404, f"No such image: {name}")


def as_api_error(e: BaseException, name: str | None = None) -> ApiError:
    """The answer for an exception a library call raised (`name`: the image the request named)."""
    from buildpy.cas.reference import InvalidReference
    from buildpy.cas.store import StoreError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, InvalidReference):
        return ApiError(400, str(e))
    if isinstance(e, StoreError) and name is not None and str(e).startswith(f"no image {name} "):
        return no_such_image(name)
    if getattr(e, "user_facing", False):
        return ApiError(500, str(e).strip())
    return ApiError(500, f"internal error: {type(e).__name__}: {e}")
