"""The review web app: curators decide queued lyrics in the browser, admins follow progress and
agreement, read the audit log, export decisions and trigger a snapshot rebuild.

``create_app(ReviewConfig(db_url=…))`` builds the FastAPI app; ``serve`` runs it with uvicorn.
"""

from curation.review_app.app import ReviewConfig, create_app, serve

__all__ = ["ReviewConfig", "create_app", "serve"]
