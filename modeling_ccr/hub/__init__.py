"""Sharing on the Hub: push model folders and corpora, render their cards."""
