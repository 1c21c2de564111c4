"""Crawlers: everything that talks HTTP to the outside. They fetch and parse; they persist nothing
themselves (crawl state goes through the small protocol in ``crawlers.state``)."""
