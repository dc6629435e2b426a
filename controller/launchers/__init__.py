"""Launchers run one query each: `local` (a subprocess per query) is the embedded default, `kubernetes` runs
one pod per query."""

from __future__ import annotations

from controller.launchers.base import Launcher
from controller.settings import Settings


def make_launcher(settings: Settings) -> Launcher:
    if settings.launcher == "kubernetes":
        from controller.launchers.kubernetes.launcher import KubernetesLauncher

        return KubernetesLauncher.from_settings(settings)

    from controller.launchers.local.launcher import LocalLauncher

    return LocalLauncher.from_settings(settings)
