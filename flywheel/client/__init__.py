"""Sending feedback from a production app: FeedbackClient never blocks the app and loses nothing."""

from flywheel.client.feedback import FeedbackClient

__all__ = ["FeedbackClient"]
