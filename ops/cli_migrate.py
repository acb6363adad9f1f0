"""`python -m ops.cli_migrate`: apply every service's migrations (what `latchkey migrate` does)."""

from ops.run import migrate_all

if __name__ == "__main__":
    migrate_all()
