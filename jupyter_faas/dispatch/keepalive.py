"""The keep-alive and scale-to-zero policy, plain arithmetic with no cluster calls (as in adaptive_core)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Activity", "idle_expired", "may_retire", "seconds_to_zero", "wanted_now", "workers_wanted"]


@dataclass(frozen=True, slots=True)
class Activity:
    """What the policy reads: one snapshot of the platform's work, taken under its lock."""

    in_flight: int  # invocations of this process sent and not yet ended
    held: bool  # invocations waiting for a scale-down to end
    retiring: bool  # a scale-down is under way
    remote_busy: bool  # a live kernel sharing the cluster runs invocations on it
    remote_wanted: int  # workers those kernels want
    last_activity: float  # monotonic time of the last launch, outcome or lease
    now: float  # monotonic time of the snapshot


def idle_expired(last_activity: float, now: float, idle_timeout: float | None) -> bool:
    """Whether the keep-alive has passed; an unreadable idle timeout (None) never expires."""
    return idle_timeout is not None and now - last_activity >= idle_timeout


def workers_wanted(in_flight: int, remote_wanted: int, zone_floor: int, maximum: int) -> int:
    """Workers the work in flight asks for: one each, at least one per zone of a warm function, at most `maximum`."""
    return min(max(in_flight + remote_wanted, zone_floor), maximum)


def wanted_now(activity: Activity, requested: int, zone_floor: int, maximum: int, idle_timeout: float | None) -> int:
    """Workers wanted now: the most asked for since the platform was last idle, until the keep-alive ends."""
    idle = activity.in_flight == 0 and not activity.held and not activity.remote_busy
    if idle and idle_expired(activity.last_activity, activity.now, idle_timeout):
        return 0
    return max(requested, workers_wanted(activity.in_flight, activity.remote_wanted, zone_floor, maximum))


def may_retire(activity: Activity, idle_timeout: float | None) -> bool:
    """Whether every worker may be retired: nothing runs or waits here or on a sharing kernel, past the keep-alive."""
    if activity.in_flight or activity.held or activity.retiring or activity.remote_busy:
        return False
    return idle_expired(activity.last_activity, activity.now, idle_timeout)


def seconds_to_zero(activity: Activity, idle_timeout: float) -> float | None:
    """Time left before scale to zero if nothing runs; None while something runs, waits or retires."""
    if activity.in_flight or activity.held or activity.retiring or activity.remote_busy:
        return None
    return max(0.0, idle_timeout - (activity.now - activity.last_activity))
