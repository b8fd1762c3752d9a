"""Citizen accounts: usernames, passwords, activation and the account record."""
