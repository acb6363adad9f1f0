"""`python -m latchkit.cli_migrate`: apply every service's migrations (what `latchkey migrate` does)."""

from latchkit.run import migrate_all

if __name__ == "__main__":
    migrate_all()
