"""The views the service reads; each owns its collections (see each module's docstring)."""

from __future__ import annotations

from projections.base import View
from projections.views.agreement import AgreementView
from projections.views.directory import DirectoryView
from projections.views.gold import GoldView
from projections.views.guidance import GuidanceView
from projections.views.history import HistoryView
from projections.views.manager import ManagerView
from projections.views.metrics import MetricsView
from projections.views.queue import QueueView
from projections.views.review import ReviewView
from projections.views.tasks import TasksView
from projections.views.throughput import ThroughputView

__all__ = [
    "AgreementView",
    "DirectoryView",
    "GoldView",
    "GuidanceView",
    "HistoryView",
    "ManagerView",
    "MetricsView",
    "QueueView",
    "ReviewView",
    "TasksView",
    "ThroughputView",
    "default_views",
]


def default_views() -> list[View]:
    """Fresh instances of every view, in a fixed order."""
    return [
        TasksView(),
        QueueView(),
        MetricsView(),
        HistoryView(),
        DirectoryView(),
        ReviewView(),
        GoldView(),
        AgreementView(),
        GuidanceView(),
        ManagerView(),
        ThroughputView(),
    ]
