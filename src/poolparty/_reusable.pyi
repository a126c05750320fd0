from collections.abc import Callable
from typing import Any, Literal

from .executor import SubinterpreterPoolExecutor

def get_reusable_executor(
    max_workers: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
    *,
    dispatch: Literal["queue", "call"] = "queue",
) -> SubinterpreterPoolExecutor: ...
