"""Serving's view of the stream state: the :class:`StateReader` Protocol (what the service
and the refresher read of :class:`longretriever.stream.state.StateStore`) and
:class:`StateHistory`, one user's :class:`longretriever.core.planner.History` read from it."""

from __future__ import annotations

from typing import ContextManager, Protocol

import numpy as np

from longretriever.core.sequence import UserSequence


class StateReader(Protocol):
    """What serving reads of the stream state (:class:`longretriever.stream.state.StateStore`)."""

    def reading(self) -> ContextManager[None]: ...

    def watermark(self) -> dict[int, int]: ...

    def recent(self, user: int, n: int = 1000) -> UserSequence | None: ...

    def context_tail(self, user: int, ctx: int, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def context_counts(self, user: int) -> dict[int, int]: ...

    def context_items(self, user: int, ctx: int) -> np.ndarray: ...

    def sequence(self, user: int, ctx: int | None = None) -> UserSequence | None: ...

    def seen_mask(self, user: int, items: np.ndarray) -> np.ndarray: ...


class StateHistory:
    """One user's :class:`~longretriever.core.planner.History` read from the state store. The
    newest-events read is kept, so the context choice and the recent window share one read."""

    def __init__(self, state: StateReader, user: int) -> None:
        self.state, self.user = state, int(user)
        self._recent: UserSequence | None = None
        self._recent_n = -1

    def recent(self, n: int) -> UserSequence | None:
        if n > self._recent_n:
            self._recent, self._recent_n = self.state.recent(self.user, n), n
        s = self._recent
        if s is None or n >= len(s):
            return s
        lo = len(s) - max(0, n)
        return UserSequence(s.items[lo:], s.ts[lo:], s.contexts[lo:])

    def context_tail(self, context: int, k: int) -> np.ndarray:
        return self.state.context_tail(self.user, context, k)[0]

    def seen_mask(self, items: np.ndarray) -> np.ndarray:
        """For each raw id: is it in the user's stored history (all contexts)? (inside the
        query's ``reading()``, the state reads each seen-item bucket once)"""
        return self.state.seen_mask(self.user, items)
