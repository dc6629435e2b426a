"""The reasons of the Events podq posts on its worker pods, next to the kubelet's own."""


class Reason:
    """Reasons of the Events podq posts on its pods."""

    STARTED = "QueryStarted"
    ADOPTED = "QueryAdopted"
    SUCCEEDED = "QuerySucceeded"
    FAILED = "QueryFailed"
    CANCELLED = "QueryCancelled"
    ORPHANED = "OrphanDeleted"
    CLAIMED = "QueryClaimed"
    UNDELIVERED = "QueryNotDelivered"
    RESIZE_REFUSED = "QueryResizeRefused"
