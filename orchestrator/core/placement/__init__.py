"""Gang placement: filter and score plugins over a free-GPU map (see ``plugins``), all members or none."""

from orchestrator.core.placement.freemap import FreeMap
from orchestrator.core.placement.gang import bind, place_gang, place_gang_exhaustive
from orchestrator.core.placement.legacy import place_all
from orchestrator.core.placement.plugins import FILTERS, SCORES
from orchestrator.core.placement.views import MemberRequest, NodeView, Placement, PlacementPolicy

__all__ = [
    "FILTERS",
    "SCORES",
    "FreeMap",
    "MemberRequest",
    "NodeView",
    "Placement",
    "PlacementPolicy",
    "bind",
    "place_all",
    "place_gang",
    "place_gang_exhaustive",
]
