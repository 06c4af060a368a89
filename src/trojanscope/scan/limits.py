"""Safety bounds of a scan. Reaching one makes the verdict inconclusive, never clean.

Every parse and every decompression draws on these: the work of a scan is linear in the size
of what it reads and never larger than the limits allow, whatever the file claims.
"""

from __future__ import annotations

from typing import NamedTuple

from trojanscope.scan.findings import LimitExceeded


class Limits(NamedTuple):
    """Per-scan bounds (the defaults fit multi-gigabyte checkpoints on a laptop); immutable,
    ``limits._replace(max_opcodes=...)`` gives a variant."""

    max_opcodes: int = 200_000_000  # pickle opcodes per top-level file
    max_stack: int = 5_000_000  # values on the pickle stack (all MARK levels together)
    max_marks: int = 100_000  # nested MARKs
    max_memo: int = 20_000_000  # memo entries
    max_pickles: int = 64  # consecutive pickles in one stream (the legacy torch format has 5)
    #: a pickle whose objects, traversed as a tree, count more than this many times its opcodes
    #: (and more than ``min_expansion`` nodes) is an expansion bomb ("billion laughs")
    max_expansion_ratio: int = 1000
    min_expansion: int = 1_000_000
    max_member_bytes: int = 2 * 2**30  # per decompressed archive member
    max_total_bytes: int = 8 * 2**30  # decompressed bytes per top-level file
    #: decompressed / compressed bytes; checked once a member passes ``ratio_floor`` bytes
    max_ratio: int = 200
    ratio_floor: int = 16 * 2**20
    max_depth: int = 8  # archive nesting
    max_members: int = 100_000
    max_text_bytes: int = 64 * 2**20  # JSON / text files parsed whole


class Budget:
    """What one top-level file may still use: decompressed bytes and archive members."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.left = limits.max_total_bytes
        self.members = 0

    @property
    def used(self) -> int:
        """Decompressed bytes produced so far."""
        return self.limits.max_total_bytes - self.left

    def take_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise LimitExceeded(f"more than {self.limits.max_members} archive members")

    def take_bytes(self, produced: int, member_total: int, consumed: int | None) -> None:
        """Account ``produced`` new decompressed bytes; ``member_total`` is the member's size so
        far and ``consumed`` the compressed bytes read for it (None when unknown)."""
        lim = self.limits
        self.left -= produced
        if member_total > lim.max_member_bytes:
            raise LimitExceeded(f"a member decompresses to more than {lim.max_member_bytes} bytes")
        if self.left < 0:
            raise LimitExceeded(f"the file decompresses to more than {lim.max_total_bytes} bytes")
        if (
            consumed is not None
            and member_total > lim.ratio_floor
            and member_total > lim.max_ratio * max(consumed, 1)
        ):
            raise BombDetected(
                f"a member expands more than {lim.max_ratio}x "
                f"({member_total} bytes from {consumed}): a decompression bomb"
            )


class BombDetected(LimitExceeded):
    """A compressed stream expands beyond the ratio limit: a finding, and the scan stops."""
