"""Phones and one-time codes: phone policy, codes, providers and abuse limits."""
